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

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import HISTORY_FILE
from implicit_reg.engine.sweep import run_sweep
from implicit_reg.report.report import judge, seed_effect
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
    "peak_effects",
    "verdict_of",
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


def run_configs(configs: Sequence[RunConfig], directory: Path, *, workers: int = 1) -> pd.DataFrame:
    """Train the configs that ``directory`` does not hold yet; return their summaries.

    One row per config, in the order given (columns as
    :func:`implicit_reg.report.results.load_summaries`, plus ``run_dir``). A run with
    status "failed" (an exception, not a divergence) raises ``RuntimeError``
    with its traceback: it is a bug, not a result.

    With ``IMPLICIT_REG_STORE_ONLY=1`` (:func:`store_only`) nothing is trained: the
    rows are those of the configs already in the store, and ``attrs["missing"]``
    counts the others (the compute note says so).
    """
    configs = list({c.config_hash(): c for c in configs}.values())
    if store_only():
        return _stored_rows(configs, Path(directory))
    ordered = sorted(configs, key=_cost, reverse=True)  # longest first: the workers finish together
    workers = max(1, min(workers, len(ordered)))
    if workers > 1:
        sweep = run_sweep(ordered, directory, workers=workers, progress=False)
    else:  # in this process, on one torch thread: these models are too small for two
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            sweep = run_sweep(ordered, directory, workers=1, progress=False)
        finally:
            torch.set_num_threads(threads)
    table = load_summaries(directory, all_runs=True).set_index("config_hash")
    hashes = [c.config_hash() for c in configs]
    missing = [h for h in hashes if h not in table.index]
    if missing:
        raise RuntimeError(f"runs {missing} were not written to {directory}")
    rows = table.loc[hashes].reset_index()
    rows.attrs.update(trained_now=sweep.done, directory=str(directory), workers=workers)
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


def verdict_of(*verdicts: bool | None) -> bool | None:
    """All of several :func:`~implicit_reg.report.report.judge` verdicts: False if any is
    False (the opposite beyond the noise), True if all are True, else None."""
    if any(v is False for v in verdicts):
        return False
    return True if all(v is True for v in verdicts) else None


def bump_index(values) -> int | None:
    """The index of the highest *bump* of a curve: the i that maximizes
    min(v_i − min_{j<i} v_j, v_i − min_{j>i} v_j), the height above the lowest point on
    each side (a double-descent peak, not the underfitting edge); None if no point
    rises above both sides."""
    v = np.asarray(values, dtype=float)
    if len(v) < 3:
        return None
    left = np.minimum.accumulate(v)  # min over j <= i
    right = np.minimum.accumulate(v[::-1])[::-1]  # min over j >= i
    score = np.full(len(v), -np.inf)
    score[1:-1] = np.minimum(v[1:-1] - left[:-2], v[1:-1] - right[2:])
    i = int(np.argmax(score))
    return i if score[i] > 0 else None


def peak_effects(table: pd.DataFrame) -> dict:
    """Is there a peak in a (seed × x) table, beyond the seed noise?

    The peak is the highest bump of the seed mean (:func:`bump_index`), ``left``
    the x of the lowest seed mean before it and ``right`` the lowest after it
    (``last``: the largest x). ``rise`` = value(peak) − value(left) and ``fall`` =
    value(peak) − value(right) are paired over seeds
    (:func:`~implicit_reg.report.report.seed_effect`), each ``(effect, SE)``; the
    verdict (:func:`verdict_of`) needs both beyond 2 SE. Peak, ``left`` and
    ``right`` are chosen on the same means the effects are measured on, which
    favours a peak (the SEs do not include that choice). Seeds (rows) with a NaN
    (a diverged or not yet finished run) are dropped while one complete seed
    remains; otherwise the columns with a NaN are. ``seed_peaks``: the x of each
    seed's own highest bump (None where it has none); ``top``: the x of the
    highest mean (an edge, when the smallest model underfits most).
    """
    complete = table.dropna(axis=0)
    table = complete if len(complete) >= 1 else table.dropna(axis=1)
    table = table.sort_index(axis=1)
    means = table.mean(axis=0)
    xs = means.index.to_numpy()
    nan = (float("nan"), float("nan"))

    def x_at(i):
        return None if i is None else xs[i].item()

    i = bump_index(means.to_numpy())
    out = {
        "peak": x_at(i) if i is not None else x_at(int(np.argmax(means.to_numpy()))),
        "top": x_at(int(np.argmax(means.to_numpy()))), "means": means,
        "interior": i is not None, "left": None, "right": None, "last": xs[-1].item(),
        "rise": nan, "fall": nan, "verdict": False, "seeds": len(table),
        "seed_peaks": [x_at(bump_index(r)) for r in table.to_numpy()],
    }  # fmt: skip
    if i is None:
        return out
    left = int(np.argmin(means.to_numpy()[:i]))
    right = i + 1 + int(np.argmin(means.to_numpy()[i + 1 :]))
    out["left"], out["right"] = x_at(left), x_at(right)
    out["rise"] = seed_effect(table[xs[i]], table[xs[left]], paired=True)
    out["fall"] = seed_effect(table[xs[i]], table[xs[right]], paired=True)
    out["verdict"] = verdict_of(judge(*out["rise"]), judge(*out["fall"]))
    return out
