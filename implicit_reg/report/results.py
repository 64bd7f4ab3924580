"""Tidy tables from a sweep directory, and the generalization-measure ranking.

- :func:`load_summaries`: one row per run: ``config_hash``, ``status``,
  every config field, the final metrics, ``trained`` (alone, or member i/M
  of a vectorized ensemble), and derived columns ``gen_gap``
  (test error − train error) and ``nk`` (n_train × classes, the
  interpolation threshold of the squared loss on one-hot targets).
- :func:`load_histories`: long form, one row per (run, step, metric), with
  the config fields that vary across the sweep.
- :func:`export_table`: CSV or Parquet (Parquet needs ``pyarrow``).
- :func:`kendall_ranking`: Kendall's τ between each measure and the
  generalization gap over the sweep's runs, and the granulated coefficient
  Ψ of Jiang et al. (2019, "Fantastic generalization measures and where to
  find them", arXiv 1912.02178, eq. 4): for each hyperparameter axis i, the
  mean τ over groups of runs that differ in axis i only, ψ_i, and
  Ψ = mean_i ψ_i.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..engine.config import RunConfig, config_fields
from ..engine.store import (
    CONFIG_FILE,
    HISTORY_FILE,
    META_FILE,
    SUMMARY_FILE,
    complete_run_dirs,
    read_json,
)
from ..engine.store import store_root as store_root

__all__ = [
    "MEASURES",
    "store_root",
    "load_summaries",
    "load_histories",
    "varying_fields",
    "export_table",
    "kendall_ranking",
    "summary_table",
    "DEFAULT_TABLE_METRICS",
]

# Candidate generalization measures (whichever a sweep logged are ranked).
MEASURES = (
    "lambda_max",
    "trace",
    "lambda_min",
    "grad_norm_sq",
    "weight_norm",
    "dist_from_init",
    "eps_sharpness",
    "gaussian_sharpness",
    "geometric_complexity",
)
_SUMMARY_META = (
    "config_hash",
    "status",
    "stop_reason",
    "steps_done",
    "epochs_done",
    "diverged_at",
    "n_params",
    "n_train_actual",
    "num_classes",
    "output_dim",
    "wall_time_s",
    "trained",
    "error",
)


def _config_row(path: Path) -> dict[str, Any]:
    """A run's config fields; fields added to RunConfig after the run was written take
    their default (a default reproduces the old behaviour, see :mod:`implicit_reg.engine.config`)."""
    cfg = {**RunConfig().to_dict(), **read_json(path / CONFIG_FILE)}
    cfg["probes"] = ",".join(cfg.get("probes") or [])
    return cfg


def _trained(path: Path) -> str:
    """How a run was trained, from its ``meta.json``: "alone", "ensemble i/M" (member i,
    1-based, of M), or "unknown" (a run written before provenance was recorded)."""
    meta = read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
    trained = meta.get("trained")
    if trained is None and "ensemble" in meta:  # written before "trained" existed
        return f"ensemble ?/{meta['ensemble'].get('members', '?')}"
    if trained is None:
        return "unknown"
    if trained.get("mode") == "ensemble":
        return f"ensemble {trained['member'] + 1}/{trained['members']}"
    return str(trained.get("mode", "unknown"))


def load_summaries(sweep_dir: str | Path, *, all_runs: bool = False) -> pd.DataFrame:
    """One row per complete run directory (config fields + final metrics + status).

    With a ``sweep.json`` manifest only the sweep's own runs are loaded,
    unless ``all_runs``. Raises ``ValueError`` if the directory is missing.
    """
    rows = []
    for d in complete_run_dirs(sweep_dir, all_runs=all_runs):
        summary = read_json(d / SUMMARY_FILE)
        cfg = _config_row(d)
        if "n_train" in summary:  # the actual size (config may say None: the data set default)
            summary["n_train_actual"] = summary.pop("n_train")
        rows.append({**cfg, **summary, "trained": _trained(d), "run_dir": str(d)})
    fields = list(config_fields())
    if not rows:
        return pd.DataFrame(columns=["config_hash", "status", *fields])
    df = pd.DataFrame(rows)
    if "n_train_actual" in df:
        df["n_train"] = df["n_train"].fillna(df["n_train_actual"])
    if {"test_error", "train_error"} <= set(df.columns):
        df["gen_gap"] = df["test_error"] - df["train_error"]
    if {"n_train", "num_classes"} <= set(df.columns):
        df["nk"] = df["n_train"] * df["num_classes"]
    first = [c for c in ("config_hash", "status") if c in df]
    meta = [c for c in _SUMMARY_META if c in df and c not in first]
    metrics = [c for c in df.columns if c not in set(first) | set(meta) | set(fields) | {"run_dir"}]
    return df[[*first, *fields, *meta, *metrics, "run_dir"]].reset_index(drop=True)


def varying_fields(summaries: pd.DataFrame) -> list[str]:
    """Config fields that take more than one value across the runs (in declaration order)."""
    out = []
    for f in config_fields():
        if f in summaries and summaries[f].astype(str).nunique(dropna=False) > 1:
            out.append(f)
    return out


def load_histories(
    sweep_dir: str | Path, *, columns: list[str] | None = None, all_runs: bool = False
) -> pd.DataFrame:
    """Long form: ``config_hash``, the config ``columns`` (default: the varying
    fields plus ``lr``, ``width`` and ``seed``), ``step``, ``metric``, ``value``."""
    summaries = load_summaries(sweep_dir, all_runs=all_runs)
    if columns is None:
        columns = list(dict.fromkeys([*varying_fields(summaries), "lr", "width", "seed"]))
    frames = []
    for _, row in summaries.iterrows():
        h = pd.read_csv(Path(row["run_dir"]) / HISTORY_FILE)
        h.insert(0, "config_hash", row["config_hash"])
        for c in columns:
            h[c] = row[c]
        h["status"] = row["status"]
        frames.append(h)
    if not frames:
        return pd.DataFrame(columns=["config_hash", *columns, "step", "metric", "value", "status"])
    df = pd.concat(frames, ignore_index=True)
    return df[["config_hash", *columns, "status", "step", "metric", "value"]]


def export_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` to ``.csv`` or ``.parquet`` (by suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"unknown table format {suffix!r}; use .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        df.to_csv(path, index=False)
        return path
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError(
            "writing Parquet needs pyarrow: pip install 'implicit-reg[parquet]' (or use .csv)"
        ) from None
    df.to_parquet(path, index=False)
    return path


def _tau(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    from scipy.stats import kendalltau

    if len(x) < 2 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan"), float("nan")
    res = kendalltau(x.to_numpy(), y.to_numpy())
    return float(res.statistic), float(res.pvalue)


def kendall_ranking(
    summaries: pd.DataFrame,
    measures: list[str] | None = None,
    *,
    gap: str = "gen_gap",
    axes: list[str] | None = None,
) -> pd.DataFrame:
    """Rank generalization measures by Kendall's τ with the generalization gap.

    Over the runs with status "complete" (and finite values), for each measure:

    - ``tau``, ``p_value``: ``scipy.stats.kendalltau`` (τ-b) between the measure
      and ``gap`` across all runs. τ > 0: a larger measure goes with a larger gap.
    - ``psi_<axis>``: Jiang et al.'s ψ_i, the mean τ over groups of runs that
      share every varying field except ``axis`` (groups with ≥ 2 distinct
      values); ``psi``: their mean, Ψ. ``axes`` default: the varying fields
      other than ``seed`` (seeds are replicates, not hyperparameters).

    Returns a DataFrame sorted by ``tau`` (descending), one row per measure.
    """
    if gap not in summaries:
        raise ValueError(
            f"column {gap!r} is missing; generalization gaps need train_error and test_error"
        )
    ok = summaries[summaries["status"] == "complete"] if "status" in summaries else summaries
    if measures is None:
        measures = [m for m in MEASURES if m in ok and ok[m].notna().any()]
    missing = [m for m in measures if m not in ok]
    if missing:
        raise ValueError(
            f"unknown measure(s) {', '.join(missing)}; available: {', '.join(c for c in MEASURES if c in ok)}"
        )
    varying = varying_fields(ok)
    if axes is None:
        axes = [f for f in varying if f != "seed"]
    rows = []
    for m in measures:
        d = ok[[m, gap, *varying]].replace([np.inf, -np.inf], np.nan).dropna(subset=[m, gap])
        tau, p = _tau(d[m], d[gap])
        row: dict[str, Any] = {"measure": m, "tau": tau, "p_value": p, "n_runs": len(d)}
        psis = []
        for axis in axes:
            others = [f for f in varying if f != axis]
            groups = d.groupby(others, dropna=False) if others else [(None, d)]
            taus = [t for _, g in groups if not np.isnan(t := _tau(g[m], g[gap])[0])]
            psi = float(np.mean(taus)) if taus else float("nan")
            row[f"psi_{axis}"] = psi
            if not np.isnan(psi):
                psis.append(psi)
        row["psi"] = float(np.mean(psis)) if psis else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=["measure", "tau", "p_value", "n_runs", "psi"])
    return out.sort_values("tau", ascending=False, na_position="last").reset_index(drop=True)


DEFAULT_TABLE_METRICS = (
    "train_loss",
    "train_error",
    "test_error",
    "gen_gap",
    "grad_norm_sq",
    "lambda_max",
    "trace",
    "weight_norm",
)


def summary_table(summaries: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """The compact per-run table: hash, the varying fields, status, steps, parameter
    count, the final ``metrics`` (default: :data:`DEFAULT_TABLE_METRICS` present) and
    how each run was trained (``trained``: alone or member i/M of an ensemble)."""
    if metrics is None:
        metrics = [m for m in DEFAULT_TABLE_METRICS if m in summaries]
    missing = [m for m in metrics if m not in summaries]
    if missing:
        raise ValueError(
            f"unknown metric(s) {', '.join(missing)}; available: {', '.join(map(str, summaries.columns))}"
        )
    cols = ["config_hash", *varying_fields(summaries), "status", "steps_done", "n_params"]
    cols += [*metrics, "trained"]
    cols = [c for c in dict.fromkeys(cols) if c in summaries]
    table = summaries[cols]
    try:
        table = table.sort_values(varying_fields(summaries) or ["config_hash"], kind="stable")
    except TypeError:  # mixed None/number columns: keep the load order
        pass
    return table.reset_index(drop=True)
