"""edge-of-stability: under full-batch GD the sharpness rises to about 2/h and hovers there.

Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability", ICLR 2021 (arXiv 2103.00065):
GD with step h on a neural network first *sharpens progressively* (the top
Hessian eigenvalue λ_max grows while it is below 2/h), then λ_max reaches
about 2/h, the stability limit of GD on a quadratic, and hovers just above
it while the training loss keeps falling over long times, but not
monotonically. Their clearest demonstrations use the squared loss.

What is run: an MLP 40 → w → w → 10 (tanh) on MNIST-1D with the squared
loss on one-hot targets (``RunConfig(loss="mse")``), trained by the engine's
full-batch GD at 3–4 step sizes for several seeds; λ_max (Lanczos through the
one HVP) is probed every ``probe_every`` steps, the training loss logged
every ``eval_every`` steps. Quantified per run: λ_max·h/2 at the start, the
first step at which λ_max ≥ 0.9·2/h ("at the edge"), and from then on the
median and maximum of λ_max·h/2 (≈ 1 while it hovers at the edge of
stability) and the fraction of training spent there.

The sharpening test, two parts that must both pass (``stats.all_of``), with windows and
margin fixed in :class:`Config` (the margin is the hovering test's ±``band``, not tuned to
the committed runs; the early window is the first 5% of the probes): (a) the rise, λ_max·h/2
over the late probes (median of the last ``late`` fraction of the steps) above its
median over the early probes (the first ``early`` fraction of the probes, not one
noisy probe at step 0), paired over seeds on the log scale; (b) "to about 2/h", the
late median of λ_max·h/2 equivalent to 1 within ±``band`` (TOST, the hovering test's
band). A λ_max that stays flat below 2/h fails (b); one that rises but stops short
of 2/h fails (b) as well.

The hovering test: the fraction of the late probes (the last ``late``
fraction of the steps) with λ_max·h/2 within ±``band`` of 1, against a
control, the fraction of the same probes within the same band around 2/h′
for the *other* step sizes h′ of the sweep. A λ_max that merely stays below
2/h, as every stable run must, or that wanders independently of h, does not
pass: the sharpness has to sit at its own 2/h and not at the others'. The
effect (own − control) and its SE over seeds give the verdict.

The experiment is a :class:`~implicit_reg.experiments._spec.Spec` (``plan``, a typed
``analyze`` of the runs' histories, ``claims``, ``figures``); a store-only report with no
run store re-judges the stored ``trajectories.csv`` (``Spec.stored``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import Claim, Report, attempt, fmt, mean_std, plot_band
from implicit_reg.stats import equivalence_test, paired_test

from ._spec import Plan, Spec, run_spec
from ._sweeps import history_matrix, load_history, store_only, tidy_log_axes

NAME = "edge-of-stability"
TITLE = "Edge of stability: λ_max under full-batch GD sharpens to about 2/h and hovers there"
PAPER = (
    "Cohen et al., *Gradient Descent on Neural Networks Typically Occurs at the Edge of "
    "Stability*, ICLR 2021 (arXiv 2103.00065), Fig. 1–2"
)


@dataclasses.dataclass(frozen=True)
class Config:
    lrs: tuple[float, ...] = (0.5, 1.0, 2.0)
    seeds: int = 2
    n_train: int | None = 1000  # MNIST-1D training samples (None: all 4,000)
    n_test: int | None = 200  # test error is not the point here: a small test set
    width: int = 64
    depth: int = 2
    activation: str = "tanh"
    steps: int = 2000
    eval_every: int = 20  # training loss
    probe_every: int = 20  # λ_max
    lanczos_max_iter: int = 40
    reach: float = 0.9  # "reached the edge": λ_max ≥ reach · 2/h
    min_time_at_edge: float = 0.2  # judge "hovering" only with this fraction of steps left
    late: float = 0.25  # both tests read the probes of the last quarter of the steps
    band: float = 0.15  # ... within ±15% of 2/h (hovering; and the sharpening TOST's margin)
    early: float = 0.05  # the sharpening test's start: the median over the first 5% of probes


CONFIGS = {
    "smoke": Config(
        lrs=(1.0, 2.0),
        seeds=1,
        n_train=64,
        n_test=32,
        width=8,
        steps=20,
        eval_every=5,
        probe_every=5,
        lanczos_max_iter=10,
    ),  # fmt: skip
    "demo": Config(lrs=(1.0, 2.0), seeds=2, steps=800, lanczos_max_iter=30),
    "small": Config(seeds=3),
    "full": Config(
        lrs=(0.25, 0.5, 1.0, 2.0),
        seeds=3,
        n_train=None,
        n_test=None,
        width=128,
        steps=6000,
        eval_every=20,
        probe_every=20,
        lanczos_max_iter=80,
    ),  # fmt: skip
}


def sweep_configs(cfg: Config) -> list[RunConfig]:
    """Full-batch GD at every h and seed, λ_max probed along the way."""
    base = RunConfig(
        model="mlp", width=cfg.width, depth=cfg.depth, activation=cfg.activation,
        dataset="mnist1d", n_train=cfg.n_train, n_test=cfg.n_test, loss="mse",
        optimizer="gd", steps=cfg.steps, eval_every=cfg.eval_every, probes=("lambda_max",),
        probe_every=cfg.probe_every, probe_options={"lanczos_max_iter": cfg.lanczos_max_iter},
    )  # fmt: skip
    return [base.replace(lr=h, seed=s) for h in cfg.lrs for s in range(cfg.seeds)]


def edge_stats(history: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Per run: λ_max·h/2 at step 0 and its median over the early probes (the first
    ``cfg.early`` fraction of the probes, at least one), the first step at the edge, and
    after it the median and max of λ_max·h/2 and the fraction of steps left."""
    rows = []
    for (lr, seed), h in history[history.metric == "lambda_max"].groupby(["lr", "seed"]):
        h = h.sort_values("step")
        ratio = h.value.to_numpy() * lr / 2
        steps = h.step.to_numpy()
        hit = np.nonzero(ratio >= cfg.reach)[0]
        n_early = max(1, int(np.ceil(round(cfg.early * len(ratio), 9))))
        after = steps >= steps[hit[0]] if len(hit) else np.zeros_like(steps, dtype=bool)
        rows.append(
            {
                "lr": lr,
                "seed": seed,
                "2/h": 2 / lr,
                "lambda_max_start": float(h.value.iloc[0]),
                "ratio_start": float(ratio[0]),
                "early_probes": n_early,
                "ratio_early": float(np.median(ratio[:n_early])),
                "ratio_max": float(ratio.max()),
                "first_step_at_edge": int(steps[hit[0]]) if len(hit) else None,
                "time_at_edge": float(1 - steps[hit[0]] / steps.max()) if len(hit) else 0.0,
                "ratio_after_median": float(np.median(ratio[after])) if len(hit) else np.nan,
                "ratio_after_max": float(ratio[after].max()) if len(hit) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def hover_stats(history: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Per run: the fraction of the late probes with λ_max·h/2 within ±band of 1 ("own"),
    and the mean over the other step sizes h′ of the fraction within ±band of λ_max·h′/2 = 1
    ("control"); their difference is the hovering effect (module docstring)."""
    lrs = sorted(cfg.lrs)
    rows = []
    for (lr, seed), h in history[history.metric == "lambda_max"].groupby(["lr", "seed"]):
        late = h[h.step >= (1 - cfg.late) * h.step.max()].value.to_numpy()

        def inside(step_size: float, late: np.ndarray = late) -> float:
            return float(np.mean(np.abs(late * step_size / 2 - 1) <= cfg.band))

        others = [inside(o) for o in lrs if not np.isclose(o, lr)]
        rows.append(
            {
                "lr": lr, "seed": seed, "late_probes": len(late), "own": inside(lr),
                "control": float(np.mean(others)) if others else np.nan,
                "late_median_ratio": float(np.median(late * lr / 2)),
            }
        )  # fmt: skip
    out = pd.DataFrame(rows)
    out["effect"] = out["own"] - out["control"]
    return out


def edge_figure(history: pd.DataFrame, cfg: Config) -> Figure:
    """λ_max (with the 2/h lines) and the training loss against the step."""
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax_l, ax_r = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(len(cfg.lrs))]
    for lr, color in zip(sorted(cfg.lrs), colors):
        h = history[history.lr == lr]
        steps, lam = history_matrix(h, "lambda_max")
        if len(steps):
            plot_band(ax_l, steps, lam, label=f"h = {lr:g}", color=color)
        ax_l.axhline(2 / lr, ls="--", lw=1, color=color, label=f"2/h = {2 / lr:g}")
        steps, loss = history_matrix(h, "train_loss")
        if len(steps):
            plot_band(ax_r, steps, loss, label=f"h = {lr:g}", color=color, geometric=True)
    ax_l.set(xlabel="step (GD iterations)", ylabel="λ_max (top Hessian eigenvalue)")
    ax_l.set_title("sharpness λ_max: progressive sharpening, then hovering at 2/h")
    ax_l.legend(fontsize=8, ncol=2)
    ax_r.set(xlabel="step (GD iterations)", ylabel="train loss (MSE on one-hot targets)")
    ax_r.set_yscale("log")
    ax_r.set_title("training loss (non-monotone at the edge of stability)")
    ax_r.legend(fontsize=8)
    n = "4,000" if cfg.n_train is None else f"{cfg.n_train:,}"
    fig.suptitle(
        f"Full-batch GD on MNIST-1D (n={n}), MLP 40→{cfg.width}→{cfg.width}→10 ({cfg.activation}), "
        f"squared loss; λ_max every {cfg.probe_every} steps; mean ± std over {cfg.seeds} seed(s)"
    )
    tidy_log_axes(fig)
    return fig


def plan(cfg: Config) -> Plan:
    """Full-batch GD at every h and seed, in this experiment's own store."""
    return Plan(tuple(sweep_configs(cfg)))


def stored_trajectories(out: Path) -> pd.DataFrame | None:
    """In a store-only report with no run store: the λ_max and loss trajectories an earlier
    report wrote into ``out/trajectories.csv`` (``attrs["stored"]``); else None."""
    path = Path(out) / "trajectories.csv"
    if not (store_only() and path.is_file()):
        return None
    history = pd.read_csv(path)
    history.attrs["note"] = (
        "Re-judged from the per-run trajectories stored in `trajectories.csv` (λ_max and "
        "the training loss of every run); nothing was trained."
    )
    history.attrs["stored"] = True
    return history


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The runs' histories (long form: lr, seed, step, metric, value), the per-run edge
    statistics (:func:`edge_stats`) and hovering fractions (:func:`hover_stats`), and the
    runs that diverged (none known when re-judged from stored trajectories)."""

    history: pd.DataFrame
    stats: pd.DataFrame
    hover: pd.DataFrame
    diverged: pd.DataFrame


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    """Edge and hovering statistics from the runs' histories (or the stored trajectories)."""
    if rows.attrs.get("stored"):
        history, diverged = rows, pd.DataFrame({"status": []})
    else:
        history, diverged = load_history(rows, ["lr", "seed"]), rows[rows.status != "complete"]
    return Analysis(history, edge_stats(history, cfg), hover_stats(history, cfg), diverged)


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Per step size: progressive sharpening (late λ_max·h/2 above its early value, paired
    on the log scale, *and* equivalent to 1 within ±band), then hovering at its own 2/h
    rather than at the other step sizes' (the control). Module docstring."""
    out = []
    for lr, g in a.stats.groupby("lr"):
        g = g.sort_values("seed")
        start, early = g.ratio_start.to_numpy(), g.ratio_early.to_numpy()
        hv = a.hover[np.isclose(a.hover.lr, lr)].sort_values("seed")
        if not np.array_equal(g.seed.to_numpy(), hv.seed.to_numpy()):
            raise ValueError(f"h = {lr:g}: edge and hover statistics cover different seeds")
        starts_below = bool(np.all(early < cfg.reach))
        late = hv.late_median_ratio.to_numpy()
        tests = (
            attempt(paired_test, late, early, log=True),  # (a) the rise
            attempt(equivalence_test, late, np.ones_like(late), margin=cfg.band),  # (b) to 2/h
        )
        out.append(Claim(
            f"h = {lr:g}: λ_max rises from below 2/h = {2 / lr:g} to about 2/h (progressive "
            f"sharpening): the late median of λ_max·h/2 (last {100 * cfg.late:g}% of the steps) "
            f"is above its early median (first {100 * cfg.early:g}% of the probes; paired, log "
            f"scale) and within ±{100 * cfg.band:g}% of 1 (TOST, margin ±{cfg.band:g})",
            "Cohen et al. 2021, Fig. 1",
            tests if starts_below else (),
            untested="" if starts_below else "λ_max already starts at or above the edge",
            context=f"λ_max·h/2 at step 0: {mean_std(start)}; early median: {mean_std(early)}; "
            f"late median: {mean_std(late)}; first step with λ_max ≥ {cfg.reach:g}·2/h: "
            + ", ".join("never" if v is None or pd.isna(v) else f"{int(v)}"
                        for v in g.first_step_at_edge),
        ))  # fmt: skip
        others = ", ".join(f"{o:g}" for o in sorted(cfg.lrs) if not np.isclose(o, lr))
        out.append(Claim(
            f"h = {lr:g}: λ_max then hovers at about 2/h: more late probes lie within "
            f"±{100 * cfg.band:g}% of its own 2/h than of the other step sizes' 2/h′ (the "
            "control)",
            "Cohen et al. 2021, Fig. 1–2 (just above 2/h)",
            (attempt(paired_test, hv.own.to_numpy(), hv.control.to_numpy()),),
            context=f"fraction of late probes (last {100 * cfg.late:g}% of the steps) within "
            f"the band: own {mean_std(hv.own.to_numpy())}, control (h′ = {others}) "
            f"{mean_std(hv.control.to_numpy())}; late median λ_max·h/2 {mean_std(late)}",
            headline=bool(np.isclose(lr, max(cfg.lrs))),
        ))  # fmt: skip
    return out


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            edge_figure(a.history, cfg),
            "edge_of_stability.png",
            "Left: λ_max against the GD step for each step size h (mean ± std over seeds), "
            "dashed lines at 2/h in the same colour. Right: the training loss of the same runs "
            "(log scale).",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The diverged runs, the table of how close λ_max sits to 2/h, and the data files."""
    if len(a.diverged):
        report.add_text(
            "\n".join(
                f"- h = {r.lr:g}, seed {r.seed}: diverged at step {r.diverged_at}"
                for r in a.diverged.itertuples()
            ),
            heading="Diverged runs",
        )
    table = (
        a.stats.groupby("lr")
        .agg(
            seeds=("seed", "count"),
            lam0=("lambda_max_start", "mean"),
            start=("ratio_start", "mean"),
            first=("first_step_at_edge", "mean"),
            median_after=("ratio_after_median", "mean"),
            max_after=("ratio_after_max", "mean"),
        )
        .reset_index()
    )
    report.add_table(
        [
            {
                "h": r.lr,
                "2/h": 2 / r.lr,
                "seeds": r.seeds,
                "λ_max at step 0": r.lam0,
                "λ_max·h/2 at step 0": r.start,
                "first step at the edge": r.first,
                "median λ_max·h/2 from then on": r.median_after,
                "max λ_max·h/2 from then on": r.max_after,
            }
            for r in table.itertuples()
        ],
        heading="How close λ_max sits to 2/h",
        caption=(
            f'Seed means; "at the edge": λ_max ≥ {cfg.reach:g}·2/h. λ_max from '
            f"{cfg.lanczos_max_iter} Lanczos iterations at most "
            f"(`probe_options={{'lanczos_max_iter': {cfg.lanczos_max_iter}}}`), every "
            f"{cfg.probe_every} steps over the full training set ({fmt(cfg.steps)} steps)."
        ),
    )
    report.add_data(a.stats.merge(a.hover, on=["lr", "seed"]), "edge_stats.csv")
    lam = a.history[a.history.metric.isin(["lambda_max", "train_loss"])]
    report.add_data(lam[["lr", "seed", "step", "metric", "value"]], "trajectories.csv")


SPEC = Spec(
    NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras,
    stored=stored_trajectories,
)  # fmt: skip


def run(scale: str, out: Path) -> Report:
    """Run edge-of-stability at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
