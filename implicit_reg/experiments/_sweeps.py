"""Helpers for the experiments that train on the engine (``implicit_reg.engine.train``).

Where the runs live. Experiment ``X`` keeps its runs in a sweep directory
(:mod:`implicit_reg.engine.sweep`: ``sweep.json`` + ``runs/<config_hash>/``) at
``OUT/sweep`` when it runs into ``OUT``. Another experiment that needs X's
runs (``generalization-measures`` reads ``lr-sweep`` and
``double-descent-width``; ``double-descent-epochs`` and ``sample-wise`` share
runs with ``double-descent-width``) looks for them at ``OUT/../X/sweep``,
which is where ``implicit-reg reproduce all --out ROOT`` puts them
(``ROOT/X``). Runs missing there are trained there, so whichever experiment
comes first computes a run and the others read it: the store is keyed by the
config hash and resumable, so nothing is computed twice.

Results are loaded by config hash, never through the sweep manifest, so
several experiments may add runs to one sweep directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import HISTORY_FILE
from implicit_reg.engine.sweep import run_sweep
from implicit_reg.report.results import load_summaries

SWEEP_DIR = "sweep"

__all__ = [
    "SWEEP_DIR",
    "sweep_dir",
    "workers_for",
    "run_configs",
    "load_history",
    "history_matrix",
    "failed_runs",
    "seed_band",
    "geom_ints",
    "MEASURE_PROBES",
    "tidy_log_axes",
    "compute_note",
    "Peak",
    "peak_of",
    "highest_bump",
    "first_fit",
    "complete_seeds",
    "stored_table",
]

# The probes the runs of lr-sweep and double-descent-width log at their end, so that
# generalization-measures can rank every measure on them (the base metrics add
# grad_norm_sq, weight_norm and dist_from_init).
MEASURE_PROBES = ("lambda_max", "trace", "eps_sharpness", "geometric_complexity")


def sweep_dir(out: Path, owner: str, name: str) -> Path:
    """The sweep directory of experiment ``owner`` as seen by experiment
    ``name`` writing into ``out``: ``out/sweep`` for the owner itself, else
    ``out/../owner/sweep``."""
    out = Path(out)
    return out / SWEEP_DIR if owner == name else out.parent / owner / SWEEP_DIR


def workers_for(scale: str) -> int:
    """Worker processes for a sweep: 1 at ``smoke`` (no process start-up cost),
    else ``IMPLICIT_REG_WORKERS`` or 2 (the two cores these runs are sized for)."""
    if scale == "smoke":
        return 1
    env = os.environ.get("IMPLICIT_REG_WORKERS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"IMPLICIT_REG_WORKERS must be an integer >= 1, got {env!r}")
        return int(env)
    return max(1, min(2, os.cpu_count() or 1))


def _cost(config: RunConfig) -> float:
    """A rough relative cost, to start the longest runs first on the workers."""
    n = config.n_train or 4000
    if config.batch_size is None:
        steps = config.steps or config.epochs or 1
        if config.epochs is not None and config.steps is not None:
            steps = min(config.steps, config.epochs)
        per_step = n
    else:
        per_epoch = -(-n // config.batch_size)
        steps = min(config.steps or 10**12, (config.epochs or 10**12) * per_epoch)
        per_step = config.batch_size
    factor = 3.0 if config.optimizer == "egr" else 1.0
    return steps * (per_step + 50) * factor * (1 + config.width / 100)


#: environment variable: "1" makes :func:`run_configs` read the store only, training
#: nothing (a report of what a long sweep has finished so far; the rest is listed)
STORE_ONLY_ENV = "IMPLICIT_REG_STORE_ONLY"


def store_only() -> bool:
    """True when ``IMPLICIT_REG_STORE_ONLY=1``: reports read finished runs, train none."""
    value = os.environ.get(STORE_ONLY_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{STORE_ONLY_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def run_configs(
    configs: Sequence[RunConfig],
    directory: Path,
    *,
    workers: int = 1,
    vectorize: bool = True,
    train: Callable[[Path], int] | None = None,
) -> pd.DataFrame:
    """Train the configs that ``directory`` does not hold yet; return their summaries.

    One row per config, in the order given (columns as
    :func:`implicit_reg.report.results.load_summaries`, plus ``run_dir``). A run with
    status "failed" (an exception, not a divergence) raises ``RuntimeError``
    with its traceback: it is a bug, not a result.

    ``vectorize`` is passed to :func:`~implicit_reg.engine.sweep.run_sweep` explicitly
    (True: the engine's planner trains the runs that may share an ensemble as one; False:
    one at a time), so that a change of the library's default cannot silently move the
    numbers of a committed report: a float32 run trained in an ensemble and alone differ
    by rounding from the first step, which long runs amplify. ``train``: an experiment
    that trains its runs itself (in phases, with its own job cut: :mod:`._emc_plan`)
    gives ``train(directory) -> runs trained``, called instead of one sweep of them all;
    the configs are then read from the store.

    With ``IMPLICIT_REG_STORE_ONLY=1`` (:func:`store_only`) nothing is trained: the
    rows are those of the configs already in the store, and ``attrs["missing"]``
    counts the others (the compute note says so).
    """
    if not isinstance(vectorize, bool):
        raise ValueError(f"vectorize must be True or False, got {vectorize!r}")
    configs = list({c.config_hash(): c for c in configs}.values())
    if store_only():
        return _stored_rows(configs, Path(directory))
    ordered = sorted(configs, key=_cost, reverse=True)  # longest first: the workers finish together
    workers = max(1, min(workers, len(ordered)))
    if train is not None:
        workers, trained = 1, train(Path(directory))
    elif workers > 1:
        trained = run_sweep(
            ordered, directory, workers=workers, progress=False, vectorize=vectorize
        ).done
    else:  # in this process, on one torch thread: these models are too small for two
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            trained = run_sweep(
                ordered, directory, workers=1, progress=False, vectorize=vectorize
            ).done
        finally:
            torch.set_num_threads(threads)
    table = load_summaries(directory, all_runs=True).set_index("config_hash")
    hashes = [c.config_hash() for c in configs]
    missing = [h for h in hashes if h not in table.index]
    if missing:
        raise RuntimeError(f"runs {missing} were not written to {directory}")
    rows = table.loc[hashes].reset_index()
    rows.attrs.update(trained_now=trained, directory=str(directory), workers=workers)
    rows.attrs["note"] = compute_note(rows)
    bad = rows[rows["status"] == "failed"]
    if len(bad):
        raise RuntimeError(
            f"{len(bad)} run(s) failed in {directory}; first error:\n{bad['error'].iloc[0]}"
        )
    return rows


def _stored_rows(configs: list[RunConfig], directory: Path) -> pd.DataFrame:
    """The summaries of the configs found in ``directory`` (store-only mode)."""
    table = (
        load_summaries(directory, all_runs=True).set_index("config_hash")
        if (directory / "runs").is_dir()
        else pd.DataFrame()
    )
    hashes = [c.config_hash() for c in configs if c.config_hash() in table.index]
    rows = table.loc[hashes].reset_index() if hashes else pd.DataFrame({"config_hash": []})
    rows.attrs.update(
        trained_now=0, directory=str(directory), workers=0, missing=len(configs) - len(hashes)
    )
    rows.attrs["note"] = compute_note(rows) if len(rows) else "no run of this plan is stored yet"
    return rows


def stored_table(out: Path, filename: str = "runs.csv") -> pd.DataFrame | None:
    """The per-run table an earlier report wrote into ``out``, read back for a store-only
    report (:func:`store_only`) when no run store holds the runs: the claims are then
    re-judged from it and nothing is trained. None when not store-only or there is none.
    ``attrs["note"]`` says so, for the report's compute section."""
    path = Path(out) / filename
    if not (store_only() and path.is_file()):
        return None
    table = pd.read_csv(path)
    if "status" not in table:
        table["status"] = "complete"  # the table holds the runs the report used
    table.attrs["note"] = (
        f"Re-judged from the per-run table `{filename}` that the report of the trained runs "
        "wrote (final metrics of every run); nothing was trained. Per-run histories and "
        "checkpoints are not committed."
    )
    table.attrs["stored"] = True
    return table


def load_history(summaries: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Long-form history (``step``, ``metric``, ``value``) of every run in
    ``summaries``, with the given config ``columns`` attached."""
    frames = []
    for _, row in summaries.iterrows():
        h = pd.read_csv(Path(row["run_dir"]) / HISTORY_FILE)
        for c in columns:
            h[c] = row[c]
        h["config_hash"] = row["config_hash"]
        frames.append(h)
    return pd.concat(frames, ignore_index=True)


def history_matrix(history: pd.DataFrame, metric: str, seeds_col: str = "seed"):
    """``(steps, values)`` with ``values[s, t]`` the ``metric`` of seed ``s`` at
    ``steps[t]``, on the steps that every seed logged (NaN-free)."""
    h = history[history["metric"] == metric]
    piv = h.pivot_table(index=seeds_col, columns="step", values="value", aggfunc="last")
    piv = piv.dropna(axis=1)
    return piv.columns.to_numpy(dtype=float), piv.to_numpy(dtype=float)


def failed_runs(summaries: pd.DataFrame) -> pd.DataFrame:
    """The runs that did not complete (diverged)."""
    return summaries[summaries["status"] != "complete"]


def seed_band(
    ax,
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    label: str,
    color=None,
    geometric: bool = False,
    **line_kw,
):
    """Mean over seeds of column ``y`` against ``x`` with a ±1 std band (ddof 0).

    Rows whose ``y`` is NaN or inf (diverged runs) are left out of their x's
    mean. ``geometric=True`` averages log10(y), for quantities on a log axis.
    Returns the line, or None when nothing is finite.
    """
    d = frame[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
    if geometric:
        d = d[d[y] > 0].assign(**{y: lambda f: np.log10(f[y])})
    if d.empty:
        return None
    stats = d.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
    std = d.groupby(x)[y].std(ddof=0).reindex(stats.index).fillna(0.0).to_numpy()
    xs, mid = stats.index.to_numpy(dtype=float), stats["mean"].to_numpy()
    lo, hi = mid - std, mid + std
    if geometric:
        mid, lo, hi = 10**mid, 10**lo, 10**hi
    (line,) = ax.plot(xs, mid, label=label, color=color, **line_kw)
    if (stats["count"] > 1).any():
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def geom_ints(start: float, stop: float, num: int) -> tuple[int, ...]:
    """``num`` geometrically spaced integers from ``start`` to ``stop`` (duplicates dropped)."""
    out: list[int] = []
    for x in np.geomspace(start, stop, num):
        if int(round(x)) not in out:
            out.append(int(round(x)))
    return tuple(out)


def tidy_log_axes(fig) -> None:
    """Readable tick labels on log axes: ticks at 1, 2, 5 × 10^k written plainly
    (no overlapping minor labels) when an axis spans fewer than three decades."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in fig.axes:
        for axis, scale, lim in (
            (ax.xaxis, ax.get_xscale(), ax.get_xlim()),
            (ax.yaxis, ax.get_yscale(), ax.get_ylim()),
        ):
            if scale != "log" or min(lim) <= 0:
                continue
            axis.set_minor_formatter(NullFormatter())
            decades = np.log10(max(lim) / min(lim))
            if decades < 3:
                subs = (1.0, 2.0, 5.0) if decades >= 1 else tuple(np.arange(1.0, 10.0))
                axis.set_major_locator(LogLocator(base=10, subs=subs))
                axis.set_major_formatter(FuncFormatter(_plain_number))


def wall_span(rows: pd.DataFrame) -> str:
    """When the runs were trained: the first start and the last finish (``meta.json``),
    and the wall-clock span between them (other jobs may have shared the machine)."""
    import json
    from datetime import datetime

    starts, ends = [], []
    for d in rows.get("run_dir", pd.Series(dtype=str)):
        meta = Path(d) / "meta.json"
        if meta.is_file():
            m = json.loads(meta.read_text())
            if m.get("started_at") and m.get("finished_at"):
                starts.append(datetime.fromisoformat(m["started_at"]))
                ends.append(datetime.fromisoformat(m["finished_at"]))
    if not starts:
        return ""
    a, b = min(starts), max(ends)
    minutes = (b - a).total_seconds() / 60
    return (
        f" The runs were trained between {a:%Y-%m-%d %H:%M} and {b:%H:%M} UTC, a wall-clock "
        f"span of {minutes:.0f} min (one or more processes, sharing the machine with other jobs)."
    )


def compute_note(rows: pd.DataFrame) -> str:
    """What the runs of one :func:`run_configs` call cost: how many there are, how
    many it trained (the rest came from the store) and their summed training time."""
    t = rows["wall_time_s"].astype(float)
    missing = rows.attrs.get("missing", 0)
    if missing:
        return (
            f"{len(rows)} engine runs (`implicit_reg.engine.train.run`) read from "
            f"`{rows.attrs['directory']}` (a store-only report, `{STORE_ONLY_ENV}=1`): "
            f"**{missing} runs of the plan are not finished yet** and are left out. Training "
            f"time of the runs read, as each recorded it: {t.sum():.0f} s in total (median "
            f"{t.median():.1f} s, longest {t.max():.1f} s), one torch thread each."
            + wall_span(rows)
        )
    return (
        f"{len(rows)} engine runs (`implicit_reg.engine.train.run`) in `{rows.attrs['directory']}`, "
        f"{rows.attrs['trained_now']} of them trained by this call, the others read from the "
        f"result store. Training time of the runs, as each recorded it: {t.sum():.0f} s in total "
        f"(median {t.median():.1f} s, longest {t.max():.1f} s), one torch thread each"
        + (
            f", on {rows.attrs['workers']} worker process(es)."
            if rows.attrs["trained_now"]
            else "."
        )
        + wall_span(rows)
    )


def _plain_number(value: float, _pos=None) -> str:
    """Tick label: 2,000 rather than 2e+03; 0.005 rather than 5e-03."""
    if value >= 1 and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.0e}"


def highest_bump(values) -> int | None:
    """Descriptive only, never a test: the index of a curve's highest *bump*, the i that
    maximizes min(v_i − min_{j<i} v_j, v_i − min_{j>i} v_j) (a double-descent peak, not
    the underfitting edge); None if no point rises above both sides. Used to say where a
    curve (or one seed's curve) is highest; the claims locate their peaks with
    :func:`peak_of` instead."""
    v = np.asarray(values, dtype=float)
    if len(v) < 3:
        return None
    left = np.minimum.accumulate(v)
    right = np.minimum.accumulate(v[::-1])[::-1]
    score = np.full(len(v), -np.inf)
    score[1:-1] = np.minimum(v[1:-1] - left[:-2], v[1:-1] - right[2:])
    i = int(np.argmax(score))
    return i if score[i] > 0 else None


@dataclasses.dataclass(frozen=True)
class Peak:
    """A peak claim over a (seed × x) table, decided by :func:`implicit_reg.stats.peak_test`.

    ``xs`` are the points (widths, sample sizes, epochs) in order, ``means`` the
    seed means at them, ``at`` the x the peak was placed at *before* the test
    (the interpolation threshold read from training error), or None when
    ``peak_test`` located it by its own held-out/calibrated rule; ``test`` is
    the result (verdict, rise, fall, sentence); ``x`` the x of the tested
    peak (None if none was located); ``top`` the x of the highest mean
    (descriptive only).
    """

    xs: tuple
    means: pd.Series
    at: Any
    test: Any
    seeds: int

    @property
    def x(self):
        i = getattr(self.test, "index", None)
        return None if i is None else self.xs[int(i)]

    @property
    def top(self):
        return self.means.idxmax()

    @property
    def verdict(self) -> str:
        return self.test.verdict


def complete_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """The seeds (rows) of a (seed × x) table with no NaN (a diverged or unfinished run);
    if none is complete, the columns without NaN instead. Columns sorted by x."""
    complete = table.dropna(axis=0)
    table = complete if len(complete) >= 1 else table.dropna(axis=1)
    return table.sort_index(axis=1)


def first_fit(table: pd.DataFrame, threshold: float):
    """The first x (column, in order) where the seed mean of a (seed × x) table of
    *training* error is ≤ ``threshold``: the interpolation threshold, read from
    training error so that a test-error peak can be placed before it is tested."""
    means = table.mean(axis=0).sort_index()
    fits = means[means <= threshold]
    return None if fits.empty else fits.index[0]


def peak_of(table: pd.DataFrame, *, at=None, alpha: float | None = None) -> Peak:
    """Test for a peak in a (seed × x) table with :func:`implicit_reg.stats.peak_test`.

    ``at``: the x where the theory places the peak (e.g. :func:`first_fit` of
    the training error); it must be an interior column. Without it the test
    locates the peak by its own rule (never on the means it tests).
    """
    from implicit_reg.stats import ALPHA, peak_test

    table = complete_seeds(table)
    xs = tuple(x.item() if hasattr(x, "item") else x for x in table.columns)
    i_at = None
    if at is not None:
        if at not in xs:
            raise ValueError(f"peak location {at!r} is not one of the points {xs}")
        i_at = xs.index(at)
        if not 0 < i_at < len(xs) - 1:
            raise ValueError(f"the peak location {at!r} is an end point, not an interior one")
    test = peak_test(table.to_numpy(dtype=float), at=i_at, alpha=ALPHA if alpha is None else alpha)
    return Peak(xs, table.mean(axis=0), at, test, len(table))
