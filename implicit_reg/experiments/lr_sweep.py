"""lr-sweep: full-batch GD at step sizes over a decade and more, stopped at one training loss.

Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021 (arXiv
2009.11162): a GD step of size h follows the gradient flow of the modified
loss L̃ = L + (h/4)‖∇L‖², so at equal training loss a larger h should end
with a smaller ‖∇L‖², a flatter minimum and a higher test accuracy (their
Fig. 3 on MNIST). Cohen et al., "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability", ICLR 2021 (arXiv 2103.00065): the
sharpness λ_max of the training-loss Hessian ends at or below about 2/h.

What is run: an MLP 40 → w → w → 10 (ReLU, ``build_model("mlp")``) on
MNIST-1D, cross-entropy, trained by the engine's full-batch GD
(``RunConfig(optimizer="gd")``) at each h until the full training loss is at
most ``target_train_loss`` (or the step budget ends), for several
initialization seeds. At the stopping point the engine logs ‖∇L‖², ‖θ‖,
‖θ − θ₀‖ and test error, and the probes λ_max (Lanczos), tr H (Hutch++),
ε-sharpness and geometric complexity, all from the one HVP.

EGR: at the smallest step h_s, ``RunConfig(optimizer="egr")`` trains on
L + μ‖∇L‖² with μ = (h_ℓ − h_s)/4. GD at h_s already carries the implicit
term (h_s/4)‖∇L‖², so the total is (h_ℓ/4)‖∇L‖²: the implicit term of the
larger step h_ℓ (``egr_mimic_lr``). If IGR explains the benefit of the larger
step, EGR at h_s should recover h_ℓ's test accuracy and flatness.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import kendalltau

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.plots import label
from implicit_reg.report.report import Report, fmt, mean_std, select_scale

from ._sweeps import MEASURE_PROBES, run_configs, seed_band, sweep_dir, tidy_log_axes, workers_for

NAME = "lr-sweep"
TITLE = (
    "Step size and implicit gradient regularization: full-batch GD stopped at equal "
    "training loss, ‖∇L‖², λ_max, tr H, ‖θ‖ and test accuracy against h, and EGR"
)
PAPER = (
    "Barrett & Dherin, *Implicit Gradient Regularization*, ICLR 2021 (arXiv 2009.11162), "
    "Sec. 5 and Fig. 3; Cohen et al., *Gradient Descent on Neural Networks Typically Occurs "
    "at the Edge of Stability*, ICLR 2021 (arXiv 2103.00065)"
)


@dataclasses.dataclass(frozen=True)
class Config:
    lrs: tuple[float, ...] = (0.1, 0.163, 0.265, 0.431, 0.701, 1.14, 1.85, 3.0)
    seeds: int = 3  # initialization seeds 0..seeds-1 (the data are fixed: data_seed 0)
    n_train: int | None = 1000  # MNIST-1D training samples (None: all 4,000)
    n_test: int | None = None  # None: all 1,000 test samples
    width: int = 64  # MLP 40 -> width -> width -> 10, ReLU
    depth: int = 2
    target_train_loss: float = 0.05  # every run stops at this full training loss
    max_steps: int = 6000  # budget for the smallest h
    eval_every: int = 100
    egr_mimic_lr: float = 1.14  # EGR at min(lrs) mimics this step's implicit term
    egr_method: str = "exact"
    probe_options: tuple[tuple[str, object], ...] = (("trace_hvps", 30),)


CONFIGS = {
    "smoke": Config(
        lrs=(0.5, 2.0),
        seeds=1,
        n_train=64,
        n_test=64,
        width=8,
        target_train_loss=1.5,
        max_steps=20,
        eval_every=10,
        egr_mimic_lr=2.0,
        probe_options=(("trace_hvps", 6),),
    ),  # fmt: skip
    "small": Config(),
    "full": Config(
        lrs=(0.05, 0.0835, 0.139, 0.232, 0.387, 0.646, 1.08, 1.8, 3.0),
        seeds=5,
        n_train=None,
        width=128,
        max_steps=20000,
        egr_mimic_lr=1.08,
        target_train_loss=0.02,
    ),  # fmt: skip
}


def egr_coeff(cfg: Config) -> float:
    """μ = (h_ℓ − h_s)/4: with GD's own h_s/4 the total is h_ℓ/4 (module docstring)."""
    return (cfg.egr_mimic_lr - min(cfg.lrs)) / 4.0


def base_config(cfg: Config) -> RunConfig:
    """The fields shared by every run of the sweep."""
    return RunConfig(
        model="mlp", width=cfg.width, depth=cfg.depth, activation="relu",
        dataset="mnist1d", n_train=cfg.n_train, n_test=cfg.n_test,
        loss="cross_entropy", optimizer="gd", steps=cfg.max_steps,
        target_train_loss=cfg.target_train_loss, eval_every=cfg.eval_every,
        probes=MEASURE_PROBES, probe_options=dict(cfg.probe_options) or None,
    )  # fmt: skip


def sweep_configs(cfg: Config) -> list[RunConfig]:
    """GD at every h and seed, then EGR at min(h) for every seed."""
    base = base_config(cfg)
    gd = [base.replace(lr=h, seed=s) for h in cfg.lrs for s in range(cfg.seeds)]
    egr = [
        base.replace(
            optimizer="egr",
            lr=min(cfg.lrs),
            egr_coeff=egr_coeff(cfg),
            egr_method=cfg.egr_method,
            seed=s,
        )  # fmt: skip
        for s in range(cfg.seeds)
    ]
    return gd + egr


def ensure_runs(cfg: Config, out: Path, name: str, scale: str) -> pd.DataFrame:
    """Summaries of every run of the sweep (trained now if missing), with
    ``run`` = "GD" or "EGR" and ``test_acc`` = 1 − test error."""
    rows = run_configs(sweep_configs(cfg), sweep_dir(out, NAME, name), workers=workers_for(scale))
    rows["run"] = np.where(rows["optimizer"] == "egr", "EGR", "GD")
    rows["test_acc"] = 1.0 - rows["test_error"]
    rows["reached"] = (rows["status"] == "complete") & (rows["stop_reason"] == "target_train_loss")
    return rows


PANELS = (
    ("grad_norm_sq", True),
    ("lambda_max", True),
    ("trace", True),
    ("weight_norm", False),
    ("test_acc", False),
    ("steps_done", True),
)
PANEL_LABELS = {
    "test_acc": "test accuracy (fraction correct)",
    "steps_done": "GD steps to the stopping point",
}


def sweep_figure(rows: pd.DataFrame, cfg: Config) -> Figure:
    """Six panels against h: the measures at the stopping point, mean ± std over seeds."""
    gd = rows[(rows.run == "GD") & rows.reached]
    egr = rows[(rows.run == "EGR") & rows.reached]
    fig = Figure(figsize=(14, 8.2), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, (metric, logy) in zip(axes, PANELS):
        seed_band(ax, gd, "lr", metric, label="GD", marker="o", ms=4, geometric=logy)
        if metric == "lambda_max":
            h = np.geomspace(min(cfg.lrs), max(cfg.lrs), 50)
            ax.plot(h, 2 / h, "--", color="0.4", label="2/h (edge of stability)")
        if len(egr) and metric in egr:
            v = egr[metric].to_numpy(dtype=float)
            ax.errorbar(
                [min(cfg.lrs)], [v.mean()], yerr=[v.std()] if len(v) > 1 else None,
                fmt="*", ms=12, color="C3", capsize=3,
                label=f"EGR at h={min(cfg.lrs):g}, μ={egr_coeff(cfg):.3g} (mimics h={cfg.egr_mimic_lr:g})",
            )  # fmt: skip
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("learning rate h")
        ax.set_ylabel(PANEL_LABELS.get(metric, label(metric)))
        name = PANEL_LABELS.get(metric, label(metric)).split(" (")[0]
        ax.set_title(name if metric == "steps_done" else f"{name} at the stop")
        ax.legend(fontsize=7)
    n = "4,000" if cfg.n_train is None else f"{cfg.n_train:,}"
    fig.suptitle(
        f"Full-batch GD on MNIST-1D (n={n}), MLP 40→{cfg.width}→{cfg.width}→10, cross-entropy, "
        f"each run stopped at train loss ≤ {cfg.target_train_loss:g}; mean ± std over "
        f"{cfg.seeds} seed(s)"
    )
    tidy_log_axes(fig)
    return fig


def _by_lr(gd: pd.DataFrame, metric: str) -> pd.Series:
    return gd.groupby("lr")[metric].mean().sort_index()


def _tau(series: pd.Series) -> tuple[float, float]:
    if len(series) < 2 or series.nunique() < 2:
        return float("nan"), float("nan")
    r = kendalltau(series.index.to_numpy(), series.to_numpy())
    return float(r.statistic), float(r.pvalue)


def add_claims(report: Report, rows: pd.DataFrame, cfg: Config) -> None:
    """Claim-vs-ours rows: Kendall τ of each measure with h over the per-h seed means."""
    gd = rows[(rows.run == "GD") & rows.reached]
    egr = rows[(rows.run == "EGR") & rows.reached]
    if gd.empty:
        report.add_claim(
            "larger h ends flatter and generalizes better", "Barrett & Dherin 2021",
            "no GD run reached the target loss", None, "nothing to compare",
        )  # fmt: skip
        return
    h_lo, h_hi = min(gd.lr), max(gd.lr)
    for metric, sign, claim in (
        ("grad_norm_sq", -1, "larger h ends with a smaller ‖∇L‖² at equal training loss"),
        ("lambda_max", -1, "larger h ends with a smaller λ_max (flatter)"),
        ("test_acc", +1, "larger h ends with a higher test accuracy"),
    ):
        means = _by_lr(gd, metric)
        tau, p = _tau(means)
        ok = bool(np.isfinite(tau) and sign * tau > 0 and p < 0.1)
        lo = gd[gd.lr == h_lo][metric].to_numpy()
        hi = gd[gd.lr == h_hi][metric].to_numpy()
        ours = (
            f"Kendall τ(h, {metric}) = {tau:+.2f} (p = {p:.2g}) over {len(means)} step sizes; "
            f"h={h_lo:g}: {mean_std(lo)}, h={h_hi:g}: {mean_std(hi)}"
        )
        verdict = (
            "monotone trend with the predicted sign"
            if ok
            else "no significant trend with the predicted sign (p ≥ 0.1 or wrong sign)"
        )
        report.add_claim(claim, "Barrett & Dherin 2021, Fig. 3", ours, ok, verdict)
    ratio = (gd["lambda_max"] * gd["lr"] / 2).to_numpy()
    ok = bool(np.all(ratio <= 1.1))
    report.add_claim(
        "λ_max ends at or below about 2/h",
        "Cohen et al. 2021",
        f"λ_max·h/2 at the stop: max {ratio.max():.3f}, per-h means "
        + ", ".join(f"{v:.2f}" for v in (gd.assign(r=ratio).groupby("lr").r.mean())),
        ok,
        "every run has λ_max ≤ 1.1 × 2/h" if ok else "some run ends above 1.1 × 2/h",
    )
    if len(egr):
        gd_lo = gd[gd.lr == h_lo]
        gd_big = gd[np.isclose(gd.lr, cfg.egr_mimic_lr)]
        acc = {
            k: v["test_acc"].to_numpy() for k, v in (("lo", gd_lo), ("egr", egr), ("big", gd_big))
        }
        gap = acc["big"].mean() - acc["lo"].mean()
        recovered = (acc["egr"].mean() - acc["lo"].mean()) / gap if gap != 0 else float("nan")
        ok = bool(np.isfinite(recovered) and gap > 0 and recovered >= 0.5)
        noise = acc["big"].std() + acc["lo"].std()
        report.add_claim(
            f"EGR at the small h={h_lo:g} with μ = (h_ℓ − h_s)/4 = {egr_coeff(cfg):.3g} recovers "
            f"the test accuracy of h_ℓ = {cfg.egr_mimic_lr:g}",
            "Barrett & Dherin 2021, Sec. 5 (EGR)",
            f"test acc GD h={h_lo:g}: {mean_std(acc['lo'])}; EGR: {mean_std(acc['egr'])}; "
            f"GD h={cfg.egr_mimic_lr:g}: {mean_std(acc['big'])} "
            f"(EGR closes {fmt(100 * recovered, 3)}% of the gap)",
            ok if gap > noise else None,
            ("EGR closes at least half of the accuracy gap" if ok else (
                "the larger step is not more accurate here, nothing to recover" if gap <= 0
                else "EGR closes less than half of the accuracy gap"
            )) + ("" if gap > noise else
                  f"; the gap ({100 * gap:.1f} points) is within the seed spread "
                  f"({100 * noise:.1f} points)"),
        )  # fmt: skip
        lam = {
            k: v["lambda_max"].to_numpy() for k, v in (("lo", gd_lo), ("egr", egr), ("big", gd_big))
        }
        g2 = {
            k: v["grad_norm_sq"].to_numpy()
            for k, v in (("lo", gd_lo), ("egr", egr), ("big", gd_big))
        }
        flatter = bool(lam["egr"].mean() < lam["lo"].mean() and g2["egr"].mean() < g2["lo"].mean())
        report.add_claim(
            "EGR at the small h ends flatter (smaller λ_max and ‖∇L‖²) than GD at the same h",
            "Barrett & Dherin 2021, Sec. 5",
            f"λ_max GD h={h_lo:g}: {mean_std(lam['lo'])}, EGR: {mean_std(lam['egr'])}, "
            f"GD h={cfg.egr_mimic_lr:g}: {mean_std(lam['big'])}; ‖∇L‖² GD h={h_lo:g}: "
            f"{mean_std(g2['lo'])}, EGR: {mean_std(g2['egr'])}, GD h={cfg.egr_mimic_lr:g}: "
            f"{mean_std(g2['big'])}",
            flatter,
            "both smaller" if flatter else "not both smaller",
        )


TABLE_COLUMNS = (
    "run", "lr", "egr_coeff", "seed", "status", "stop_reason", "steps_done", "train_loss",
    "test_error", "grad_norm_sq", "lambda_max", "trace", "weight_norm", "dist_from_init",
    "eps_sharpness", "geometric_complexity",
)  # fmt: skip


def summary_rows(rows: pd.DataFrame) -> list[dict]:
    """One row per (run kind, h): seed means ± std of the measures."""
    out = []
    for (run, lr), g in rows[rows.reached].groupby(["run", "lr"], sort=True):
        out.append(
            {
                "run": run,
                "h": lr,
                "seeds": len(g),
                "steps": mean_std(g.steps_done.to_numpy(), 3),
                "train loss": mean_std(g.train_loss.to_numpy()),
                "‖∇L‖²": mean_std(g.grad_norm_sq.to_numpy()),
                "λ_max": mean_std(g.lambda_max.to_numpy()),
                "2/h": 2 / lr,
                "tr H": mean_std(g.trace.to_numpy()),
                "‖θ‖": mean_std(g.weight_norm.to_numpy()),
                "test acc": mean_std(g.test_acc.to_numpy()),
            }
        )
    return out


def run(scale: str, out: Path) -> Report:
    """Run lr-sweep at ``scale`` and write its report into ``out``."""
    cfg = select_scale(CONFIGS, scale)
    report = Report(NAME, TITLE, scale, out, cfg, PAPER)
    rows = ensure_runs(cfg, Path(out), NAME, scale)
    note = rows.attrs["note"]
    add_claims(report, rows, cfg)
    report.add_figure(
        sweep_figure(rows, cfg),
        "lr_sweep.png",
        "Measures at the stopping point (train loss ≤ threshold) against the GD step h; "
        "lines: mean over seeds, bands: ± 1 std (geometric on log axes); red star: EGR at the "
        "smallest h with μ chosen to mimic a larger step; dashed: 2/h.",
    )
    report.add_table(
        summary_rows(rows),
        heading="Measures at the stopping point",
        caption=(
            f"Mean ± std over {cfg.seeds} seed(s). EGR: GD on L + μ‖∇L‖² at h = {min(cfg.lrs):g} "
            f"with μ = (h_ℓ − h_s)/4 = ({cfg.egr_mimic_lr:g} − {min(cfg.lrs):g})/4 = "
            f"{egr_coeff(cfg):.4g}, so that μ plus GD's own implicit h_s/4 equals h_ℓ/4 "
            f"({cfg.egr_method} Hessian-gradient products)."
        ),
    )
    bad = rows[(rows.status != "complete") | (rows.stop_reason != "target_train_loss")]
    if len(bad):
        report.add_text(
            "Runs that did not stop at the target loss (diverged, or the step budget of "
            f"{cfg.max_steps:,} ended first; they are left out of the means above):\n\n"
            + "\n".join(
                f"- {r.run} h={r.lr:g} seed {r.seed}: {r.status}, {r.stop_reason}, "
                f"{r.steps_done} steps, train loss {fmt(r.train_loss)}"
                for r in bad.itertuples()
            ),
            heading="Runs that missed the threshold",
        )
    report.add_data(rows[[c for c in TABLE_COLUMNS if c in rows]], "runs.csv")
    report.add_text(note, heading="Compute")
    return report.write()
