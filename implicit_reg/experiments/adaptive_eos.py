"""adaptive-eos: under full-batch Adam the preconditioned sharpness λ_max(P⁻¹H) rises to
(2 + 2β₁)/((1 − β₁)η) and hovers there, while λ_max(H) need not settle.

Cohen, Kaur, Li, Kolter, Talwalkar et al., "Adaptive Gradient Methods at the
Edge of Stability", arXiv 2207.14484 (2022): Adam with step η, momentum β₁
and P = √v̂ + ε is linearly stable on the quadratic model of L only while
λ_max(P⁻¹H) ≤ (2 + 2β₁)/((1 − β₁)η) (38/η at β₁ = 0.9); full-batch Adam
trains with the preconditioned sharpness rising to that threshold and
hovering there, the "adaptive edge of stability".

What is run: the ``edge-of-stability`` workload (MLP 40 → w → w → 10, tanh, on
MNIST-1D, squared loss on one-hot targets, mean over samples and outputs),
trained by ``torch.optim.Adam`` on the full training set (one step per
epoch) at a couple of η, several seeds. The package's engine has no Adam, so
the loop here is the plain one a user would write (forward, backward,
``opt.step()``). Every ``probe_every`` steps, with θ and the optimizer's
state as they are after the last step: λ_max(P⁻¹H) by
:func:`implicit_reg.probes.preconditioned_sharpness` (Lanczos on
P^{-1/2}HP^{-1/2}, P read from Adam's state, warm-started from the previous
probe) and λ_max(H) by :func:`implicit_reg.probes.lanczos` on the same
:class:`~implicit_reg.probes.HessianOperator`, each with its residual.

The claim is an equivalence: the *late* median (last ``late`` fraction of the
steps) of λ_max(P⁻¹H)/threshold agrees with 1 within a factor ×/÷``margin``,
a TOST on the log ratio over seeds (:func:`implicit_reg.stats.equivalence_test`),
and the rise to it is a paired test of the late log ratio over its *early* median
(the first ``early`` fraction of the probes, at least one: the window edge-of-stability's
sharpening test uses), not over one first probe, which a single noisy Lanczos estimate
could decide. λ_max(H)·η/2 is given beside it as context.

The experiment is a :class:`~implicit_reg.experiments._spec.Spec` that ``measure``s its
probe table with its own Adam loop (no engine runs): a store-only report re-judges
``probes.csv``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from implicit_reg.probes import HessianOperator, adaptive_eos_threshold, lanczos
from implicit_reg.probes.preconditioned import preconditioned_sharpness
from implicit_reg.probes.registry import warm_start_vector
from implicit_reg.report.report import Claim, Report, attempt, mean_std, plot_band
from implicit_reg.stats import equivalence_test, paired_test
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.losses import make_loss
from implicit_reg.workloads.models import build_model, count_params

from ._spec import Spec, run_spec
from ._sweeps import tidy_log_axes

NAME = "adaptive-eos"
TITLE = (
    "Adaptive edge of stability: under full-batch Adam λ_max(P⁻¹H) rises to "
    "(2 + 2β₁)/((1 − β₁)η) and hovers there"
)
PAPER = (
    "Cohen et al., *Adaptive Gradient Methods at the Edge of Stability*, arXiv 2207.14484 "
    "(2022), Fig. 1–2"
)


@dataclasses.dataclass(frozen=True)
class Config:
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seeds: int = 5
    n_train: int = 1000
    width: int = 64
    depth: int = 2
    activation: str = "tanh"
    steps: int = 1500
    probe_every: int = 25
    lanczos_max_iter: int = 40
    late: float = 0.3  # the claim reads the probes of the last 30% of the steps
    early: float = 0.05  # the rise is measured from the median of the first 5% of the probes
    margin: float = 1.2  # equivalence: the late ratio within ×/÷1.2 of the threshold


CONFIGS = {
    "smoke": Config(seeds=2, n_train=128, width=16, steps=120, probe_every=20, lanczos_max_iter=20),
    "demo": Config(seeds=3, steps=800),
    "small": Config(),
    "full": Config(lrs=(3e-4, 1e-3, 3e-3), seeds=5, n_train=4000, width=128, steps=5000),
}


# ---------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Probe:
    lr: float
    seed: int
    step: int
    loss: float
    precond_sharpness: float  # λ_max(P⁻¹H)
    precond_residual: float
    threshold: float  # (2 + 2β₁)/((1 − β₁)η)
    sharpness: float  # λ_max(H)
    sharpness_residual: float


def train_run(lr: float, seed: int, cfg: Config) -> list[Probe]:
    """Full-batch Adam from the seeded MLP; probes of λ_max(P⁻¹H) and λ_max(H)."""
    data = load_dataset("mnist1d", n_train=cfg.n_train, n_test=1, seed=0)
    model = build_model(
        "mlp", input_dim=data.input_dim, output_dim=data.output_dim, width=cfg.width,
        depth=cfg.depth, activation=cfg.activation, seed=seed,
    )  # fmt: skip
    loss_fn = make_loss("mse", num_classes=data.num_classes)
    x, y = data.x_train, data.y_train
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    op = HessianOperator(model, loss_fn, (x, y))
    rows: list[Probe] = []
    prev_p = prev_h = None
    for step in range(1, cfg.steps + 1):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
        if step % cfg.probe_every:
            continue
        v0 = warm_start_vector(prev_p, op.dim, seed=step, device=op.device)
        pre = preconditioned_sharpness(op, opt, max_iter=cfg.lanczos_max_iter, v0=v0, seed=step)
        v0 = warm_start_vector(prev_h, op.dim, seed=step, device=op.device)
        hes = lanczos(op, 1, max_iter=cfg.lanczos_max_iter, v0=v0, seed=step)
        prev_p, prev_h = pre.eigenvectors, hes.eigenvectors
        with torch.no_grad():
            now = float(loss_fn(model(x), y))
        rows.append(
            Probe(
                lr=lr, seed=seed, step=step, loss=now,
                precond_sharpness=float(pre.eigenvalues[0]),
                precond_residual=float(pre.residuals[0]),
                threshold=adaptive_eos_threshold(opt),
                sharpness=float(hes.eigenvalues[0]),
                sharpness_residual=float(hes.residuals[0]),
            )
        )  # fmt: skip
    return rows


def measure(cfg: Config) -> pd.DataFrame:
    """Every probe of every run (η, seed), one :class:`Probe` per row."""
    rows: list[Probe] = []
    for lr in cfg.lrs:
        for seed in range(cfg.seeds):
            rows += train_run(lr, seed, cfg)
    return pd.DataFrame([dataclasses.asdict(p) for p in rows])


# ---------------------------------------------------------------- analysis (pure)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """One run: λ_max(P⁻¹H)/threshold at the first probe, its early median (the first
    ``early`` fraction of the probes, ``early_probes`` of them) and its late median;
    λ_max(H)·η/2 late median and its late coefficient of variation beside that of the ratio."""

    lr: float
    seed: int
    ratio_start: float
    early_probes: int
    ratio_early: float
    ratio_late: float
    ratio_late_cv: float
    gd_ratio_late: float  # λ_max(H)·η/2
    sharpness_late_cv: float
    loss_end: float
    probes: int


def summarize(probes: pd.DataFrame, late: float, early: float) -> list[RunSummary]:
    """Per (lr, seed) of the probe table (columns of :class:`Probe`): the numbers the
    claims read (``late``: the fraction of steps; ``early``: the fraction of probes)."""
    out = []
    for (lr, seed), rows in probes.groupby(["lr", "seed"]):
        rows = rows.sort_values("step")
        ratio = (rows.precond_sharpness / rows.threshold).to_numpy()
        lam = rows.sharpness.to_numpy()
        steps = rows.step.to_numpy()
        is_late = steps >= (1 - late) * steps.max()
        n_early = max(1, int(np.ceil(round(early * len(ratio), 9))))  # edge-of-stability's rule
        out.append(
            RunSummary(
                lr=float(lr), seed=int(seed), ratio_start=float(ratio[0]), early_probes=n_early,
                ratio_early=float(np.median(ratio[:n_early])),
                ratio_late=float(np.median(ratio[is_late])),
                ratio_late_cv=float(ratio[is_late].std() / ratio[is_late].mean()),
                gd_ratio_late=float(np.median(lam[is_late]) * lr / 2),
                sharpness_late_cv=float(lam[is_late].std() / lam[is_late].mean()),
                loss_end=float(rows.loss.iloc[-1]), probes=len(rows),
            )
        )  # fmt: skip
    return out


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The probes (columns of :class:`Probe`) and one :class:`RunSummary` per run."""

    probes: pd.DataFrame
    runs: tuple[RunSummary, ...]

    def runs_at(self, lr: float) -> list[RunSummary]:
        return [s for s in self.runs if s.lr == lr]


def analyze(probes: pd.DataFrame, cfg: Config) -> Analysis:
    """The per-run summaries of the probe table."""
    return Analysis(probes, tuple(summarize(probes, cfg.late, cfg.early)))


def threshold(lr: float, beta1: float) -> float:
    """Adam's edge of stability (2 + 2β₁)/((1 − β₁)η) (Cohen et al. 2022)."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Per η: the late λ_max(P⁻¹H)/threshold equals 1 within ×/÷margin (TOST on the log
    ratio over seeds), and it rose there from its early median (paired t on logs)."""
    out = []
    lrs = sorted({s.lr for s in a.runs})
    for lr in lrs:
        g = a.runs_at(lr)
        late = np.array([s.ratio_late for s in g])
        start = np.array([s.ratio_start for s in g])
        early = np.array([s.ratio_early for s in g])
        window = f"the first {100 * cfg.early:g}% of the probes: {g[0].early_probes}"
        ctx = (
            f"λ_max(P⁻¹H)/threshold at the first probe {mean_std(start)}, early median "
            f"{mean_std(early)} ({window}), late median "
            f"{mean_std(late)} (per seed {', '.join(f'{v:.3f}' for v in late)}); λ_max(H)·η/2 "
            f"late {mean_std([s.gd_ratio_late for s in g])}"
        )
        out.append(
            Claim(
                f"Adam, η = {lr:g}: λ_max(P⁻¹H) hovers at (2 + 2β₁)/((1 − β₁)η) = "
                f"{threshold(lr, cfg.beta1):.4g}: the late median ratio is 1 within "
                f"×/÷{cfg.margin:g}",
                "Cohen et al. 2022, Fig. 1–2 (adaptive edge of stability)",
                (
                    attempt(
                        equivalence_test,
                        late,
                        np.ones_like(late),
                        margin=math.log(cfg.margin),
                        log=True,
                    ),
                ),
                context=ctx,
                headline=lr == lrs[0],
            )
        )
        out.append(
            Claim(
                f"Adam, η = {lr:g}: λ_max(P⁻¹H) rises to the threshold from below (late median "
                "over the early median)",
                "Cohen et al. 2022, Fig. 1 (preconditioned sharpening)",
                (attempt(paired_test, late, early, log=True),),
                context=(
                    f"early median {mean_std(early)} of the threshold ({window}; first probe "
                    f"{mean_std(start)}), late {mean_std(late)}"
                ),
            )
        )
    return out


# ---------------------------------------------------------------- figure and report


def eos_figure(df: pd.DataFrame, cfg: Config, n_params: int) -> Figure:
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_p, ax_h, ax_l = fig.subplots(1, 3)
    for i, lr in enumerate(sorted(cfg.lrs)):
        color = f"C{i}"
        sub = df[df.lr == lr]
        piv = sub.pivot(index="seed", columns="step", values="precond_sharpness")
        plot_band(
            ax_p, piv.columns.values, piv.values, label=f"η = {lr:g}", color=color, geometric=True
        )
        thr = (2 + 2 * cfg.beta1) / ((1 - cfg.beta1) * lr)
        ax_p.axhline(thr, ls="--", lw=1, color=color, label=f"38/η = {thr:.4g}")
        piv = sub.pivot(index="seed", columns="step", values="sharpness")
        plot_band(
            ax_h, piv.columns.values, piv.values, label=f"η = {lr:g}", color=color, geometric=True
        )
        ax_h.axhline(2 / lr, ls=":", lw=1, color=color, label=f"2/η = {2 / lr:.4g} (GD's edge)")
        piv = sub.pivot(index="seed", columns="step", values="loss")
        plot_band(
            ax_l, piv.columns.values, piv.values, label=f"η = {lr:g}", color=color, geometric=True
        )
    ax_p.set(yscale="log", xlabel="Adam step", ylabel="λ_max(P⁻¹H)")
    ax_p.set_title("preconditioned sharpness and its threshold (dashed)")
    ax_h.set(yscale="log", xlabel="Adam step", ylabel="λ_max(H)")
    ax_h.set_title("ordinary sharpness (no threshold for Adam)")
    ax_l.set(yscale="log", xlabel="Adam step", ylabel="train loss (MSE, one-hot)")
    ax_l.set_title("training loss")
    for ax in (ax_p, ax_h, ax_l):
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Full-batch Adam (β₁ = {cfg.beta1:g}, β₂ = {cfg.beta2:g}, ε = {cfg.eps:g}) on MNIST-1D "
        f"(n = {cfg.n_train}), MLP 40→{cfg.width}→{cfg.width}→10 {cfg.activation} ({n_params} "
        f"params); geometric mean ± std over {cfg.seeds} seeds"
    )
    tidy_log_axes(fig)
    return fig


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    n_params = count_params(
        build_model("mlp", input_dim=40, output_dim=10, width=cfg.width, depth=cfg.depth,
                    activation=cfg.activation, seed=0)
    )  # fmt: skip
    return [
        (
            eos_figure(a.probes, cfg, n_params),
            "adaptive_eos.png",
            "Left: λ_max(P⁻¹H) of full-batch Adam, P = √v̂ + ε read from the optimizer's state, "
            "dashed at (2 + 2β₁)/((1 − β₁)η). Middle: λ_max(H) of the same runs, dotted at GD's "
            "2/η for scale. Right: the training loss.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    df = a.probes
    report.add_table(
        [
            {
                "η": lr,
                "threshold 38/η": f"{threshold(lr, cfg.beta1):.4g}",
                "seeds": len(g),
                "ratio at first probe": mean_std([s.ratio_start for s in g]),
                "early median ratio": mean_std([s.ratio_early for s in g]),
                "late median ratio": mean_std([s.ratio_late for s in g]),
                "late CV of λ_max(P⁻¹H)": mean_std([s.ratio_late_cv for s in g], 2),
                "late λ_max(H)·η/2": mean_std([s.gd_ratio_late for s in g]),
                "late CV of λ_max(H)": mean_std([s.sharpness_late_cv for s in g], 2),
                "final train loss": mean_std([s.loss_end for s in g]),
            }
            for lr in sorted({s.lr for s in a.runs})
            for g in [a.runs_at(lr)]
        ],
        heading="Preconditioned sharpness against the threshold",
        caption=(
            f"ratio = λ_max(P⁻¹H)/((2 + 2β₁)/((1 − β₁)η)); late = the probes of the last "
            f"{100 * cfg.late:g}% of the {cfg.steps} steps; CV = std/mean over those probes. "
            f"Probes every {cfg.probe_every} steps, Lanczos ≤ {cfg.lanczos_max_iter} iterations, "
            f"warm-started; largest residual ‖Au − λu‖/λ: "
            f"{(df.precond_residual / df.precond_sharpness).max():.2g} (P⁻¹H), "
            f"{(df.sharpness_residual / df.sharpness).max():.2g} (H)."
        ),
    )
    report.add_data(pd.DataFrame([dataclasses.asdict(s) for s in a.runs]), "runs.csv")


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, None, analyze, claims, figures, extras,
    measure=measure, measured="probes.csv",
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run adaptive-eos at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
