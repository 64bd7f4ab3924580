"""sgd-batch: SGD's implicit regularizer grows with h/B; adding it explicitly to large batches.

Smith, Dherin, Barrett & De, "On the Origin of Implicit Regularization in
Stochastic Gradient Descent", ICLR 2021 (arXiv 2101.12176): over one epoch
of m minibatches the mean SGD iterate follows the modified loss

    L_SGD = L + (h/4m)·Σ_k‖∇L_k‖² = L + (h/4)‖∇L‖² + (h/4m)·Σ_k‖∇L_k − ∇L‖²,

whose last term scales with h/B (the minibatch gradient variance is ∝ 1/B).
So test accuracy should depend on h/B, improving as h/B grows, and adding
the regularizer explicitly to large-batch training should recover the
small-batch test accuracy (their Sec. 5).

What is run: an MLP 40 → w → w → 10 (ReLU) on MNIST-1D, cross-entropy,
plain SGD (no momentum; ``RunConfig(optimizer="sgd")``) at every (h, B) of a
grid, several seeds, each run stopped when its full training loss (checked
every ``eval_every`` steps) first reaches ``target_train_loss``: the runs
are compared at equal training loss, not after equal step counts, at which
different h and B reach training losses an order of magnitude apart. Trends
over h/B are tested on the per-seed Kendall τ (``implicit_reg.stats.trend_test``), the
explicit regularizer on paired per-seed differences. Then large-batch training with the explicit regularizer:
``RunConfig(optimizer="egr", batch_size=B_L, egr_micro_batch=B_S,
egr_coeff=h/4)`` steps on L_B + (h/4)·mean_j‖∇L_j‖² over the micro-batches j
of size B_S inside each batch of size B_L: per step the (h/4)‖∇L_k‖² of
every small batch k, whose epoch average is (h/4m)·Σ_k‖∇L_k‖²
(``EGR.step(chunks=..., penalty="per_chunk")``). At the end: test accuracy,
full-batch ‖∇L‖², λ_max and tr H.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import Claim, Report, attempt, fmt, mean_std
from implicit_reg.stats import equivalence_test, paired_ratio, paired_test, trend_test

from ._spec import Plan, Spec, run_spec
from ._sweeps import tidy_log_axes

NAME = "sgd-batch"
TITLE = (
    "SGD's implicit regularization against h/B, and the explicit SGD regularizer at a large batch"
)
PAPER = (
    "Smith, Dherin, Barrett & De, *On the Origin of Implicit Regularization in Stochastic "
    "Gradient Descent*, ICLR 2021 (arXiv 2101.12176), Sec. 3–5"
)
#: "recovers the small batch's accuracy": test accuracy within ± this of it (TOST)
RECOVER_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class Config:
    lrs: tuple[float, ...] = (0.05, 0.1, 0.2)
    batch_sizes: tuple[int, ...] = (25, 100, 400)
    seeds: int = 3
    n_train: int | None = 1000
    n_test: int | None = None
    width: int = 64
    depth: int = 2
    steps: int = 20000  # budget; every run stops at target_train_loss first
    target_train_loss: float = 0.02  # the runs are compared at this full training loss
    eval_every: int = 50  # the stopping rule is checked at every evaluation
    explicit_lr: float = 0.2  # the (h, B_L) that gets the explicit regularizer...
    explicit_batch: int = 100
    explicit_micro_batch: int = 25  # ...computed on micro-batches of the small B_S


CONFIGS = {
    "smoke": Config(
        lrs=(0.1, 0.2),
        batch_sizes=(8, 32),
        seeds=1,
        n_train=64,
        n_test=64,
        width=8,
        steps=10,
        target_train_loss=2.25,
        eval_every=5,
        explicit_lr=0.2,
        explicit_batch=32,
        explicit_micro_batch=8,
    ),  # fmt: skip
    "small": Config(),
    "full": Config(
        lrs=(0.025, 0.05, 0.1, 0.2, 0.4),
        batch_sizes=(10, 25, 100, 400),
        seeds=4,
        n_train=None,
        width=128,
        steps=60000,
        target_train_loss=0.01,
        eval_every=100,
    ),  # fmt: skip
}


def sweep_configs(cfg: Config) -> list[RunConfig]:
    base = RunConfig(
        model="mlp", width=cfg.width, depth=cfg.depth, activation="relu", dataset="mnist1d",
        n_train=cfg.n_train, n_test=cfg.n_test, loss="cross_entropy", optimizer="sgd",
        batch_size=cfg.batch_sizes[0],
        steps=cfg.steps, eval_every=cfg.eval_every, probes=("lambda_max", "trace"),
        target_train_loss=cfg.target_train_loss,
    )  # fmt: skip
    sgd = [
        base.replace(lr=h, batch_size=b, seed=s)
        for h in cfg.lrs
        for b in cfg.batch_sizes
        for s in range(cfg.seeds)
    ]
    explicit = [
        base.replace(
            optimizer="egr",
            lr=cfg.explicit_lr,
            batch_size=cfg.explicit_batch,
            egr_micro_batch=cfg.explicit_micro_batch,
            egr_coeff=cfg.explicit_lr / 4,
            seed=s,
        )  # fmt: skip
        for s in range(cfg.seeds)
    ]
    return sgd + explicit


def sgd_figure(rows: pd.DataFrame, cfg: Config) -> Figure:
    sgd = rows[rows.run == "SGD"]
    ex = rows[rows.run != "SGD"]
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    markers = dict(zip(sorted(cfg.lrs), "os^DvP"))
    for ax, metric, ylabel, logy in (
        (axes[0], "test_acc", "test accuracy (fraction correct)", False),
        (axes[1], "grad_norm_sq", "‖∇L‖² on the full training set", True),
        (axes[2], "lambda_max", "λ_max (top Hessian eigenvalue)", True),
    ):
        for i, b in enumerate(sorted(cfg.batch_sizes)):
            g = sgd[sgd.batch_size == b].groupby("lr")[metric]
            m, s = g.mean(), g.std(ddof=0).fillna(0.0)
            x = m.index.to_numpy() / b
            ax.plot(x, m.to_numpy(), "-", color=f"C{i}", lw=1, label=f"SGD, B = {b}")
            for lr, xv, mv, sv in zip(m.index, x, m.to_numpy(), s.to_numpy()):
                ax.errorbar([xv], [mv], yerr=[sv], fmt=markers[lr], color=f"C{i}", ms=5, capsize=2)
        if len(ex):
            v = ex[metric].to_numpy(dtype=float)
            ax.errorbar(
                [cfg.explicit_lr / cfg.explicit_batch], [v.mean()],
                yerr=[v.std()] if len(v) > 1 else None, fmt="*", ms=14, color="C3", capsize=3,
                label=f"B = {cfg.explicit_batch} + explicit regularizer (micro-batches of "
                f"{cfg.explicit_micro_batch})",
            )  # fmt: skip
        for lr, mk in markers.items():
            ax.plot([], [], mk, color="0.4", label=f"h = {lr:g}")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("h/B (learning rate / batch size)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0]} at train loss ≤ {cfg.target_train_loss:g}")
    axes[0].legend(fontsize=7)
    n = "4,000" if cfg.n_train is None else f"{cfg.n_train:,}"
    fig.suptitle(
        f"SGD (no momentum) on MNIST-1D (n = {n}), MLP 40→{cfg.width}→{cfg.width}→10, "
        f"cross-entropy, every run stopped at train loss ≤ {cfg.target_train_loss:g}; mean ± std "
        f"over {cfg.seeds} seed(s)"
    )
    tidy_log_axes(fig)
    return fig


def plan(cfg: Config) -> Plan:
    """Every (h, B) × seed of plain SGD, and the large batch with the explicit regularizer."""
    return Plan(tuple(sweep_configs(cfg)))


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The runs with ``run`` (SGD or with the explicit regularizer), ``test_acc`` and
    ``h_over_B``; ``ok_rows`` those that reached the target training loss (the others,
    ``bad``, are left out of every claim)."""

    rows: pd.DataFrame
    ok_rows: pd.DataFrame
    bad: pd.DataFrame


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    rows = rows.copy()
    if "optimizer" not in rows:  # a stored runs.csv names the run instead
        rows["optimizer"] = np.where(rows.run == "SGD", "sgd", "egr")
    rows["run"] = np.where(rows.optimizer == "egr", "SGD + explicit regularizer", "SGD")
    rows["test_acc"] = 1 - rows["test_error"]
    rows["h_over_B"] = rows["lr"] / rows["batch_size"]
    reached = (rows.status == "complete") & (rows.stop_reason == "target_train_loss")
    return Analysis(rows=rows, ok_rows=rows[reached], bad=rows[~reached])


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Smith et al.'s trends over h/B, and the explicit regularizer at the large batch."""
    out: list[Claim] = []

    def add(statement: str, paper: str, *tests, **kw) -> None:
        out.append(Claim(statement, paper, tuple(tests), **kw))

    ok_rows = a.ok_rows
    sgd = ok_rows[ok_rows.run == "SGD"]
    pairs = sorted({(lr, b) for lr in cfg.lrs for b in cfg.batch_sizes}, key=lambda p: p[0] / p[1])
    ratio = np.array([lr / b for lr, b in pairs])
    for metric, sign, claim in (
        ("test_acc", +1, "at equal training loss, test accuracy rises with h/B"),
        ("grad_norm_sq", -1, "at equal training loss, the full-batch ‖∇L‖² at the stopping iterate falls with h/B"),
        ("lambda_max", -1, "at equal training loss, λ_max falls with h/B (flatter)"),
    ):  # fmt: skip
        piv = sgd.pivot_table(index="seed", columns=["lr", "batch_size"], values=metric)
        ys = np.array([[piv.loc[s].get(p, np.nan) for p in pairs] for s in piv.index])
        ys = ys[np.isfinite(ys).all(axis=1)] if len(ys) else ys  # seeds with every (h, B)
        trend = attempt(trend_test, ratio, sign * ys)
        context = (
            f"per-seed Kendall τ(h/B, {'−' if sign < 0 else ''}{metric}) over {len(pairs)} (h, B) "
            f"pairs, {len(ys)} seeds, every run stopped at train loss ≤ {cfg.target_train_loss:g}"
        )
        if metric == "grad_norm_sq":
            # Smith et al.'s claim is about the mean mini-batch gradient norm along the path of
            # the mean iterate, not the full-batch ‖∇L‖² at one stopping iterate
            add(
                claim, "Smith et al. 2021, Sec. 3–4",
                untested="not a test of the paper: Smith et al.'s implicit term is the mean "
                "mini-batch ‖∇L_k‖² along the mean SGD iterate's path; measured anyway: "
                + trend.sentence(),
                context=context,
            )  # fmt: skip
            continue
        add(
            claim, "Smith et al. 2021, Sec. 3–4", trend, context=context,
            headline=metric == "test_acc",
        )  # fmt: skip
    same_h = sgd[sgd.lr == cfg.explicit_lr]
    small_b = min(b for b in cfg.batch_sizes if b <= cfg.explicit_micro_batch) if any(
        b <= cfg.explicit_micro_batch for b in cfg.batch_sizes) else min(cfg.batch_sizes)  # fmt: skip
    small = same_h[same_h.batch_size == small_b].sort_values("seed")
    large = same_h[same_h.batch_size == cfg.explicit_batch].sort_values("seed")
    ex = ok_rows[ok_rows.run != "SGD"].sort_values("seed")

    def on_common(col: str, *frames: pd.DataFrame) -> list[np.ndarray]:
        """``col`` of each frame on the seeds all of them have, in seed order."""
        seeds = sorted(set.intersection(*(set(f.seed) for f in frames)))
        return [f.set_index("seed").loc[seeds, col].to_numpy(dtype=float) for f in frames]

    if len(ex) and len(small) and len(large):
        e_acc, l_acc, s_acc = on_common("test_acc", ex, large, small)
        share = attempt(paired_ratio, e_acc, l_acc, s_acc, l_acc)
        accs = (
            f"test acc B = {small_b}: {mean_std(small.test_acc.to_numpy())}; B = "
            f"{cfg.explicit_batch}: {mean_std(large.test_acc.to_numpy())}; B = "
            f"{cfg.explicit_batch} + regularizer: {mean_std(ex.test_acc.to_numpy())}"
            + (f"; it closes {share.sentence(percent=True)} of the gap B = {small_b} − B = "
               f"{cfg.explicit_batch} (paired Fieller ratio)" if hasattr(share, "ratio") else "")
        )  # fmt: skip
        add(
            f"at h = {cfg.explicit_lr:g}, B = {cfg.explicit_batch} plus the explicit regularizer "
            f"(micro-batches of {cfg.explicit_micro_batch}) is more accurate than B = "
            f"{cfg.explicit_batch} alone",
            "Smith et al. 2021, Sec. 5",
            attempt(paired_test, e_acc, l_acc),
            context=accs,
        )
        add(
            f"... and recovers the test accuracy of B = {small_b}: within ±"
            f"{100 * RECOVER_MARGIN:g} points (equivalence, TOST)",
            "Smith et al. 2021, Sec. 5",
            attempt(equivalence_test, e_acc, s_acc, margin=RECOVER_MARGIN),
        )
        l_lam, e_lam, s_lam = on_common("lambda_max", large, ex, small)
        lshare = attempt(paired_ratio, l_lam, e_lam, l_lam, s_lam)
        add(
            "the explicit regularizer lowers the sharpness λ_max of the large batch, towards the "
            "small-batch value",
            "Smith et al. 2021 (SGD's implicit term penalizes the minibatch gradients, and "
            "with them the curvature)",
            attempt(paired_test, l_lam, e_lam, log=True),
            context=f"λ_max B = {small_b}: {mean_std(small.lambda_max.to_numpy())}, B = "
            f"{cfg.explicit_batch}: {mean_std(large.lambda_max.to_numpy())}, + regularizer: "
            f"{mean_std(ex.lambda_max.to_numpy())}"
            + (f"; it closes {lshare.sentence(percent=True)} of the gap" if hasattr(lshare, "ratio")
               else "")
            + f"; ‖∇L‖²: {mean_std(small.grad_norm_sq.to_numpy())}, "
            f"{mean_std(large.grad_norm_sq.to_numpy())}, {mean_std(ex.grad_norm_sq.to_numpy())}",
        )  # fmt: skip
    return out


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            sgd_figure(a.ok_rows, cfg),
            "sgd_batch.png",
            "Test accuracy, full-batch ‖∇L‖² and λ_max at equal training loss against h/B; "
            "colour: batch size, marker: learning rate, mean ± std over seeds; red star: the "
            "large batch with the explicit SGD regularizer on small micro-batches.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    rows, ok_rows, bad = a.rows, a.ok_rows, a.bad
    table = []
    for (run_kind, lr, b), g in ok_rows.groupby(["run", "lr", "batch_size"]):
        table.append(
            {
                "run": run_kind,
                "h": lr,
                "B": b,
                "h/B": lr / b,
                "steps": mean_std(g.steps_done.to_numpy(), 3),
                "train loss": mean_std(g.train_loss.to_numpy()),
                "test acc": mean_std(g.test_acc.to_numpy()),
                "‖∇L‖²": mean_std(g.grad_norm_sq.to_numpy()),
                "λ_max": mean_std(g.lambda_max.to_numpy()),
                "tr H": mean_std(g.trace.to_numpy()),
            }
        )
    report.add_table(
        table,
        heading="Per (h, B)",
        caption=(
            f"Each run stopped at the first evaluation (every {cfg.eval_every} steps) with full "
            f"train loss ≤ {cfg.target_train_loss:g}; mean ± std over {cfg.seeds} seed(s). The explicit "
            f"regularizer: `optimizer='egr', batch_size={cfg.explicit_batch}, "
            f"egr_micro_batch={cfg.explicit_micro_batch}, egr_coeff=h/4`."
        ),
    )
    if len(bad):
        report.add_text(
            "\n".join(
                f"- {r.run} h = {r.lr:g}, B = {r.batch_size}, seed {r.seed}: {r.status}, "
                f"{r.stop_reason}, {r.steps_done} steps, train loss {fmt(r.train_loss)}"
                for r in bad.itertuples()
            ),
            heading="Runs that did not reach the target loss (left out)",
        )
    cols = ["run", "lr", "batch_size", "h_over_B", "egr_micro_batch", "seed", "status",
            "stop_reason", "steps_done",
            "train_loss", "test_error", "test_acc", "grad_norm_sq", "lambda_max", "trace",
            "weight_norm"]  # fmt: skip
    report.add_data(rows[[c for c in cols if c in rows]], "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Run sgd-batch at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
