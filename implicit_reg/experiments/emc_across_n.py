"""emc-across-n: the effective model complexity at several n, and where the peak sits.

Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever, *Deep Double Descent*, arXiv
1912.02292 (2019), Def. 1: the effective model complexity of a training procedure T is

    EMC(T) = max{n : E[train error of T on n samples] ≤ ε},

and their hypothesis (Sec. 2) puts the test-error peak of a model-wise sweep where
EMC ≈ n; Sec. 7: at a fixed model, where n crosses EMC more data can hurt.

What is run (:mod:`._emc_plan`): ``double-descent-width``'s MNIST-1D recipe (MLP
40 → w → w → 10, cross-entropy, SGD lr 0.01, momentum 0.9, batch 100, 15% label noise)
at widths w ∈ {21, …, 80} × n ∈ {1,000, …, 8,000} (nested subsets of an 8,000-sample
pool, one 12,000-sample test set), two budgets: 500 epochs at every n, and 20,000 steps
at every n.

How every location is fixed before a test, from training error only (ε = 1%, as
Nakkiran et al.):

- the model-wise threshold at n: the first width whose seed-mean training error at n is
  ≤ ε (EMC(w) ≥ n there first); the peak is tested *at* that width, the rise from the
  smallest width of the window, the fall to the widest (``stats.peak_test(at=, left=0)``);
- EMC(w): the largest n of the grid that width w fits (seed mean ≤ ε); the sample-wise
  rise (more data hurts) is tested from n = EMC(w) to the next n of the grid
  (``stats.paired_test``, paired over seeds: same initialization and minibatch seed,
  nested data), at the widths whose model-wise peak is large (47 and 62, chosen by the
  issue from ``double-descent-width``, not from these runs).

The experiment is a :class:`~implicit_reg.experiments._spec.Spec` run by ``run_spec``:
``plan`` (every run, trained phase by phase by :func:`._emc_plan.train_phases`), a typed
``analyze`` (:class:`EmcAnalysis`, from the store's summaries or a stored ``runs.csv``),
``claims``, ``figures`` and ``extras``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.report.report import Claim, Report, Untested, attempt, markdown_table
from implicit_reg.stats import PeakResult, TestResult, paired_test, peak_test, trend_test

from ._emc_plan import EMC_PLANS, EmcPlan, emc_config, emc_phases, train_phases
from ._spec import Plan, Spec, run_spec

NAME = "emc-across-n"
TITLE = (
    "Effective model complexity across n: the model-wise peak sits where EMC ≈ n, and "
    "more data hurts where n crosses EMC (MNIST-1D, 15% label noise)"
)
PAPER = "Nakkiran et al., *Deep Double Descent*, arXiv 1912.02292, Def. 1, Sec. 2 and Sec. 7"
#: a training error at most this counts as fitting the (noisy) training set (Nakkiran's ε)
EPSILON = 0.01
#: widths at which the sample-wise rise is tested: double-descent-width's large peak (47-62)
SAMPLE_WISE_WIDTHS = (47, 62)
ARMS = ("epochs", "steps")
#: seeds from this one on test a second location rule, declared after seeds 0-2 had shown
#: the highest test error one width below the first fitting width at every n (as in
#: double-descent-width: 47 against 62) and before any of these seeds was trained: the
#: peak sits at the widest width that does *not* fit n. Seeds 0-2 never enter that test.
HOLDOUT_FROM = 3
ARM_LABEL = {"epochs": "fixed epochs", "steps": "fixed steps"}

Result = TestResult | PeakResult | Untested


# --------------------------------------------------------------------------- analysis
@dataclasses.dataclass(frozen=True)
class ModelWise:
    """The model-wise sweep at one n: the threshold read from training error, and the
    peak test at it (or why it could not be made)."""

    arm: str
    n: int
    widths: tuple[int, ...]
    train_error: tuple[float, ...]  # seed means, per width
    test_error: tuple[float, ...]
    fit_width: int | None  # first width with mean train error <= EPSILON (None: none fits)
    seeds: int
    peak: Result
    # the second rule (HOLDOUT_FROM): at the widest width that does not fit n, on the
    # held-out seeds only
    peak_below: Result


@dataclasses.dataclass(frozen=True)
class SampleWise:
    """One width across n: EMC(w) from training error, and the rise of the test error
    from n = EMC(w) to the next n."""

    arm: str
    width: int
    ns: tuple[int, ...]
    train_error: tuple[float, ...]
    test_error: tuple[float, ...]
    emc: int | None  # the largest n fitted (None: not even the smallest)
    n_next: int | None
    seeds: int
    rise: Result


@dataclasses.dataclass(frozen=True)
class ArmAnalysis:
    arm: str
    model_wise: tuple[ModelWise, ...]
    sample_wise: tuple[SampleWise, ...]
    emc: dict[int, int | None]  # width -> EMC(w)
    threshold_trend: Result  # per-seed first-fit width increases with n


@dataclasses.dataclass(frozen=True)
class EmcAnalysis:
    arms: tuple[ArmAnalysis, ...]
    #: the run table analysed: one row per (arm, width, n, seed) (:func:`run_table`)
    runs: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame, compare=False, repr=False)

    def arm(self, name: str) -> ArmAnalysis:
        for a in self.arms:
            if a.arm == name:
                return a
        raise ValueError(f"no arm {name!r}; have {[a.arm for a in self.arms]}")


def _seed_table(rows: pd.DataFrame, index: str, columns: str, metric: str) -> pd.DataFrame:
    """``metric`` as a (seed × columns) table over the seeds complete at every column."""
    t = rows.pivot_table(index=index, columns=columns, values=metric, aggfunc="mean")
    return t.dropna(axis=0, how="any").sort_index(axis=1)


def first_fit(train_means: Sequence[float], eps: float = EPSILON) -> int | None:
    """Index of the first entry <= eps (the first width, or n, that fits), or None."""
    for i, v in enumerate(train_means):
        if v <= eps:
            return i
    return None


def last_fit(train_means: Sequence[float], eps: float = EPSILON) -> int | None:
    """Index of the last entry <= eps (EMC: the largest n fitted), or None."""
    hits = [i for i, v in enumerate(train_means) if v <= eps]
    return hits[-1] if hits else None


def model_wise(arm: str, n: int, rows: pd.DataFrame) -> ModelWise:
    """The peak test at n over widths, placed at the first width that fits n samples."""
    test = _seed_table(rows, "seed", "width", "test_error")
    train = _seed_table(rows, "seed", "width", "train_error")
    widths = tuple(int(w) for w in test.columns)
    train_m = train.mean(axis=0).reindex(test.columns).to_numpy()
    i = first_fit(train_m)
    if len(test) < 2:
        peak: Result = Untested(f"{len(test)} complete seed(s) at n = {n:,}: no variance")
    elif i is None:
        peak = Untested(f"no width up to {widths[-1]} fits n = {n:,} to ≤ {EPSILON:.0%}")
    elif not 1 <= i <= len(widths) - 2:
        where = "the smallest" if i == 0 else "the widest"
        peak = Untested(
            f"the first width fitting n = {n:,} is {where} of the window (w = {widths[i]}), "
            "not an interior point"
        )
    else:
        peak = attempt(peak_test, test.to_numpy(), at=i, left=0)
    return ModelWise(
        arm=arm, n=n, widths=widths, train_error=tuple(float(v) for v in train_m),
        test_error=tuple(float(v) for v in test.mean(axis=0)),
        fit_width=None if i is None else widths[i], seeds=len(test), peak=peak,
        peak_below=below_fit_peak(test, len(widths) if i is None else i, f"n = {n:,}"),
    )  # fmt: skip


def below_fit_peak(test: pd.DataFrame, i: int, where: str) -> Result:
    """``stats.peak_test`` at index ``i − 1`` (the widest width that does not fit: ``i``
    is the first fitting index, or the number of widths when none fits), rise from the
    narrowest, fall to the widest, on the seeds >= :data:`HOLDOUT_FROM` only."""
    held = test[test.index >= HOLDOUT_FROM]
    if len(held) < 2:
        return Untested(
            f"{where}: {len(held)} held-out seed(s) (seeds >= {HOLDOUT_FROM}) finished; the "
            "test needs 2"
        )
    if not 1 <= i - 1 <= test.shape[1] - 2:
        return Untested(f"{where}: the widest width that does not fit is an end of the window")
    return attempt(peak_test, held.to_numpy(), at=i - 1, left=0)


def sample_wise(arm: str, width: int, rows: pd.DataFrame) -> SampleWise:
    """The rise of test error from n = EMC(width) to the next n (more data hurts)."""
    test = _seed_table(rows, "seed", "n_train", "test_error")
    train = _seed_table(rows, "seed", "n_train", "train_error")
    ns = tuple(int(n) for n in test.columns)
    train_m = train.mean(axis=0).reindex(test.columns).to_numpy()
    k = last_fit(train_m)
    emc = None if k is None else ns[k]
    n_next = None if k is None or k + 1 >= len(ns) else ns[k + 1]
    if len(test) < 2:
        rise: Result = Untested(f"{len(test)} complete seed(s) at w = {width}: no variance")
    elif k is None:
        rise = Untested(f"w = {width} fits none of n = {ns[0]:,}…{ns[-1]:,} to ≤ {EPSILON:.0%}")
    elif n_next is None:
        rise = Untested(f"w = {width} fits every n up to {ns[-1]:,}: EMC is beyond the grid")
    else:
        rise = attempt(paired_test, test[n_next].to_numpy(), test[emc].to_numpy())
    return SampleWise(
        arm=arm, width=width, ns=ns, train_error=tuple(float(v) for v in train_m),
        test_error=tuple(float(v) for v in test.mean(axis=0)), emc=emc, n_next=n_next,
        seeds=len(test), rise=rise,
    )  # fmt: skip


def threshold_trend(rows: pd.DataFrame) -> Result:
    """Kendall trend over n of each seed's first fitting width (a seed that fits at no
    width of the window counts as wider than all of them)."""
    ns = sorted(int(n) for n in rows.n_train.unique())
    widths = sorted(int(w) for w in rows.width.unique())
    beyond = 2 * widths[-1]
    per_seed = []
    for _, g in rows.groupby("seed"):
        t = g.pivot_table(index="n_train", columns="width", values="train_error")
        if t.shape != (len(ns), len(widths)) or t.isna().any().any():
            continue
        fits = [
            next((w for w in widths if t.loc[n, w] <= EPSILON), beyond) for n in ns
        ]  # fmt: skip
        per_seed.append(fits)
    if len(ns) < 3:
        return Untested(f"{len(ns)} values of n: a trend needs >= 3")
    return attempt(trend_test, ns, np.log(np.array(per_seed, dtype=float)))


def analyze(
    rows: pd.DataFrame,
    cfg: EmcPlan | None = None,
    *,
    sample_widths: Sequence[int] = SAMPLE_WISE_WIDTHS,
) -> EmcAnalysis:
    """The typed analysis of a run table with columns ``arm``, ``width``, ``n_train``,
    ``seed``, ``train_error``, ``test_error`` and ``status`` (only "complete" rows count):
    a stored ``runs.csv``, or the engine summaries of ``cfg``'s runs, made into that table
    by :func:`run_table`.

    Pure: every location is read from the training error of these rows (see the module
    docstring); every verdict comes from :mod:`implicit_reg.stats`."""
    if "arm" not in rows and "config_hash" in rows:
        if cfg is None:
            raise ValueError("engine summaries need the plan (cfg) to be put into arms")
        rows = run_table(rows, cfg)
    need = {"arm", "width", "n_train", "seed", "train_error", "test_error", "status"}
    missing = sorted(need - set(rows.columns))
    if missing:
        raise ValueError(f"the run table lacks columns {missing}")
    ok = rows[rows.status == "complete"]
    arms = []
    for arm in [a for a in ARMS if a in set(ok.arm)]:
        r = ok[ok.arm == arm]
        mw = tuple(model_wise(arm, int(n), g) for n, g in sorted(r.groupby("n_train")))
        sw = tuple(
            sample_wise(arm, int(w), r[r.width == w]) for w in sample_widths if w in set(r.width)
        )
        emc = {}
        for w, g in r.groupby("width"):
            means = g.groupby("n_train").train_error.mean().sort_index()
            k = last_fit(means.to_numpy())
            emc[int(w)] = None if k is None else int(means.index[k])
        arms.append(ArmAnalysis(arm, mw, sw, emc, threshold_trend(r)))
    if not arms:
        raise ValueError("no complete run in the table")
    return EmcAnalysis(tuple(arms), rows)


# --------------------------------------------------------------------------- claims
def claim(statement: str, paper: str, *tests: Result, **kw) -> Claim:
    """A :class:`~implicit_reg.report.report.Claim` decided by ``tests`` (none: ``untested``
    says why)."""
    return Claim(statement, paper, tuple(tests), **kw)


def claims(a: EmcAnalysis, cfg: EmcPlan | None = None) -> list[Claim]:
    """The claims of the analysis, each decided by its :mod:`implicit_reg.stats` results."""
    out: list[Claim] = []
    for arm in a.arms:
        label = ARM_LABEL[arm.arm]
        headline = arm.arm == "epochs"
        tested = [m for m in arm.model_wise if not isinstance(m.peak, Untested)]
        context = "; ".join(  # the argmax is described, never tested at
            (
                f"n = {m.n:,}: first fit at w = {m.fit_width}"
                if m.fit_width
                else f"n = {m.n:,}: no fit"
            )
            + f", highest mean test error at w = {m.widths[int(np.argmax(m.test_error))]}"
            for m in arm.model_wise
        )
        out.append(
            claim(
                f"{label}: at every n whose threshold lies inside the width window, the test error "
                "peaks at the first width that fits n samples (EMC ≈ n)",
                "Nakkiran et al. 2019, Sec. 2 (the EMC hypothesis)",
                *[m.peak for m in tested],
                untested="" if tested else "no n has its fitting threshold inside the window",
                context=context,
                headline=headline,
                effect=f"emc-peak-{arm.arm}",
            )
        )
        below = [m.peak_below for m in arm.model_wise if not isinstance(m.peak_below, Untested)]
        out.append(claim(
            f"{label}, held-out seeds (>= {HOLDOUT_FROM}): at every n the test error peaks at "
            "the widest width that does not fit n samples (EMC just below n; a rule declared "
            "after seeds 0–2, tested on seeds never used to choose it)",
            "Nakkiran et al. 2019, Sec. 2; double-descent-width (peak at w = 47, fit at 62)",
            *below,
            untested="" if below else "; ".join(
                sorted({m.peak_below.reason.split(": ", 1)[-1] for m in arm.model_wise})
            ),
            effect=f"emc-peak-below-{arm.arm}",
        ))  # fmt: skip
        for m in arm.model_wise:
            out.append(
                claim(
                    f"{label}, n = {m.n:,}: the test error peaks at the first width fitting n",
                    "Nakkiran et al. 2019, Sec. 2",
                    *([m.peak] if not isinstance(m.peak, Untested) else []),
                    untested=m.peak.reason if isinstance(m.peak, Untested) else "",
                    context=(
                        f"placed at w = {m.fit_width}, rise from w = {m.widths[0]}, fall to "
                        f"w = {m.widths[-1]}; {m.seeds} seeds"
                        if m.fit_width
                        else ""
                    ),
                    effect=f"emc-peak-{arm.arm}-{m.n}",
                )
            )
        out.append(claim(
            f"{label}: the interpolation threshold moves to wider models as n grows",
            "Nakkiran et al. 2019, Def. 1",
            *([arm.threshold_trend] if not isinstance(arm.threshold_trend, Untested) else []),
            untested=getattr(arm.threshold_trend, "reason", ""),
            context="EMC(w) = " + ", ".join(
                f"{w}: {'< ' + str(min(m.n for m in arm.model_wise)) if e is None else f'{e:,}'}"
                for w, e in arm.emc.items()
            ),
        ))  # fmt: skip
        for s in arm.sample_wise:
            out.append(
                claim(
                    f"{label}, w = {s.width}: more data hurts: the test error rises from n = EMC(w) "
                    "to the next n",
                    "Nakkiran et al. 2019, Sec. 7, Fig. 11–12",
                    *([s.rise] if not isinstance(s.rise, Untested) else []),
                    untested=s.rise.reason if isinstance(s.rise, Untested) else "",
                    context=(
                        f"EMC({s.width}) = {s.emc:,}, next n = {s.n_next:,}; mean test error "
                        + ", ".join(f"{n:,}: {100 * e:.1f}%" for n, e in zip(s.ns, s.test_error))
                        if s.emc and s.n_next
                        else ""
                    ),
                    headline=False,
                    effect=f"more-data-hurts-{arm.arm}-{s.width}",
                )
            )
    return out


# --------------------------------------------------------------------------- runs
def plan(cfg: EmcPlan) -> Plan:
    """Every run of the plan, in its own store, trained phase by phase (:func:`emc_phases`:
    the epoch arm first, the held-out seeds after the first ones) by ``_emc_plan``'s
    one-job-per-group backend (:func:`~._emc_plan.train_phases`)."""
    phases = emc_phases(cfg)
    return Plan(
        runs=tuple(c for _, cs in phases for c in cs),
        train=functools.partial(train_phases, phases, pack=False),
    )


def run_table(summaries: pd.DataFrame, plan: EmcPlan) -> pd.DataFrame:
    """The run table of the plan's runs among the engine ``summaries`` (one row per run,
    ``config_hash``): one row per (arm, width, n, seed); a run shared by both arms appears
    in both."""
    by_hash = summaries.set_index("config_hash") if len(summaries) else summaries
    rows = []
    arms = ARMS if plan.steps is not None else ARMS[:1]
    for arm in arms:
        for n in plan.n_trains:
            for w in plan.widths:
                for s in range(plan.seeds + plan.extra_seeds):
                    h = emc_config(plan, w, n, s, arm).config_hash()
                    if len(by_hash) and h in by_hash.index:
                        r = by_hash.loc[h]
                        rows.append({
                            "arm": arm, "width": w, "n_train": n, "seed": s,
                            "n_params": r.get("n_params", math.nan), "status": r["status"],
                            "steps_done": r.get("steps_done", math.nan),
                            "train_error": r["train_error"], "test_error": r["test_error"],
                            "train_loss": r["train_loss"], "test_loss": r["test_loss"],
                            "wall_time_s": r.get("wall_time_s", math.nan), "config_hash": h,
                        })  # fmt: skip
    if not rows:
        raise ValueError(f"no finished run of {NAME} among the {len(summaries)} summaries")
    return pd.DataFrame(rows)


def figure(a: EmcAnalysis) -> Figure:
    arms = [x.arm for x in a.arms]
    fig = Figure(figsize=(12, 4.2 * len(arms)), layout="constrained")
    axes = fig.subplots(len(arms), 2, squeeze=False)
    ok = a.runs[a.runs.status == "complete"]
    for row, arm in zip(axes, a.arms):
        r = ok[ok.arm == arm.arm]
        ns = sorted(r.n_train.unique())
        colors = {n: f"C{i}" for i, n in enumerate(ns)}
        for m in arm.model_wise:
            row[0].plot(m.widths, m.test_error, "o-", color=colors[m.n], label=f"n = {m.n:,}")
            if m.fit_width:
                j = m.widths.index(m.fit_width)
                row[0].plot([m.fit_width], [m.test_error[j]], "k*", ms=12)
        row[0].set_xscale("log")
        row[0].set_xlabel("width w")
        row[0].set_ylabel("test error (seed mean)")
        row[0].set_title(
            f"{ARM_LABEL[arm.arm]}: test error over width; ★ first width with train error ≤ 1%",
            fontsize=9,
        )
        row[0].legend(fontsize=7)
        for j, (w, g) in enumerate(r.groupby("width")):
            m = g.groupby("n_train").test_error.mean().sort_index()
            row[1].plot(m.index, m.values, "o-", color=f"C{j}", label=f"w = {w}")
            e = arm.emc.get(int(w))
            if e is not None:
                row[1].plot([e], [m.loc[e]], "k*", ms=12)
        row[1].set_xscale("log")
        row[1].set_xlabel("training samples n")
        row[1].set_ylabel("test error (seed mean)")
        row[1].set_title(
            f"{ARM_LABEL[arm.arm]}: test error over n; ★ EMC(w), the largest n fitted to ≤ 1%",
            fontsize=9,
        )
        row[1].legend(fontsize=7)
    fig.suptitle("MNIST-1D, MLP 40→w→w→10, 15% label noise, SGD lr 0.01, momentum 0.9, batch 100")
    return fig


def grid_table(rows: pd.DataFrame, arm: str, metric: str) -> str:
    r = rows[(rows.status == "complete") & (rows.arm == arm)]
    t = r.pivot_table(index="width", columns="n_train", values=metric, aggfunc="mean")
    out = [
        {"width": int(w), **{f"n = {int(n):,}": f"{100 * v:.1f}%" for n, v in t.loc[w].items()}}
        for w in t.index
    ]
    return markdown_table(out)


def figures(a: EmcAnalysis, cfg: EmcPlan) -> list[tuple[Figure, str, str]]:
    return [(
        figure(a), "emc_across_n.png",
        "Left: test error over width at each n (★: the first width whose training error is ≤ 1%, "
        "where EMC = n). Right: test error over n at each width (★: EMC(w)). Seed means.",
    )]  # fmt: skip


def extras(report: Report, a: EmcAnalysis, cfg: EmcPlan) -> None:
    """The width × n tables of each arm, the design, ``runs.csv``."""
    for arm in a.arms:
        report.add_text(
            "Mean training error (noisy labels):\n\n" + grid_table(a.runs, arm.arm, "train_error")
            + "\n\nMean test error:\n\n" + grid_table(a.runs, arm.arm, "test_error"),
            heading=f"{ARM_LABEL[arm.arm]}: width × n",
        )  # fmt: skip
    report.add_text(
        f"Widths {list(cfg.widths)} × n {[f'{n:,}' for n in cfg.n_trains]} × {cfg.seeds} "
        f"seeds (then {cfg.extra_seeds} more), {cfg.label_noise:.0%} label noise (a fixed "
        f"draw per n), `{cfg.dataset}`: nested subsets of an 8,000-sample MNIST-1D pool, one "
        "set of 12,000 test samples for every n. Budgets: "
        f"{cfg.epochs} epochs at every n (steps = {cfg.epochs}·n/{cfg.batch_size}), and "
        f"{cfg.steps:,} steps at every n (the same run as the epoch arm at n = "
        f"{cfg.steps * cfg.batch_size // cfg.epochs:,}). {cfg.evals} evaluations per run, no "
        "probes. The runs of one n train as one ensemble (`implicit_reg.engine.train.train_runs`,"
        " widths padded to the widest), checkpointed every "
        f"{cfg.checkpoint_every} steps.",
        heading="Design",
    )
    report.add_data(a.runs, "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, EMC_PLANS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Train what the store lacks (unless ``IMPLICIT_REG_STORE_ONLY=1``), then report."""
    return run_spec(SPEC, scale, out)
