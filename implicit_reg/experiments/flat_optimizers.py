"""flat-optimizers: does EGR or SAM at a small step recover what a large GD step buys?

Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021 (arXiv
2009.11162): GD at step h follows L + (h/4)‖∇L‖², so a larger step ends
flatter and, on their MNIST runs, generalizes better; EGR adds the missing
(h_ℓ − h_s)/4·‖∇L‖² at the small step h_s to mimic the large step h_ℓ.
Foret et al., "Sharpness-Aware Minimization", ICLR 2021 (arXiv 2010.01412):
SAM is, to first order, GD on L + ρ‖∇L‖, the same curvature direction H∇L
with weight ρ/‖∇L‖ instead of EGR's 2μ.

What is run, on the lr-sweep setting (:mod:`implicit_reg.experiments.lr_sweep`:
MNIST-1D, MLP 40 → w → w → 10 ReLU, cross-entropy, full batch, every run
stopped at the same training loss): GD at h_s and h_ℓ, EGR at h_s with
μ = (h_ℓ − h_s)/4, and SAM (around GD) at h_s for each ρ of a small sweep,
over several seeds, all through the engine (``RunConfig(optimizer="sam",
rho=ρ)``). The ρ shown as "SAM" is chosen by a training-set criterion only:
the ρ whose mean λ_max at the stop is closest (in log) to GD at h_ℓ's. At
the stop: test accuracy, λ_max, tr H, ‖∇L‖², ‖θ‖; and the cost: wall time of
one optimizer step of each, timed here in one process against the GD step
(same model and data), besides each run's own wall time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.train import build_optimizer, load_run_data, make_loss
from implicit_reg.report.report import Claim, Report, attempt, fmt, mean_std
from implicit_reg.stats import equivalence_test, paired_ratio, paired_test

from ._spec import Plan, Spec, run_spec
from ._sweeps import MEASURE_PROBES

NAME = "flat-optimizers"
TITLE = (
    "Flat minima by other means: GD at a small and a large step, EGR and SAM at the small "
    "step, stopped at equal training loss"
)
PAPER = (
    "Barrett & Dherin, *Implicit Gradient Regularization*, ICLR 2021 (arXiv 2009.11162), "
    "Sec. 5; Foret et al., *Sharpness-Aware Minimization for Efficiently Improving "
    "Generalization*, ICLR 2021 (arXiv 2010.01412)"
)
#: "recovers the large step's accuracy": test accuracy within ± this of GD at h_ℓ (TOST); one
#: point, a third of the h_ℓ − h_s gap measured at `small`
RECOVER_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class Config:
    lr_small: float = 0.1  # h_s: GD, EGR and SAM
    lr_large: float = 1.14  # h_ℓ: the GD step whose implicit term EGR mimics
    rhos: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)  # SAM's radius sweep at h_s
    seeds: int = 3  # initialization seeds 0..seeds-1 (data fixed: data_seed 0)
    n_train: int | None = 1000
    n_test: int | None = None
    width: int = 64
    depth: int = 2
    target_train_loss: float = 0.05
    max_steps: int = 6000
    eval_every: int = 100
    probe_options: tuple[tuple[str, object], ...] = (("trace_hvps", 30),)
    timing_rounds: int = 15  # cost column: rounds, each timing a block of steps of every arm
    timing_block: int = 10  # optimizer steps per timed block


CONFIGS = {
    "smoke": Config(
        lr_small=0.5,
        lr_large=2.0,
        rhos=(0.05, 0.2),
        seeds=1,
        n_train=64,
        n_test=64,
        width=8,
        target_train_loss=2.1,
        max_steps=20,
        eval_every=5,
        probe_options=(("trace_hvps", 6),),
        timing_rounds=2,
        timing_block=2,
    ),  # fmt: skip
    "small": Config(),
    "full": Config(
        lr_small=0.05,
        lr_large=1.08,
        rhos=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
        seeds=5,
        n_train=None,
        width=128,
        max_steps=20000,
        target_train_loss=0.02,
    ),  # fmt: skip
}


def egr_coeff(cfg: Config) -> float:
    """μ = (h_ℓ − h_s)/4: with GD's own h_s/4 the implicit total is h_ℓ/4."""
    return (cfg.lr_large - cfg.lr_small) / 4.0


def base_config(cfg: Config) -> RunConfig:
    """lr-sweep's run fields (same config hash for the GD runs)."""
    return RunConfig(
        model="mlp", width=cfg.width, depth=cfg.depth, activation="relu",
        dataset="mnist1d", n_train=cfg.n_train, n_test=cfg.n_test,
        loss="cross_entropy", optimizer="gd", steps=cfg.max_steps,
        target_train_loss=cfg.target_train_loss, eval_every=cfg.eval_every,
        probes=MEASURE_PROBES, probe_options=dict(cfg.probe_options) or None,
    )  # fmt: skip


def arms(cfg: Config) -> dict[str, RunConfig]:
    """``{arm: config at seed 0}``: GD small, GD large, EGR, and one SAM arm per ρ."""
    base = base_config(cfg)
    out = {
        f"GD h={cfg.lr_small:g}": base.replace(lr=cfg.lr_small),
        f"GD h={cfg.lr_large:g}": base.replace(lr=cfg.lr_large),
        f"EGR h={cfg.lr_small:g}": base.replace(
            optimizer="egr", lr=cfg.lr_small, egr_coeff=egr_coeff(cfg)
        ),
    }
    for rho in cfg.rhos:
        out[f"SAM h={cfg.lr_small:g} ρ={rho:g}"] = base.replace(
            optimizer="sam", lr=cfg.lr_small, rho=rho
        )
    return out


def plan(cfg: Config) -> Plan:
    """Every arm at every seed. GD and EGR are lr-sweep's runs (same fields, same config
    hashes), so the runs live in lr-sweep's store, which receives the SAM arms too."""
    runs = tuple(c.replace(seed=s) for c in arms(cfg).values() for s in range(cfg.seeds))
    return Plan(runs, borrows="lr-sweep")


def arm_of(optimizer: str, lr: float, rho: float) -> str:
    """The arm name (:func:`arms`) of a run from its fields."""
    if optimizer == "sam":
        return f"SAM h={lr:g} ρ={rho:g}"
    return f"{'EGR' if optimizer == 'egr' else 'GD'} h={lr:g}"


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The runs with ``arm``, ``test_acc``, ``reached`` (stopped at the target loss),
    ``step_ms`` and ``step_ratio`` (the timed cost of one step, and over GD at h_s's);
    ``chosen``: the SAM arm selected by λ_max (:func:`select_rho`)."""

    rows: pd.DataFrame
    chosen: str | None


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    """Name the arms, mark the runs that reached the target, time each arm's optimizer step
    here unless the (stored) table has the timings, and choose SAM's ρ."""
    rows = rows.copy()
    if "arm" not in rows:
        rows.insert(0, "arm", [arm_of(*r) for r in zip(rows.optimizer, rows.lr, rows.rho)])
    rows["test_acc"] = 1.0 - rows["test_error"]
    rows["reached"] = (rows.status == "complete") & (rows.stop_reason == "target_train_loss")
    if "step_ms" not in rows:  # trained or read from the store now: time the steps
        rows["wall_per_step_ms"] = 1e3 * rows["wall_time_s"] / rows["steps_done"].clip(lower=1)
        step_s = time_steps(cfg)
        gd_step = step_s[f"GD h={cfg.lr_small:g}"]
        rows["step_ms"] = rows.arm.map(lambda a: 1e3 * step_s[a])
        rows["step_ratio"] = rows.arm.map(lambda a: step_s[a] / gd_step)
    return Analysis(rows=rows, chosen=select_rho(rows, cfg))


def time_steps(cfg: Config) -> dict[str, float]:
    """Seconds per optimizer step of each arm's optimizer, timed in this process.

    The optimizer comes from the engine's ``build_optimizer``; one full-batch
    step as the engine takes it (GD: one gradient; EGR: its exact closure;
    SAM: the torch-style closure, two gradients), same model and data, one
    thread. After one warm-up block, ``timing_rounds`` rounds each time a
    block of ``timing_block`` steps of every arm, in rotating order (so all
    arms see the same machine load); the result is the median block time
    divided by the block length.
    """
    from implicit_reg.workloads.models import build_model

    configs = arms(cfg)
    data = load_run_data(next(iter(configs.values())))
    x, y = data.x_train, data.y_train
    steppers = {}
    for arm, c in configs.items():
        torch.manual_seed(0)
        model = build_model(**c.model_spec(data.input_dim, data.output_dim)).to(x.dtype)
        loss_fn = make_loss(c.loss, num_classes=data.num_classes)
        opt = build_optimizer(c, list(model.parameters()), model)
        steppers[arm] = _stepper(c, opt, model, loss_fn, x, y)
    names = list(configs)
    times: dict[str, list[float]] = {arm: [] for arm in names}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for arm in names:
            for _ in range(cfg.timing_block):  # warm-up
                steppers[arm]()
        for r in range(cfg.timing_rounds):
            for arm in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                for _ in range(cfg.timing_block):
                    steppers[arm]()
                times[arm].append((time.perf_counter() - t0) / cfg.timing_block)
    finally:
        torch.set_num_threads(threads)
    return {arm: float(np.median(t)) for arm, t in times.items()}


def _stepper(c, opt, model, loss_fn, x, y):
    def torch_style():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    if c.optimizer == "egr":
        return lambda: opt.step(lambda: loss_fn(model(x), y))
    if c.optimizer == "sam":
        return lambda: opt.step(torch_style)

    def gd():
        torch_style()
        opt.step()

    return gd


def select_rho(rows: pd.DataFrame, cfg: Config) -> str | None:
    """The SAM arm whose mean λ_max is closest in log to GD at h_ℓ's (training data only)."""
    ok = rows[rows.reached]
    target = ok[ok.arm == f"GD h={cfg.lr_large:g}"]["lambda_max"]
    sam = ok[ok.arm.str.startswith("SAM")]
    if target.empty or sam.empty:
        return None
    lam = sam.groupby("arm")["lambda_max"].mean()
    return str((np.log(lam) - np.log(target.mean())).abs().idxmin())


METRICS = (
    ("test_acc", "test accuracy", False),
    ("lambda_max", "λ_max (top Hessian eigenvalue)", True),
    ("trace", "tr H (Hutch++)", True),
    ("grad_norm_sq", "‖∇L‖² at the stop", True),
    ("weight_norm", "‖θ‖", False),
    ("step_ms", "wall time per optimizer step (ms)", False),
)


def figure(rows: pd.DataFrame, cfg: Config, chosen: str | None) -> Figure:
    """One panel per measure: every arm's seeds (dots) and mean (bar)."""
    ok = rows[rows.reached]
    order = list(arms(cfg))
    fig = Figure(figsize=(14, 8.5), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    colors = {"GD": "C0", "EGR": "C3", "SAM": "C2"}
    for ax, (metric, title, logy) in zip(axes, METRICS):
        for i, arm in enumerate(order):
            v = ok[ok.arm == arm][metric].to_numpy(dtype=float)
            if not len(v):
                continue
            color = colors[arm.split()[0]]
            if arm == f"GD h={cfg.lr_large:g}":
                color = "C1"
            ax.bar(i, v.mean(), color=color, alpha=0.35 if arm != chosen else 0.7)
            ax.plot(np.full(len(v), i), v, "o", color=color, ms=4)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(
            [a + (" *" if a == chosen else "") for a in order], rotation=35, ha="right", fontsize=7
        )
        if logy:
            ax.set_yscale("log")
        ax.set_title(title)
        if metric == "test_acc":
            lo = ok[metric].min() if len(ok) else 0
            ax.set_ylim(max(0.0, lo - 0.05), None)
    n = "4,000" if cfg.n_train is None else f"{cfg.n_train:,}"
    fig.suptitle(
        f"MNIST-1D (n={n}), MLP 40→{cfg.width}→{cfg.width}→10 ReLU, full batch, every run "
        f"stopped at train loss ≤ {cfg.target_train_loss:g}; bars: mean over {cfg.seeds} "
        "seed(s), dots: seeds; * the SAM ρ chosen by λ_max (training data)"
    )
    return fig


def _vals(rows, arm, metric):
    g = rows[rows.reached & (rows.arm == arm)].sort_values("seed")
    return g["seed"].to_numpy(), g[metric].to_numpy(dtype=float)


def _paired(rows, a, b, metric) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of arms ``a`` and ``b`` on the seeds both reached the threshold, paired."""
    sa, va = _vals(rows, a, metric)
    sb, vb = _vals(rows, b, metric)
    common = np.intersect1d(sa, sb)
    return va[np.isin(sa, common)], vb[np.isin(sb, common)]


def _triple(rows, arm, small, large, metric):
    """``metric`` of ``arm``, ``small`` and ``large`` on the seeds all three reached."""
    seeds = [set(_vals(rows, x, metric)[0]) for x in (arm, small, large)]
    common = np.array(sorted(set.intersection(*seeds)))
    return [_vals(rows, x, metric)[1][np.isin(_vals(rows, x, metric)[0], common)]
            for x in (arm, small, large)]  # fmt: skip


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """The premise (h_ℓ beats h_s), then for EGR and the chosen SAM: the gain over GD at h_s,
    the recovery of h_ℓ's accuracy (TOST), and the flatness."""
    rows, chosen = a.rows, a.chosen
    out: list[Claim] = []

    def add(statement: str, paper: str, *tests, **kw) -> None:
        out.append(Claim(statement, paper, tuple(tests), **kw))

    small, large = f"GD h={cfg.lr_small:g}", f"GD h={cfg.lr_large:g}"
    egr = f"EGR h={cfg.lr_small:g}"
    add(
        f"GD at h_ℓ = {cfg.lr_large:g} ends with a higher test accuracy than at h_s = "
        f"{cfg.lr_small:g} (the premise)",
        "Barrett & Dherin 2021, Fig. 3",
        attempt(paired_test, *_paired(rows, large, small, "test_acc")),
        context="test accuracy h_ℓ − h_s, paired over the seeds both reached the threshold",
    )  # fmt: skip
    for arm, who in ((egr, "EGR"), (chosen, "SAM")):
        if arm is None:
            continue
        what = (
            f"μ = (h_ℓ − h_s)/4 = {egr_coeff(cfg):.3g}"
            if who == "EGR"
            else f"{arm.split()[-1]} (chosen by λ_max, training data only)"
        )
        paper = "Barrett & Dherin 2021, Sec. 5" if who == "EGR" else "Foret et al. 2021"
        v, s_, l_ = _triple(rows, arm, small, large, "test_acc")
        share = attempt(paired_ratio, v, s_, l_, s_)
        add(
            f"{who} at h_s = {cfg.lr_small:g} ({what}) is more accurate than GD at h_s",
            paper,
            attempt(paired_test, *_paired(rows, arm, small, "test_acc")),
            context=f"test accuracy {who} − GD h_s, paired"
            + (f"; it closes {share.sentence(percent=True)} of the h_ℓ − h_s gap (paired "
               "Fieller ratio)" if hasattr(share, "ratio") else ""),
            effect=f"{who} gain",
        )  # fmt: skip
        add(
            f"{who} at h_s recovers the large step's test accuracy: within ±"
            f"{100 * RECOVER_MARGIN:g} points of GD at h_ℓ (equivalence, TOST)",
            paper,
            attempt(equivalence_test, *_paired(rows, arm, large, "test_acc"),
                    margin=RECOVER_MARGIN),
            context=f"test accuracy {who} at h_s − GD at h_ℓ, paired",
            headline=who == "EGR",
        )  # fmt: skip
        add(
            f"{who} at h_s ends flatter (smaller λ_max) than GD at h_s"
            + ("" if who == "EGR" else " (ρ was chosen by this measure, so this is optimistic)"),
            paper,
            attempt(paired_test, *_paired(rows, small, arm, "lambda_max"), log=True),
            context=f"λ_max of GD h_s over {who}'s, paired, log scale",
        )  # fmt: skip
    return out


def verdict_text(rows: pd.DataFrame, cfg: Config, chosen: str | None) -> str:
    """Each small-step arm's compute to the target loss against GD at h_ℓ.

    Compute to the target = steps to the threshold × the timed cost of one step,
    as a multiple of GD at h_ℓ's (the optimizer steps only, no evaluation).
    """
    small, large = f"GD h={cfg.lr_small:g}", f"GD h={cfg.lr_large:g}"
    ok = rows[rows.reached]

    def compute(arm):
        g = ok[ok.arm == arm]
        return float((g.steps_done * g.step_ms).mean()) if len(g) else float("nan")

    base = compute(large)
    lines = []
    for arm in (small, f"EGR h={cfg.lr_small:g}", chosen):
        if arm is None:
            continue
        lam_a = ok[ok.arm == arm].lambda_max.mean()
        lam_b = ok[ok.arm == large].lambda_max.mean()
        lines.append(
            f"- **{arm}**: λ_max {fmt(lam_a)} against {fmt(lam_b)}; compute to the target "
            f"loss {fmt(compute(arm) / base, 3)}× GD at h_ℓ's."
        )
    return (
        f"Against GD at the large step h_ℓ = {cfg.lr_large:g} (the accuracy verdicts are the "
        "equivalence claims above):\n\n"
        + "\n".join(lines)
        + "\n\nCompute to the target: mean steps to the threshold × the timed cost of one step. "
        "Recovering the large step's accuracy at the small step is a statement about what "
        "the regularizer does; as a way to train it costs that multiple of simply taking "
        "the large step, which this setting allows."
    )


def summary_rows(rows: pd.DataFrame, cfg: Config, chosen: str | None) -> list[dict]:
    out = []
    for arm in arms(cfg):
        g = rows[rows.reached & (rows.arm == arm)]
        all_ = rows[rows.arm == arm]
        if g.empty:
            out.append({"arm": arm, "seeds reached": f"0/{len(all_)}"})
            continue
        out.append(
            {
                "arm": arm + (" (chosen)" if arm == chosen else ""),
                "seeds reached": f"{len(g)}/{len(all_)}",
                "steps": mean_std(g.steps_done.to_numpy(), 3),
                "test acc": mean_std(g.test_acc.to_numpy()),
                "λ_max": mean_std(g.lambda_max.to_numpy()),
                "tr H": mean_std(g.trace.to_numpy()),
                "‖∇L‖²": mean_std(g.grad_norm_sq.to_numpy()),
                "‖θ‖": mean_std(g.weight_norm.to_numpy()),
                "step (ms)": fmt(float(g.step_ms.iloc[0]), 3),
                "step / GD step": fmt(float(g.step_ratio.iloc[0]), 3),
                "run wall time (s)": mean_std(g.wall_time_s.to_numpy(), 3),
            }
        )
    return out


TABLE_COLUMNS = (
    "arm", "optimizer", "lr", "egr_coeff", "rho", "seed", "status", "stop_reason", "steps_done",
    "train_loss", "test_error", "test_acc", "grad_norm_sq", "lambda_max", "trace", "weight_norm",
    "dist_from_init", "wall_time_s", "wall_per_step_ms", "step_ms", "step_ratio",
)  # fmt: skip


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            figure(a.rows, cfg, a.chosen),
            "flat_optimizers.png",
            "Each arm at the stopping point (train loss ≤ threshold): bars are seed means, dots "
            "the seeds; the last panel is the median wall time of one optimizer step, timed in "
            "one process on one thread, arms interleaved.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The per-arm table, the runs that missed the threshold, the cost verdict, the per-run
    table."""
    rows, chosen = a.rows, a.chosen
    report.add_table(
        summary_rows(rows, cfg, chosen),
        heading="Measures at the stopping point, and the cost",
        caption=(
            f"Mean ± std over seeds that reached train loss ≤ {cfg.target_train_loss:g}. EGR: GD "
            f"on L + μ‖∇L‖² (exact Hessian-gradient products) with μ = {egr_coeff(cfg):.4g}. "
            "SAM: SAM around GD at the same step (two gradients per step; its arms differ only in "
            "ρ, so their step costs differ only by timing noise). 'step (ms)': median over "
            f"{cfg.timing_rounds} rounds of a block of {cfg.timing_block} full-batch optimizer "
            "steps timed here, one thread, arms interleaved, against GD's step in the same run "
            "('step / GD step'). 'run wall time': each run's own, "
            f"including the evaluations every {cfg.eval_every} steps and the final probes."
        ),
    )
    bad = rows[~rows.reached]
    if len(bad):
        report.add_text(
            "Runs that did not stop at the target loss (left out of the means):\n\n"
            + "\n".join(
                f"- {r.arm} seed {r.seed}: {r.status}, {r.stop_reason}, {r.steps_done} steps, "
                f"train loss {fmt(r.train_loss)}"
                for r in bad.itertuples()
            ),
            heading="Runs that missed the threshold",
        )
    report.add_text(
        verdict_text(rows, cfg, chosen),
        heading="Verdict: which recovers the large step, at what cost",
    )
    report.add_text(
        "SAM's first-order objective is L + ρ‖∇L‖, EGR's L + μ‖∇L‖²: both add the direction "
        "H∇L to the gradient, SAM with weight ρ/‖∇L‖ (which grows as training converges), EGR "
        "with 2μ. At matched flatness the question is which costs less: see the step-cost "
        "column (SAM: two gradients; EGR exact: a gradient with its graph and one "
        "Hessian-vector product).",
        heading="Reading the comparison",
    )
    report.add_data(rows[[c for c in TABLE_COLUMNS if c in rows]], "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Run flat-optimizers at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
