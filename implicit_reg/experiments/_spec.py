"""An experiment as a spec: what it runs, what it computes, what it claims, what it draws.

A :class:`Spec` declares a reproduction; :func:`run_spec` is the one runner that
does the rest (scale selection, training or reading the runs, the compute note,
writing the report). The parts, each a plain function a test can call on a
synthetic run table:

- ``configs``: ``{scale: config}`` for :data:`~implicit_reg.report.report.SCALES`;
- ``plan(cfg) -> Plan``: the engine runs it needs and, explicitly, the experiment
  whose run store holds them (``borrows``), instead of a path convention;
- or, for an experiment that trains no engine runs (closed forms, ODE solves,
  min-norm fits), ``measure(cfg) -> DataFrame`` (or a tuple of them) in place of
  ``plan`` (``plan=None``): its table is written into ``out`` as ``measured`` (a file
  name, or a tuple of them) and, in a store-only report (``IMPLICIT_REG_STORE_ONLY=1``),
  read back from there instead of recomputed, as a planned experiment's per-run table is;
- ``analyze(rows, cfg) -> A``: a typed result (a dataclass) from the runs'
  summaries (one row per run, the columns of
  :func:`implicit_reg.report.results.load_summaries`), or from the measured table;
- ``claims(a, cfg) -> [Claim]``: each claim with the tests of
  :mod:`implicit_reg.stats` that decide it;
- ``figures(a, cfg) -> [(Figure, file name, caption)]`` and ``extras(report, a,
  cfg)`` for tables and data files.

The experiment module keeps its ``run(scale, out)`` entry point as
``run_spec(SPEC, scale, out)``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import Claim, Report, select_scale

from ._sweeps import run_configs, store_only, stored_table, sweep_dir, workers_for

__all__ = ["Plan", "Spec", "run_spec", "plan_rows", "measured_rows", "computed_cost"]

A = TypeVar("A")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The engine runs an experiment needs. ``borrows``: the experiment whose run store
    holds (and receives) them, when they are shared with it; None: its own store."""

    runs: tuple[RunConfig, ...]
    borrows: str | None = None
    #: further runs from other stores (an experiment that borrows several); their rows
    #: follow, each with ``borrowed`` = its owner (the experiment whose store holds them)
    also: tuple[Plan, ...] = ()
    #: how the runs are trained when not by one engine sweep of them all (the default,
    #: None): ``train(store) -> runs trained`` trains them into their store itself, in
    #: phases with its own job cut (:mod:`._emc_plan`), and the rows are read from there;
    #: never called in a store-only report
    train: Callable[[Path], int] | None = None
    #: passed to :func:`~implicit_reg.experiments._sweeps.run_configs` (explicitly to the
    #: engine's sweep): True trains the runs that may share an ensemble as one, False one at
    #: a time (float32 runs trained both ways differ by rounding, which long runs amplify)
    vectorize: bool = True


@dataclasses.dataclass(frozen=True)
class Spec(Generic[A]):
    """A reproduction, declared (see the module docstring). Exactly one of ``plan``
    (engine runs) and ``measure`` (a table computed without engine runs) is given."""

    name: str
    title: str
    paper: str
    configs: Mapping[str, Any]
    plan: Callable[[Any], Plan] | None
    analyze: Callable[[pd.DataFrame, Any], A]
    claims: Callable[[A, Any], Sequence[Claim]]
    figures: Callable[[A, Any], Sequence[tuple[Figure, str, str]]] = lambda a, cfg: ()
    extras: Callable[[Report, A, Any], None] | None = None
    measure: Callable[[Any], pd.DataFrame | tuple[pd.DataFrame, ...]] | None = None
    # the file(s) the measured table(s) are written to and read from: a tuple when
    # measure returns a tuple of tables (an empty one is not written; in a store-only
    # report a missing one reads back empty, the first must exist)
    measured: str | tuple[str, ...] = "measured.csv"
    #: what a store-only report with no run store re-judges from: ``stored(out)`` -> table
    #: (with ``attrs["note"]``) or None; the per-run table ``out/runs.csv`` unless given
    stored: Callable[[Path], pd.DataFrame | None] = stored_table

    def __post_init__(self) -> None:
        if (self.plan is None) == (self.measure is None):
            raise ValueError(
                f"spec {self.name!r}: give exactly one of plan (engine runs) and measure "
                f"(a table computed without them), got "
                f"{'both' if self.plan is not None else 'neither'}"
            )
        files = (self.measured,) if isinstance(self.measured, str) else self.measured
        if not files or not all(f.endswith(".csv") for f in files):
            raise ValueError(
                f"spec {self.name!r}: measured must name .csv files, got {self.measured!r}"
            )


def plan_rows(spec: Spec, cfg: Any, scale: str, out: Path) -> pd.DataFrame:
    """The summaries of the planned runs: trained now if missing from the store (the
    borrowed experiment's, ``out/../<borrows>/sweep``, or ``out/sweep``); in a
    store-only report with no store, the per-run table an earlier report wrote into
    ``out`` (:func:`~implicit_reg.experiments._sweeps.stored_table`), or ``spec.stored``'s;
    with ``Plan.also``, each part with no store the table its owner's report wrote."""
    plan = spec.plan(cfg)
    parts = []
    for part in (plan, *plan.also):
        owner = part.borrows or spec.name
        rows = run_configs(
            list(part.runs),
            sweep_dir(Path(out), owner, spec.name),
            workers=workers_for(scale),
            vectorize=part.vectorize,
            train=part.train,
        )
        if plan.also:
            store = sweep_dir(Path(out), owner, spec.name)
            if not len(rows) and (table := stored_table(store.parent)) is not None:
                rows = table  # no store of this part: the per-run table its owner's report wrote
            rows["borrowed"] = owner
        parts.append(rows)
    if len(parts) > 1:
        notes = list(dict.fromkeys(r.attrs.get("note", "") for r in parts))
        rows = pd.concat(parts, ignore_index=True)
        rows.attrs["note"] = "\n\n".join(n for n in notes if n)
    if not len(rows) and (stored := spec.stored(out)) is not None:
        return stored
    return rows


def measured_rows(spec: Spec, cfg: Any, out: Path) -> pd.DataFrame | tuple[pd.DataFrame, ...]:
    """The table(s) of a spec that ``measure``s instead of planning runs: in a store-only
    report (:func:`~implicit_reg.experiments._sweeps.store_only`) the ones an earlier
    report wrote into ``out`` (``spec.measured``), read back; otherwise ``measure(cfg)``,
    computed now. The (first) table's ``attrs["note"]`` says which, for the compute
    section (none when computed now); ``attrs["stored"]`` marks a read-back."""
    files = (spec.measured,) if isinstance(spec.measured, str) else spec.measured
    paths = [Path(out) / f for f in files]
    if not (store_only() and paths[0].is_file()):
        return spec.measure(cfg)
    tables = tuple(pd.read_csv(p) if p.is_file() else pd.DataFrame() for p in paths)
    names = ", ".join(f"`{p.name}`" for p in paths if p.is_file())
    tables[0].attrs["note"] = (
        f"Re-judged from {names}, computed by an earlier report of this experiment (a "
        "store-only report); nothing was recomputed."
    )
    tables[0].attrs["stored"] = True
    return tables[0] if isinstance(spec.measured, str) else tables


def computed_cost(out: Path, name: str, scale: str) -> dict[str, float] | None:
    """The wall and CPU time that ``out/summary.json`` records for experiment ``name`` at
    ``scale``: the cost of the report that computed (trained or measured) its results,
    which a store-only report keeps (a summary written by a store-only report carries
    it on, its own time under ``regenerated_store_only``). None when there is none."""
    path = Path(out) / "summary.json"
    if not path.is_file():
        return None
    try:
        s = json.loads(path.read_text())
    except ValueError:
        return None
    if s.get("name") != name or s.get("scale") != scale or s.get("wall_time_s") is None:
        return None
    return {"wall_time_s": float(s["wall_time_s"]), "cpu_time_s": float(s["cpu_time_s"])}


def run_spec(spec: Spec, scale: str, out: Path) -> Report:
    """Run ``spec`` at ``scale`` into ``out``: plan and runs (or the measured table, written
    first), analysis, claims, figures, the compute note, and the written report. A
    store-only report that computed nothing keeps the cost the earlier report recorded
    (:func:`computed_cost`; none when there is none) and adds its own as a regeneration."""
    cfg = select_scale(spec.configs, scale)
    cost = computed_cost(out, spec.name, scale) if store_only() else None
    report = Report(spec.name, spec.title, scale, out, cfg, spec.paper)
    if spec.measure is not None:
        rows = measured_rows(spec, cfg, out)
        if isinstance(spec.measured, str):
            report.add_data(rows, spec.measured)
        else:
            if len(rows) != len(spec.measured):
                raise ValueError(
                    f"spec {spec.name!r}: measure returned {len(rows)} tables for the "
                    f"{len(spec.measured)} files {spec.measured}"
                )
            for table, filename in zip(rows, spec.measured):
                if len(table):
                    report.add_data(table, filename)
    else:
        rows = plan_rows(spec, cfg, scale, out)
    analysis = spec.analyze(rows, cfg)
    report.claims.extend(spec.claims(analysis, cfg))
    for fig, filename, caption in spec.figures(analysis, cfg):
        report.add_figure(fig, filename, caption)
    if spec.extras is not None:
        spec.extras(report, analysis, cfg)
    first = rows[0] if isinstance(rows, tuple) else rows
    if note := first.attrs.get("note", ""):
        report.add_text(note, heading="Compute")
    if store_only() and (spec.measure is None or first.attrs.get("stored")):
        # nothing computed by this report: the cost is the earlier report's, or unknown
        report.computed_cost = cost or {"wall_time_s": None, "cpu_time_s": None}
    return report.write()
