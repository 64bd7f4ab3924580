"""label-noise-dose: does the model-wise peak grow with the label noise, and does it sit
where the training set is first fitted?

Nakkiran et al., *Deep Double Descent*, arXiv 1912.02292 (2019), Sec. 5 and Fig. 4/7:
label noise makes the test-error peak at the interpolation threshold stronger and moves
it (a noisier training set takes a larger model to fit). Here as a dose–response:
``double-descent-width``'s MNIST-1D ``small`` training (MLP 40 → w → w → 10, n = 4,000,
SGD lr 0.01, momentum 0.9, batch 100, 500 epochs, 12,000 test samples) at widths 13–136
and label noise p ∈ {0, 5, 10, 15, 20, 30}% (:mod:`._emc_plan`). The 0% and 15% levels
are ``double-descent-width``'s own runs (its committed ``runs.csv``) until this
experiment's store holds them.

Every location is fixed from training error before a test (ε = 1%):

- the threshold w_fit(p): the first width whose seed-mean training error (noisy labels)
  is ≤ ε; the peak at p is tested there (``stats.peak_test(at=w_fit, left=0)``: rise
  from the narrowest width, fall to the widest);
- the peak height of seed s at p: h_s(p) = min(e_s(w_fit) − e_s(w_first),
  e_s(w_fit) − e_s(w_last)) with e the test error: the smaller of the rise and the fall,
  the amount by which the threshold stands above *both* ends (negative: no peak);
- the dose–response: each seed's least-squares slope of h_s(p) over p, and the mean
  slope with its t interval over seeds (``stats.paired_test`` on the per-seed slopes;
  ``stats.trend_test`` for the monotone trend).

The location of each seed's highest test error (its argmax over widths, measured, not
tested at) is compared with w_fit: ``stats.trend_test`` over the noisy levels and a TOST
of the mean log ratio argmax/w_fit within ×/÷1.5 (about one and a half grid steps).

The experiment is a :class:`~implicit_reg.experiments._spec.Spec` run by ``run_spec``:
``plan`` (every run, trained phase by phase by :func:`._emc_plan.train_phases`), a typed
``analyze`` (:class:`DoseAnalysis`, from the store's summaries or a stored ``runs.csv``),
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
from implicit_reg.stats import (
    PeakResult,
    TestResult,
    equivalence_test,
    paired_test,
    peak_test,
    trend_test,
)

from ._emc_plan import DOSE_PLANS, DosePlan, dose_config, dose_phases, train_phases
from ._spec import Plan, Spec, run_spec
from .emc_across_n import HOLDOUT_FROM, below_fit_peak, claim

NAME = "label-noise-dose"
TITLE = (
    "Label-noise dose–response: the model-wise peak grows with the noise and sits where the "
    "training set is first fitted (MNIST-1D)"
)
PAPER = "Nakkiran et al., *Deep Double Descent*, arXiv 1912.02292, Sec. 5, Fig. 4 and 7"
EPSILON = 0.01  # a training error at most this fits the (noisy) training set
#: the location claims' equivalence margin: argmax within ×/÷1.5 of w_fit
LOCATION_MARGIN = math.log(1.5)
# HOLDOUT_FROM (emc-across-n's, one rule for both): seeds from it test a second location
# rule, declared after seeds 0-2 of 0%, 15% and 30% had shown the highest test error one
# width below the first fitting width (47 against 62) and before any of these seeds was
# trained: the peak sits at the widest width that does *not* fit. Seeds 0-2 never enter it.
#: the committed per-run table of double-descent-width (0% and 15% noise)
DDW_RUNS = Path(__file__).resolve().parents[2] / "docs/results/double-descent-width/runs.csv"
DDW_SETTINGS = {0.0: "MNIST-1D, cross-entropy, clean labels", 0.15: "MNIST-1D, cross-entropy"}

Result = TestResult | PeakResult | Untested


@dataclasses.dataclass(frozen=True)
class NoiseLevel:
    """One noise level's width sweep: threshold, peak test, per-seed heights and argmaxes."""

    noise: float
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    train_error: tuple[float, ...]  # seed means per width
    test_error: tuple[float, ...]
    fit_width: int | None
    peak: Result
    height: tuple[float, ...] | None  # h_s per seed (None: no threshold inside the window)
    argmax_width: tuple[int, ...]  # per seed
    seed_fit_width: tuple[int | None, ...]  # each seed's own first fitting width
    source: str
    peak_below: Result  # HOLDOUT_FROM: at the widest non-fitting width, held-out seeds only


@dataclasses.dataclass(frozen=True)
class DoseAnalysis:
    levels: tuple[NoiseLevel, ...]
    slope: Result  # mean per-seed slope of h over p (test-error fraction per unit noise)
    slopes: tuple[float, ...]  # per seed
    height_trend: Result
    fit_trend: Result  # w_fit moves to wider models with noise (noisy levels)
    peak_trend: Result  # the argmax moves with the noise (noisy levels)
    location: Result  # TOST: mean log(argmax / w_fit) within ±LOCATION_MARGIN
    partial: tuple[float, ...] = ()  # noise levels left out: not every width finished
    # the slope over the noisy levels only (p > 0): added after 15% and 30% were seen
    noisy_slope: Result = Untested("not computed")
    #: the run table analysed (:func:`run_table`): one row per (noise, width, seed)
    runs: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame, compare=False, repr=False)


def _table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    t = rows.pivot_table(index="seed", columns="width", values=metric, aggfunc="mean")
    return t.dropna(axis=0, how="any").sort_index(axis=1)


def first_fit(train_means: Sequence[float], eps: float = EPSILON) -> int | None:
    """Index of the first width whose mean training error is <= eps, or None."""
    return next((i for i, v in enumerate(train_means) if v <= eps), None)


def noise_level(noise: float, rows: pd.DataFrame) -> NoiseLevel:
    test, train = _table(rows, "test_error"), _table(rows, "train_error")
    seeds = [s for s in test.index if s in train.index]
    test, train = test.loc[seeds], train.loc[seeds]
    widths = tuple(int(w) for w in test.columns)
    train_m = train.mean(axis=0).to_numpy()
    i = first_fit(train_m)
    e = test.to_numpy()
    if len(seeds) < 2:
        peak: Result = Untested(f"{len(seeds)} complete seed(s) at {noise:.0%} noise")
    elif i is None:
        peak = Untested(f"no width up to {widths[-1]} fits the {noise:.0%}-noise training set")
    elif not 1 <= i <= len(widths) - 2:
        peak = Untested(f"the first fitting width w = {widths[i]} is an end of the window")
    else:
        peak = attempt(peak_test, e, at=i, left=0)
    height = None
    if i is not None and 1 <= i <= len(widths) - 2:
        height = tuple(float(v) for v in np.minimum(e[:, i] - e[:, 0], e[:, i] - e[:, -1]))
    return NoiseLevel(
        noise=float(noise), widths=widths, seeds=tuple(int(s) for s in seeds),
        train_error=tuple(float(v) for v in train_m),
        test_error=tuple(float(v) for v in e.mean(axis=0)),
        fit_width=None if i is None else widths[i], peak=peak, height=height,
        argmax_width=tuple(widths[j] for j in e.argmax(axis=1)),
        seed_fit_width=tuple(
            None if (j := first_fit(row)) is None else widths[j] for row in train.to_numpy()
        ),
        source=str(rows["source"].iloc[0]) if "source" in rows else "",
        peak_below=below_fit_peak(test, len(widths) if i is None else i, f"{noise:.0%} noise"),
    )  # fmt: skip


def per_seed_slopes(noises: Sequence[float], heights: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``heights[seed, level]`` over ``noises``."""
    x = np.asarray(noises, dtype=float)
    xc = x - x.mean()
    return (heights - heights.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)


def analyze(rows: pd.DataFrame, cfg: DosePlan | None = None) -> DoseAnalysis:
    """The typed analysis of a run table with columns ``label_noise``, ``width``,
    ``seed``, ``train_error``, ``test_error``, ``status`` (only "complete" rows count):
    a stored ``runs.csv``, or the engine summaries of ``cfg``'s runs (with
    ``config_hash``), made into that table by :func:`run_table`."""
    if "config_hash" in rows and "source" not in rows:
        if cfg is None:
            raise ValueError("engine summaries need the plan (cfg) to be read by config hash")
        rows = run_table(rows, cfg)
    table = rows
    need = {"label_noise", "width", "seed", "train_error", "test_error", "status"}
    missing = sorted(need - set(rows.columns))
    if missing:
        raise ValueError(f"the run table lacks columns {missing}")
    ok = rows[rows.status == "complete"].copy()
    if not len(ok):
        raise ValueError("no complete run in the table")
    ok["label_noise"] = ok.label_noise.round(6)
    # one window for every level (the rise from the narrowest and the fall to the widest
    # width compare the same models at every noise): a level that lacks a width of the
    # window (a sweep still running) is left out whole, and listed in ``partial``
    window = set(ok.width)
    held = {p: set(g.width) for p, g in ok.groupby("label_noise")}
    partial = tuple(sorted(float(p) for p, ws in held.items() if ws != window))
    ok = ok[~ok.label_noise.isin(partial)]
    levels = tuple(noise_level(p, g) for p, g in sorted(ok.groupby("label_noise")))
    with_h = [lv for lv in levels if lv.height is not None]
    common = sorted(set.intersection(*(set(lv.seeds) for lv in with_h))) if with_h else []
    if len(with_h) >= 2 and len(common) >= 2:
        h = np.array([[lv.height[lv.seeds.index(s)] for lv in with_h] for s in common])
        ps = [lv.noise for lv in with_h]
        slopes = per_seed_slopes(ps, h)
        slope: Result = attempt(paired_test, slopes)
        height_trend: Result = (
            attempt(trend_test, ps, h)
            if len(ps) >= 3
            else Untested(f"{len(ps)} noise levels with a threshold inside the window")
        )
    else:
        slopes = np.array([])
        reason = (
            f"{len(with_h)} noise level(s) with a threshold inside the window and "
            f"{len(common)} seed(s) common to them"
        )
        slope = height_trend = Untested(reason)
    noisy_h = [lv for lv in with_h if lv.noise > 0]
    if len(noisy_h) >= 2 and len(common) >= 2:
        hn = np.array([[lv.height[lv.seeds.index(s)] for lv in noisy_h] for s in common])
        noisy_slope: Result = attempt(
            paired_test, per_seed_slopes([lv.noise for lv in noisy_h], hn)
        )
    else:
        noisy_slope = Untested(f"{len(noisy_h)} noisy level(s) with a threshold in the window")
    noisy = [lv for lv in levels if lv.noise > 0 and lv.fit_width is not None]
    seeds = sorted(set.intersection(*(set(lv.seeds) for lv in noisy))) if noisy else []
    if len(noisy) >= 3 and len(seeds) >= 2:
        ps = [lv.noise for lv in noisy]
        fit = np.log([[lv.fit_width for lv in noisy] for _ in seeds])  # pre-declared w_fit(p)
        arg = np.log([[lv.argmax_width[lv.seeds.index(s)] for lv in noisy] for s in seeds])
        fit_trend = _fit_trend(ps, noisy, seeds)
        peak_trend = attempt(trend_test, ps, arg)
        location = attempt(
            equivalence_test, (arg - fit).mean(axis=1), margin=LOCATION_MARGIN, log=False
        )
    else:
        why = f"{len(noisy)} noisy level(s) with a fitting width and {len(seeds)} common seed(s)"
        fit_trend = peak_trend = location = Untested(why)
    return DoseAnalysis(
        levels=levels, slope=slope, slopes=tuple(float(v) for v in slopes),
        height_trend=height_trend, fit_trend=fit_trend, peak_trend=peak_trend,
        location=location, partial=partial, noisy_slope=noisy_slope, runs=table,
    )  # fmt: skip


def _fit_trend(ps: list[float], noisy: list[NoiseLevel], seeds: list[int]) -> Result:
    """Kendall trend over the noise of each seed's own first fitting width (from its
    training error; a seed that fits at no width counts as twice the widest)."""
    per_seed = [
        [
            lv.seed_fit_width[lv.seeds.index(s)] or 2 * lv.widths[-1]
            for lv in noisy
        ]
        for s in seeds
    ]  # fmt: skip
    return attempt(trend_test, ps, np.log(np.array(per_seed, dtype=float)))


# --------------------------------------------------------------------------- claims
def _claim(statement: str, paper: str, r: Result, **kw) -> Claim:
    """A claim decided by the one result ``r``, or not tested with its reason."""
    if isinstance(r, Untested):
        return claim(statement, paper, untested=r.reason, **kw)
    return claim(statement, paper, r, **kw)


def claims(a: DoseAnalysis, cfg: DosePlan | None = None) -> list[Claim]:
    """The claims of the analysis, each decided by its :mod:`implicit_reg.stats` results."""
    paper = "Nakkiran et al. 2019, Sec. 5, Fig. 4 and 7"
    heights = "; ".join(
        f"{lv.noise:.0%}: " + (
            f"w_fit = {lv.fit_width}, h = " + ", ".join(f"{100 * v:+.1f}" for v in lv.height)
            if lv.height is not None else f"w_fit = {lv.fit_width} (no interior threshold)"
        )
        for lv in a.levels
    )  # fmt: skip
    slopes = ", ".join(f"{10 * v:+.2f}" for v in a.slopes)
    if a.partial:
        heights += "; left out, not every width finished: " + ", ".join(
            f"{p:.0%}" for p in a.partial
        )
    out = [
        _claim(
            "the peak grows with the label noise: the per-seed slope of the peak height h over "
            "the noise p is positive (h in test-error fraction per unit p; ×10: points per 10% "
            "noise)",
            paper,
            a.slope,
            context=f"per-seed slopes ×10 (points of height per 10 points of noise): {slopes}; "
            f"heights in points per seed: {heights}"
            if a.slopes
            else heights,
            headline=True,
            effect="dose-slope",
        ),
        _claim(
            "the peak keeps growing among the noisy levels (p > 0): the per-seed slope of h over "
            "p is positive without the clean level (a claim added after the 15% and 30% heights "
            "were seen to agree; the slope above may come from the clean→noisy step alone)",
            paper,
            a.noisy_slope,
            effect="dose-slope-noisy",
        ),
        _claim(
            "the peak height increases monotonically with the noise (Kendall τ per seed)",
            paper,
            a.height_trend,
            effect="dose-trend",
        ),
    ]
    for lv in a.levels:
        out.append(_claim(
            f"{lv.noise:.0%} noise: the test error peaks at the first width that fits the "
            "training set",
            paper,
            lv.peak,
            context=(f"placed at w = {lv.fit_width}; mean test error at w = {lv.widths[0]}, "
                     f"{lv.fit_width}, {lv.widths[-1]}: "
                     + ", ".join(f"{100 * lv.test_error[lv.widths.index(w)]:.1f}%"
                                 for w in (lv.widths[0], lv.fit_width, lv.widths[-1]))
                     + f"; runs: {lv.source}")
            if lv.fit_width else f"runs: {lv.source}",
            effect=f"peak-{lv.noise:g}",
        ))  # fmt: skip
    below = [lv.peak_below for lv in a.levels if not isinstance(lv.peak_below, Untested)]
    out.append(claim(
        f"held-out seeds (>= {HOLDOUT_FROM}): at every noise level the test error peaks at the "
        "widest width that does not fit the training set (a rule declared after seeds 0–2, "
        "tested on seeds never used to choose it)",
        paper,
        *below,
        untested="" if below else "; ".join(
            sorted({lv.peak_below.reason.split(": ", 1)[-1] for lv in a.levels})
        ),
        effect="peak-below",
    ))  # fmt: skip
    noisy = [lv for lv in a.levels if lv.noise > 0]
    where = "; ".join(
        f"{lv.noise:.0%}: w_fit = {lv.fit_width}, per-seed fits "
        f"{[w for w in lv.seed_fit_width]}, argmax {list(lv.argmax_width)}"
        for lv in noisy
    )
    out += [
        _claim(
            "the fitting threshold moves to wider models as the noise grows (each seed's "
            "first width with train error ≤ 1%, noisy levels)",
            paper,
            a.fit_trend,
            context=where,
        ),
        _claim(
            "the test-error peak (each seed's argmax over widths) moves to wider models "
            "as the noise grows",
            paper,
            a.peak_trend,
        ),
        _claim(
            "the peak's location tracks the fitting threshold: mean log(argmax / w_fit) over the "
            "noisy levels within ±log 1.5 (TOST)",
            paper,
            a.location,
        ),
    ]
    return out


# --------------------------------------------------------------------------- runs
_COLUMNS = ["label_noise", "width", "seed", "status", "train_error", "test_error",
            "train_loss", "test_loss", "n_params", "source"]  # fmt: skip


def plan(cfg: DosePlan) -> Plan:
    """Every run of the plan, in its own store, trained phase by phase (:func:`dose_phases`:
    the new noise levels first, 0% and 15% last) in ``_emc_plan``'s width packs
    (:func:`~._emc_plan.train_phases` with ``pack=True``)."""
    phases = dose_phases(cfg)
    return Plan(
        runs=tuple(c for _, cs in phases for c in cs),
        train=functools.partial(train_phases, phases, pack=True),
    )


def run_table(
    summaries: pd.DataFrame, plan: DosePlan, ddw_runs: Path | None = DDW_RUNS
) -> pd.DataFrame:
    """The run table: this sweep's runs among the engine ``summaries`` (by config hash);
    at the noise levels of ``plan.reused_noises`` where they lack a complete width × seed
    grid, the rows of ``double-descent-width``'s committed ``runs.csv`` (same recipe; its
    probes and dense evaluations leave the training unchanged) at the plan's widths and
    seeds."""
    table = summaries.set_index("config_hash") if len(summaries) else pd.DataFrame()
    seeds = range(plan.seeds + plan.extra_seeds)
    rows = []
    for p in plan.noises:
        for w in plan.widths:
            for s in seeds:
                h = dose_config(plan, w, p, s).config_hash()
                if len(table) and h in table.index:
                    r = table.loc[h]
                    rows.append({"label_noise": p, "width": w, "seed": s, "status": r["status"],
                                 "train_error": r["train_error"], "test_error": r["test_error"],
                                 "train_loss": r["train_loss"], "test_loss": r["test_loss"],
                                 "n_params": r.get("n_params", math.nan),
                                 "wall_time_s": r.get("wall_time_s", math.nan),
                                 "source": "this sweep"})  # fmt: skip
    out = pd.DataFrame(rows, columns=[*_COLUMNS, "wall_time_s"])
    if not plan.reused_noises or ddw_runs is None or not Path(ddw_runs).is_file():
        return _nonempty(out)
    ddw = pd.read_csv(ddw_runs)
    for p in plan.reused_noises:
        own = out[(out.label_noise == p) & (out.status == "complete")]
        if len(own) >= len(plan.widths) * plan.seeds:
            continue
        r = ddw[(ddw.setting == DDW_SETTINGS.get(p)) & np.isclose(ddw.label_noise, p)
                & ddw.width.isin(plan.widths) & ddw.seed.isin(list(seeds))].copy()  # fmt: skip
        r["source"] = "double-descent-width runs.csv"
        out = pd.concat([out[out.label_noise != p], r.reindex(columns=out.columns)])
    return _nonempty(out.reset_index(drop=True))


def _nonempty(table: pd.DataFrame) -> pd.DataFrame:
    if not len(table):
        raise ValueError(f"no finished run of {NAME} in the store")
    return table


def figure(a: DoseAnalysis) -> Figure:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    for j, lv in enumerate(a.levels):
        c = f"C{j}"
        ax.plot(lv.widths, lv.test_error, "o-", color=c, label=f"{lv.noise:.0%} noise")
        ax.plot(lv.widths, lv.train_error, ":", color=c, alpha=0.6)
        if lv.fit_width:
            ax.plot([lv.fit_width], [lv.test_error[lv.widths.index(lv.fit_width)]], "k*", ms=12)
        if lv.height is not None:
            bx.plot([100 * lv.noise] * len(lv.height), [100 * v for v in lv.height], "o", color=c)
    ax.set_xscale("log")
    ax.set_xlabel("width w")
    ax.set_ylabel("error (seed mean); dotted: train error on the noisy labels")
    ax.set_title("test error over width; ★ first width with train error ≤ 1%", fontsize=9)
    ax.legend(fontsize=7)
    bx.axhline(0, color="0.5", lw=0.8)
    bx.set_xlabel("label noise (%)")
    bx.set_ylabel("peak height h (points): min(rise, fall) at w_fit")
    bx.set_title("peak height per seed against the noise", fontsize=9)
    fig.suptitle("MNIST-1D, MLP 40→w→w→10, n = 4,000, SGD lr 0.01, momentum 0.9, batch 100, "
                 "500 epochs")  # fmt: skip
    return fig


def figures(a: DoseAnalysis, cfg: DosePlan) -> list[tuple[Figure, str, str]]:
    return [(
        figure(a), "label_noise_dose.png",
        "Left: test error (solid) and train error on the noisy labels (dotted) over width at "
        "each noise level, seed means; ★ the first width with train error ≤ 1%. Right: the "
        "peak height h of each seed (the smaller of the rise from the narrowest and the fall "
        "to the widest width, at w_fit) against the noise.",
    )]  # fmt: skip


def extras(report: Report, a: DoseAnalysis, cfg: DosePlan) -> None:
    """The width × noise table, the design and where each level's runs come from, ``runs.csv``."""
    rows = a.runs
    t = rows[rows.status == "complete"].pivot_table(
        index="width", columns="label_noise", values="test_error", aggfunc="mean"
    )
    tr = rows[rows.status == "complete"].pivot_table(
        index="width", columns="label_noise", values="train_error", aggfunc="mean"
    )
    report.add_text(
        markdown_table([
            {"width": int(w), **{f"{p:.0%}": f"{100 * t.loc[w, p]:.1f}% ({100 * tr.loc[w, p]:.1f}%)"
                                 for p in t.columns}}
            for w in t.index
        ]),
        heading="Test error (train error) per width and noise, seed means",
    )  # fmt: skip
    own = rows[rows.source == "this sweep"]
    planned = len({c.config_hash() for _, cs in dose_phases(cfg) for c in cs})
    borrowed = int((rows.source != "this sweep").sum())
    reuse = (
        "Its run store is not on this machine, so its 0% and 15% runs are read from its "
        "committed `runs.csv` (final metrics, seeds 0–2) until this sweep trains those levels "
        "itself (the last phases of the plan); the `source` column of `runs.csv` says which "
        "rows came from where. "
        if borrowed
        else "This sweep trained every level itself, 0% and 15% included (the last phases of "
        "the plan), so no row is read from that experiment's `runs.csv`. "
    )
    report.add_text(
        f"Widths {list(cfg.widths)} × label noise {[f'{p:.0%}' for p in cfg.noises]} × "
        f"{cfg.seeds} seeds (then {cfg.extra_seeds} more), `{cfg.dataset}` n = "
        f"{cfg.n_train:,}, {cfg.epochs} epochs, evaluated every {cfg.eval_every} steps, no "
        "probes. At widths 16, 21, 36, 80 and 104 these configs are double-descent-width's "
        "`small` configs hash for hash; at 13, 28, 62 and 136 that experiment also ran the "
        "Hessian probes at the end and at 47 evaluated every 40 steps, neither of which "
        f"changes the training. {reuse}{len(own)} of {planned} planned runs of this sweep "
        f"finished; {borrowed} rows read from double-descent-width's runs.csv.",
        heading="Design and reuse",
    )
    report.add_data(rows, "runs.csv")


SPEC = Spec(NAME, TITLE, PAPER, DOSE_PLANS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Train what the store lacks (unless ``IMPLICIT_REG_STORE_ONLY=1``), then report."""
    return run_spec(SPEC, scale, out)
