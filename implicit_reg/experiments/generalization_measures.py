"""generalization-measures: which measure of "simplicity" tracks the generalization gap here?

Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic Generalization
Measures and Where to Find Them", ICLR 2020 (arXiv 1912.02178): rank
candidate measures by Kendall's τ between the measure and the
generalization gap over many trained models, and by the granulated Ψ (the
mean over hyperparameter axes of the τ within groups that differ in that
axis only), so that a measure is not credited for a correlation that one
hyperparameter drives in both. Keskar et al. (2017) proposed sharpness,
Barrett & Dherin (2021) the gradient norm, Dherin et al. (2022) geometric
complexity, Nagarajan & Kolter (2019) the distance from initialization.

What is run: nothing new. The measures are those logged at the end of the
runs of ``lr-sweep`` (full-batch GD over step sizes, stopped at equal
training loss; GD runs only) and ``double-descent-width`` (SGD over widths
with 15% label noise, MNIST-1D and MNIST settings): the plan borrows both
experiments' run stores (``Plan(borrows="lr-sweep", also=(Plan(...,
borrows="double-descent-width"),))``), where missing runs are trained; a
store-only report with no store reads the per-run table of that experiment's
report instead. The experiment is a :class:`~implicit_reg.experiments._spec.Spec`
run by ``run_spec``. The gap
is test error − train error (train error on the labels trained on, noisy
ones included). τ and Ψ come from :func:`implicit_reg.report.results.kendall_ranking`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from implicit_reg.report.plots import label
from implicit_reg.report.report import Claim, Report, attempt
from implicit_reg.report.results import kendall_ranking
from implicit_reg.stats import paired_test

from . import double_descent_width as ddw
from . import lr_sweep
from ._spec import Plan, Spec, run_spec
from ._sweeps import tidy_log_axes

NAME = "generalization-measures"
TITLE = "Which measure of simplicity tracks generalization? Kendall τ of flatness, norm and complexity measures with the generalization gap"
PAPER = (
    "Jiang et al., *Fantastic Generalization Measures and Where to Find Them*, ICLR 2020 "
    "(arXiv 1912.02178), Kendall τ and the granulated Ψ; the measures of Keskar et al. 2017, "
    "Barrett & Dherin 2021, Dherin et al. 2022"
)
MEASURES = (
    "lambda_max", "trace", "eps_sharpness", "grad_norm_sq", "weight_norm", "dist_from_init",
    "geometric_complexity",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    lr_sweep: lr_sweep.Config
    double_descent_width: ddw.Config


CONFIGS = {
    scale: Config(lr_sweep=lr_sweep.CONFIGS[scale], double_descent_width=ddw.CONFIGS[scale])
    for scale in ("smoke", "small", "full")
}


def plan(cfg: Config) -> Plan:
    """Nothing new: lr-sweep's runs (its store), then double-descent-width's (its store)."""
    dcfg = cfg.double_descent_width
    keys = [k for k in dcfg.keys() if k != "mnist" or ddw.mnist_available() is None]
    widths = tuple(c for k in keys for c in ddw.setting_configs(dcfg, k))
    return Plan(
        tuple(lr_sweep.sweep_configs(cfg.lr_sweep)),
        borrows=lr_sweep.NAME,
        also=(Plan(widths, borrows=ddw.NAME),),
    )


def with_gap(rows: pd.DataFrame) -> pd.DataFrame:
    """``gen_gap`` = test − train error where the summaries did not derive it (a stored
    per-run table); NaN where the table has no train error."""
    gap = rows.test_error - rows.train_error if "train_error" in rows else np.nan
    return rows.assign(gen_gap=rows.gen_gap.fillna(gap) if "gen_gap" in rows else gap)


def sources(rows: pd.DataFrame, cfg: Config) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """{source name: summaries} of the runs whose measures are ranked (lr-sweep's GD runs
    that reached the target loss; double-descent-width's complete runs per setting, each
    setting once every width has a run: :func:`~implicit_reg.experiments.double_descent_width.split_settings`),
    and why a source is left out."""
    out_rows, left_out = {}, []
    lr = with_gap(rows[rows.borrowed == lr_sweep.NAME])
    if "run" not in lr:  # live summaries name the optimizer, a stored runs.csv the run
        lr = lr.assign(run=np.where(lr.optimizer == "egr", "EGR", "GD"))
    reached = (lr.status == "complete") & (lr.stop_reason == "target_train_loss")
    lr = lr[(lr.run == "GD") & reached]
    if len(lr) and lr.gen_gap.notna().all():
        out_rows["lr-sweep (GD over h, MNIST-1D)"] = lr
    else:
        left_out.append(
            "lr-sweep: no finished GD runs in its store"
            if not len(lr)
            else "lr-sweep: its stored runs.csv has no train error, so no generalization gap"
        )
    dd = rows[rows.borrowed == ddw.NAME].dropna(axis=1, how="all")  # the other part's columns
    dcfg = cfg.double_descent_width
    for key, r in (ddw.split_settings(dd, dcfg) if len(dd) else {}).items():
        out_rows[f"double-descent-width ({dcfg.setting(key).label})"] = r[r.status == "complete"]
    return out_rows, left_out


FLATNESS = ("lambda_max", "trace", "eps_sharpness")


def per_seed_tau(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long form (source, seed, measure, tau): Kendall's τ with the gap over one seed's runs
    of a source (one hyperparameter varies), for each measure with ≥ 3 values there."""
    frames = []
    for name, rows in data.items():
        if "seed" not in rows:
            continue
        for seed, g in rows.groupby("seed"):
            present = [m for m in MEASURES if m in g and g[m].notna().sum() >= 3]
            if present:
                r = kendall_ranking(g, present)[["measure", "tau"]]
                frames.append(r.assign(source=name, seed=seed))
    cols = ["source", "seed", "measure", "tau"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def flatness_margins(seed_tau: pd.DataFrame) -> list[float]:
    """Per (source, seed) of :func:`per_seed_tau`: max τ of the flatness measures − max τ
    of the others. The seeds give the uncertainty of the claim that flatness ranks first."""
    out = []
    for _, g in seed_tau.groupby(["source", "seed"], sort=False):
        r = g.set_index("measure").tau
        flat = [m for m in r.index if m in FLATNESS]
        other = [m for m in r.index if m not in FLATNESS]
        if not flat or not other:
            continue
        a, b = r[flat].max(), r[other].max()
        if np.isfinite(a) and np.isfinite(b):
            out.append(float(a - b))
    return out


def ranking_table(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long form: one row per (source, measure) with τ, its p-value and Ψ."""
    frames = []
    for name, rows in data.items():
        present = [m for m in MEASURES if m in rows and rows[m].notna().any()]
        r = kendall_ranking(rows, present)
        r.insert(0, "source", name)
        frames.append(r[["source", "measure", "tau", "p_value", "n_runs", "psi"]])
    return pd.concat(frames, ignore_index=True)


def ranking_figure(
    data: dict[str, pd.DataFrame], table: pd.DataFrame, seed_tau: pd.DataFrame
) -> Figure:
    """Grouped bars of τ per measure and source, whiskers spanning the per-seed τ, then one
    scatter per measure; one colour key for all panels, below them."""
    fig = Figure(figsize=(16, 9), layout="constrained")
    axes = fig.subplots(2, 4).ravel()
    names = list(data)
    ax = axes[0]
    width = 0.8 / len(names)
    y = np.arange(len(MEASURES))
    for i, name in enumerate(names):
        t = table[table.source == name].set_index("measure").reindex(list(MEASURES))
        yi = y + (i - (len(names) - 1) / 2) * width
        ax.barh(yi, t.tau.to_numpy(), height=width, color=f"C{i}", label=name)
        st = seed_tau[seed_tau.source == name].groupby("measure").tau
        lo = st.min().reindex(list(MEASURES)).to_numpy(dtype=float)
        hi = st.max().reindex(list(MEASURES)).to_numpy(dtype=float)
        ax.hlines(yi, lo, hi, color="0.15", lw=0.8)
        ax.plot(lo, yi, "|", hi, yi, "|", color="0.15", ms=3)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [label(m).split(" (")[0] for m in MEASURES], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Kendall τ with the generalization gap")
    ax.set_title("τ(measure, test − train error)\nbar: all runs; whisker: range of per-seed τ",
                 fontsize=9)  # fmt: skip
    for ax, m in zip(axes[1:], MEASURES):
        for i, name in enumerate(names):
            rows = data[name]
            if m in rows:
                ax.scatter(rows[m], rows["gen_gap"], s=12, color=f"C{i}", alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel(label(m))
        ax.set_ylabel("generalization gap (test − train error)")
        ax.set_title(label(m).split(" (")[0], fontsize=10)
    handles = [Patch(color=f"C{i}", label=f"{name} ({len(data[name])} runs)")
               for i, name in enumerate(names)]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(names), 4), fontsize=8,
               title="source of runs (colour of the bars and the points)", title_fontsize=8)  # fmt: skip
    fig.suptitle(
        "Generalization measures at the end of training against the generalization gap",
        fontsize=10,
    )
    tidy_log_axes(fig)
    return fig


@dataclasses.dataclass(frozen=True)
class Analysis:
    """``data``: {source: its runs}; ``table``: τ, p and Ψ per (source, measure) (long
    form); ``wide``: τ per measure (rows) and source (columns) with ``mean τ``, sorted by
    it; ``margins``: per (source, seed), the best flatness τ minus the best other τ;
    ``seed_tau``: τ per (source, seed, measure) (:func:`per_seed_tau`);
    ``consistent``: the measures whose τ has the same sign in every source; ``left_out``:
    the sources that could not be ranked, and why."""

    data: dict[str, pd.DataFrame]
    table: pd.DataFrame
    seed_tau: pd.DataFrame
    wide: pd.DataFrame
    margins: tuple[float, ...]
    consistent: tuple[str, ...]
    left_out: tuple[str, ...]


def analyze(rows: pd.DataFrame, cfg: Config) -> Analysis:
    data, left_out = sources(rows, cfg)
    if not data:
        raise ValueError("no source of runs to rank: " + "; ".join(left_out))
    table = ranking_table(data)
    wide = table.pivot(index="measure", columns="source", values="tau").reindex(list(MEASURES))
    wide["mean τ"] = wide.mean(axis=1)
    wide = wide.sort_values("mean τ", ascending=False)
    consistent = tuple(
        m
        for m in wide.index
        if (np.sign(wide.loc[m, list(data)]) == np.sign(wide.loc[m, "mean τ"])).all()
    )
    seed_tau = per_seed_tau(data)
    margins = tuple(flatness_margins(seed_tau))
    return Analysis(data, table, seed_tau, wide, margins, consistent, tuple(left_out))


def claims(a: Analysis, cfg: Config) -> list[Claim]:
    """Flatness ranks first (paired over (source, seed)); the sign's robustness (untested)."""
    wide, best = a.wide, a.wide.index[0]
    return [
        Claim(
            "flatness (sharpness) measures track generalization best (Jiang et al. rank "
            "sharpness measures among the most predictive): within a (source, seed), the best "
            "flatness τ exceeds the best τ of the other measures",
            "Jiang et al. 2020, Table 5; Keskar et al. 2017",
            (attempt(paired_test, np.asarray(a.margins, dtype=float)),),
            context=f"highest mean τ: {label(best).split(' (')[0]} "
            f"({wide.loc[best, 'mean τ']:+.2f}); λ_max {wide.loc['lambda_max', 'mean τ']:+.2f}, "
            f"ε-sharpness {wide.loc['eps_sharpness', 'mean τ']:+.2f}, tr H "
            f"{wide.loc['trace', 'mean τ']:+.2f}; best flatness τ minus best other τ over "
            f"{len(a.margins)} (source, seed) pairs"
            + "".join(f"; left out: {why}" for why in a.left_out),
            headline=True,
        ),
        Claim(
            "a good measure has the same sign of τ in every setting",
            "Jiang et al. 2020 (robustness across hyperparameters)",
            untested=f"{len(a.data)} sources of runs are too few settings to test a sign's "
            "robustness; measured: same sign in all sources for "
            + (", ".join(a.consistent) if a.consistent else "none")
            + f" ({len(a.consistent)} of {len(MEASURES)} measures)",
        ),
    ]


def figures(a: Analysis, cfg: Config) -> list[tuple[Figure, str, str]]:
    return [
        (
            ranking_figure(a.data, a.table, a.seed_tau),
            "generalization_measures.png",
            "Top left: Kendall τ between each measure and the generalization gap over all runs "
            "of each source (bars), the whiskers spanning the τ within single seeds (one "
            "hyperparameter varies). Other panels: each measure against the gap, one point "
            "per run. Colours: the source of runs, keyed below the panels.",
        )
    ]


def extras(report: Report, a: Analysis, cfg: Config) -> None:
    """The τ and Ψ table, the conclusion per source, and ``kendall_tau.csv``."""
    rows = []
    for m in a.wide.index:
        r = {"measure": m}
        for name in a.data:
            t = a.table[(a.table.source == name) & (a.table.measure == m)]
            r[f"τ {name}"] = (
                f"{t.tau.iloc[0]:+.2f} (p {t.p_value.iloc[0]:.1g})"
                if len(t) and np.isfinite(t.tau.iloc[0])
                else "n/a"
            )
            r[f"Ψ {name}"] = (
                f"{t.psi.iloc[0]:+.2f}" if len(t) and np.isfinite(t.psi.iloc[0]) else "n/a"
            )
        r["mean τ"] = f"{a.wide.loc[m, 'mean τ']:+.2f}"
        rows.append(r)
    report.add_table(
        rows,
        heading="Kendall τ and Ψ with the generalization gap",
        caption=(
            "τ: Kendall's τ-b between the measure and test − train error over all runs of the "
            "source (p: its two-sided p-value). Ψ: the granulated coefficient of Jiang et al.; "
            "each source varies one hyperparameter (h or the width) besides the seed, so Ψ is "
            "the τ across that hyperparameter within one seed, averaged over seeds. Sorted by "
            "the mean τ over sources."
        ),
    )
    report.add_text(conclusion(a.wide, a.data), heading="What tracks generalization here?")
    report.add_data(a.table, "kendall_tau.csv")


def conclusion(wide: pd.DataFrame, data: dict[str, pd.DataFrame]) -> str:
    lines = []
    for name in data:
        col = wide[name].dropna().sort_values(ascending=False)
        if col.empty:
            continue
        lines.append(
            f"- {name}: best {label(col.index[0]).split(' (')[0]} (τ = {col.iloc[0]:+.2f}), "
            f"worst {label(col.index[-1]).split(' (')[0]} (τ = {col.iloc[-1]:+.2f})."
        )
    lines.append(
        "\nA positive τ means that a larger value goes with a larger gap, as a complexity "
        "measure should. Over step sizes at equal training loss the gap is mostly the test "
        "error; over widths with label noise it is dominated by how much noise the model "
        "memorizes (train error falls to 0 past the threshold), so measures that grow with "
        "the fit of the noise rank high there. A measure is only convincing if it ranks high "
        "in every source."
    )
    return "\n".join(lines)


SPEC = Spec(NAME, TITLE, PAPER, CONFIGS, plan, analyze, claims, figures, extras)


def run(scale: str, out: Path) -> Report:
    """Run generalization-measures at ``scale`` and write its report into ``out``."""
    return run_spec(SPEC, scale, out)
