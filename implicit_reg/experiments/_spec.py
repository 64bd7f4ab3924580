"""An experiment as a spec: what it runs, what it computes, what it claims, what it draws.

A :class:`Spec` declares a reproduction; :func:`run_spec` is the one runner that
does the rest (scale selection, training or reading the runs, the compute note,
writing the report). The parts, each a plain function a test can call on a
synthetic run table:

- ``configs``: ``{scale: config}`` for :data:`~implicit_reg.report.report.SCALES`;
- ``plan(cfg) -> Plan``: the engine runs it needs and, explicitly, the experiment
  whose run store holds them (``borrows``), instead of a path convention;
- ``analyze(rows, cfg) -> A``: a typed result (a dataclass) from the runs'
  summaries (one row per run, the columns of
  :func:`implicit_reg.report.results.load_summaries`);
- ``claims(a, cfg) -> [Claim]``: each claim with the tests of
  :mod:`implicit_reg.stats` that decide it;
- ``figures(a, cfg) -> [(Figure, file name, caption)]`` and ``extras(report, a,
  cfg)`` for tables and data files.

The experiment module keeps its ``run(scale, out)`` entry point as
``run_spec(SPEC, scale, out)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd
from matplotlib.figure import Figure

from implicit_reg.engine.config import RunConfig
from implicit_reg.report.report import Claim, Report, select_scale

from ._sweeps import run_configs, stored_table, sweep_dir, workers_for

__all__ = ["Plan", "Spec", "run_spec", "plan_rows"]

A = TypeVar("A")


@dataclasses.dataclass(frozen=True)
class Plan:
    """The engine runs an experiment needs. ``borrows``: the experiment whose run store
    holds (and receives) them, when they are shared with it; None: its own store."""

    runs: tuple[RunConfig, ...]
    borrows: str | None = None


@dataclasses.dataclass(frozen=True)
class Spec(Generic[A]):
    """A reproduction, declared (see the module docstring)."""

    name: str
    title: str
    paper: str
    configs: Mapping[str, Any]
    plan: Callable[[Any], Plan]
    analyze: Callable[[pd.DataFrame, Any], A]
    claims: Callable[[A, Any], Sequence[Claim]]
    figures: Callable[[A, Any], Sequence[tuple[Figure, str, str]]] = lambda a, cfg: ()
    extras: Callable[[Report, A, Any], None] | None = None


def plan_rows(spec: Spec, cfg: Any, scale: str, out: Path) -> pd.DataFrame:
    """The summaries of the planned runs: trained now if missing from the store (the
    borrowed experiment's, ``out/../<borrows>/sweep``, or ``out/sweep``); in a
    store-only report with no store, the per-run table an earlier report wrote into
    ``out`` (:func:`~implicit_reg.experiments._sweeps.stored_table`)."""
    plan = spec.plan(cfg)
    owner = plan.borrows or spec.name
    rows = run_configs(
        list(plan.runs), sweep_dir(Path(out), owner, spec.name), workers=workers_for(scale)
    )
    if not len(rows) and (stored := stored_table(out)) is not None:
        return stored
    return rows


def run_spec(spec: Spec, scale: str, out: Path) -> Report:
    """Run ``spec`` at ``scale`` into ``out``: plan, runs, analysis, claims, figures, the
    compute note, and the written report."""
    cfg = select_scale(spec.configs, scale)
    report = Report(spec.name, spec.title, scale, out, cfg, spec.paper)
    rows = plan_rows(spec, cfg, scale, out)
    analysis = spec.analyze(rows, cfg)
    report.claims.extend(spec.claims(analysis, cfg))
    for fig, filename, caption in spec.figures(analysis, cfg):
        report.add_figure(fig, filename, caption)
    if spec.extras is not None:
        spec.extras(report, analysis, cfg)
    report.add_text(rows.attrs.get("note", ""), heading="Compute")
    return report.write()
