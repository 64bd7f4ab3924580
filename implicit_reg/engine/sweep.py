"""Sweeps: the Cartesian product of value lists for any config fields, resumable and parallel.

A sweep file (TOML; YAML too if PyYAML is installed)::

    name = "lr-width"              # optional
    [base]                         # fields shared by every run
    dataset = "mnist1d"
    steps = 500
    [grid]                         # one run per combination
    lr = [0.01, 0.1, 1.0]
    width = {geom = [4, 1024, 9]}  # 9 values geometrically spaced from 4 to 1024
    seed = [0, 1, 2]

A grid value is a non-empty list, ``{geom = [start, stop, num]}`` or
``{lin = [start, stop, num]}`` (integer fields are rounded, duplicates
dropped). Anything else is a ``ValueError`` that says what is wrong.

Execution (:func:`run_sweep`): the sweep directory holds ``sweep.json``
(the spec and the list of run hashes) and ``runs/<config_hash>/`` per run
(:mod:`implicit_reg.engine.store`). With ``resume=True`` complete runs are skipped
and incomplete ones redone, so a sweep killed at any moment (even by
SIGKILL) is finished by running it again, with exactly one result per grid
point; runs with ``checkpoint_every`` continue from their last mid-run
checkpoint instead of step 0.

Backends (:mod:`implicit_reg.engine.backends`, re-exported here) train the pending
configs and yield each result; :func:`run_sweep` writes each through
:class:`~implicit_reg.engine.store.ResultStore`, the one atomic writer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import (
    Backend,
    process_pool_backend,
    serial_backend,
    vectorized_backend,
    worker_threads,
)
from .claims import claimed_results
from .config import RunConfig, config_fields, load_toml, parse_field_value
from .record import now
from .store import MANIFEST_FILE, RUNS_DIR, ResultStore, atomic_write_json

__all__ = [
    "SweepSpec",
    "SweepReport",
    "Backend",
    "load_sweep_file",
    "parse_grid_option",
    "parse_set_option",
    "expand_grid_value",
    "serial_backend",
    "process_pool_backend",
    "vectorized_backend",
    "run_sweep",
    "worker_threads",
    "RUNS_DIR",
    "MANIFEST_FILE",
]

_TOP_LEVEL = ("name", "description", "base", "grid")


# ------------------------------------------------------------------ the grid
def expand_grid_value(key: str, value: Any) -> list[Any]:
    """The list of values one grid entry stands for (see the module docstring)."""
    if isinstance(value, list):
        if not value:
            raise ValueError(f"grid.{key} is an empty list; give at least one value")
        return list(value)
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in ("geom", "lin"):
            raise ValueError(
                f"grid.{key} = {value!r}: a table must be {{geom = [start, stop, num]}} "
                "or {lin = [start, stop, num]}"
            )
        kind, args = next(iter(value.items()))
        ok = (
            isinstance(args, list)
            and len(args) == 3
            and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
            and float(args[2]).is_integer()
            and args[2] >= 1
        )
        if not ok:
            raise ValueError(
                f"grid.{key}.{kind} must be [start, stop, num] with num an integer >= 1, got {args!r}"
            )
        start, stop, num = float(args[0]), float(args[1]), int(args[2])
        if kind == "geom" and (start <= 0 or stop <= 0):
            raise ValueError(f"grid.{key}.geom needs start and stop > 0, got {start}, {stop}")
        xs = np.geomspace(start, stop, num) if kind == "geom" else np.linspace(start, stop, num)
        typ = config_fields().get(key, "")
        if typ.replace("| None", "").strip() == "int":
            out = []
            for x in xs:
                if int(round(x)) not in out:
                    out.append(int(round(x)))
            return out
        return [float(f"{x:.6g}") for x in xs]  # 6 significant digits: readable, stable hashes
    raise ValueError(
        f"grid.{key} must be a list of values or {{geom|lin = [start, stop, num]}}, got {value!r}"
    )


@dataclass(frozen=True)
class SweepSpec:
    """A base config and a grid: one run per element of the Cartesian product of the grid."""

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    name: str = "sweep"
    description: str = ""

    def __post_init__(self) -> None:
        fields = config_fields()
        for where, table in (("base", self.base), ("grid", self.grid)):
            if not isinstance(table, dict):
                raise ValueError(f"[{where}] must be a table, got {type(table).__name__}")
            unknown = sorted(set(table) - set(fields))
            if unknown:
                raise ValueError(
                    f"[{where}] has unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(fields)}"
                )
        both = sorted(set(self.base) & set(self.grid))
        if both:
            raise ValueError(
                f"field(s) {', '.join(both)} appear in both [base] and [grid]; keep one"
            )
        expanded = {k: expand_grid_value(k, v) for k, v in self.grid.items()}
        object.__setattr__(self, "grid", expanded)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

    def points(self) -> list[dict[str, Any]]:
        """The grid points, as ``{field: value}`` dicts, in row-major order of ``grid``."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.grid.values())]

    def configs(self) -> list[RunConfig]:
        """One validated :class:`RunConfig` per grid point; equal configs collapse to one."""
        try:
            base = RunConfig.from_dict(self.base)
        except (TypeError, ValueError) as err:
            raise ValueError(f"[base]: {err}") from None
        out: dict[str, RunConfig] = {}
        for point in self.points():
            try:
                cfg = base.replace(**point)
            except (TypeError, ValueError) as err:
                raise ValueError(f"grid point {point}: {err}") from None
            out.setdefault(cfg.config_hash(), cfg)
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "base": self.base,
            "grid": self.grid,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "sweep spec") -> SweepSpec:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: the top level must be a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP_LEVEL))
        if unknown:
            raise ValueError(
                f"{source}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(_TOP_LEVEL)}"
            )
        if "grid" not in data and "base" not in data:
            raise ValueError(f"{source}: needs a [base] and/or a [grid] table")
        name = data.get("name", Path(source).stem if source != "sweep spec" else "sweep")
        if not isinstance(name, str):
            raise ValueError(f"{source}: name must be a string")
        try:
            return cls(
                base=data.get("base", {}),
                grid=data.get("grid", {}),
                name=name,
                description=str(data.get("description", "")),
            )
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read a sweep spec from a TOML (or, with PyYAML, YAML) file; ``ValueError`` says why a
    file is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            data = load_toml(text)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError:
            raise ValueError(
                f"{path}: YAML sweep files need PyYAML (pip install pyyaml); or use TOML"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
    else:
        raise ValueError(f"{path}: unknown sweep file type {suffix!r}; use .toml (or .yaml)")
    return SweepSpec.from_dict(data, source=str(path))


def parse_set_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` from the command line into ``(key, typed value)``."""
    if "=" not in text:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    return key, parse_field_value(key, value)


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """``"lr=0.01,0.1,1"`` or ``"width=geom:4:1024:9"`` (or ``lin:``) into ``(key, values)``."""
    if "=" not in text:
        raise ValueError(f"expected KEY=V1,V2,... or KEY=geom:START:STOP:NUM, got {text!r}")
    key, value = (s.strip() for s in text.split("=", 1))
    if key not in config_fields():
        raise ValueError(
            f"unknown config field {key!r}; valid fields: {', '.join(config_fields())}"
        )
    head = value.split(":", 1)[0]
    if head in ("geom", "lin"):
        parts = value.split(":")[1:]
        try:
            args = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{key}={value}: expected {head}:START:STOP:NUM with numbers"
            ) from None
        return key, expand_grid_value(key, {head: args})
    if config_fields()[key] == "tuple[str, ...]":  # a grid over name lists: a;b,c
        return key, [parse_field_value(key, v) for v in value.split(";")]
    return key, [parse_field_value(key, v) for v in value.split(",")]


# ------------------------------------------------------------------ executor
@dataclass
class SweepReport:
    """What one call of :func:`run_sweep` did."""

    root: Path
    total: int
    skipped: int = 0
    done: int = 0
    complete: int = 0
    diverged: int = 0
    failed: int = 0
    lost: int = 0  # failed because a worker died; not stored, retried on resume
    hashes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        lost = f", {self.lost} of them lost with their worker (rerun to retry)" if self.lost else ""
        others = self.total - self.skipped - self.done  # stored by another sweep (claims.py)
        by_others = f", {others} by another sweep on this directory" if others > 0 else ""
        return (
            f"{self.total} runs: {self.skipped} already done, {self.done} run now "
            f"({self.complete} complete, {self.diverged} diverged, {self.failed} failed{lost})"
            f"{by_others} -> {self.root}"
        )


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("diverged {task.fields[diverged]}  failed {task.fields[failed]}"),
        console=Console(stderr=True),
        disable=not enabled,
    )


def run_sweep(
    spec: SweepSpec | Iterable[RunConfig],
    out_dir: str | Path,
    *,
    workers: int = 1,
    resume: bool = True,
    retry_failed: bool = False,
    backend: Backend | None = None,
    progress: bool = True,
    vectorize: bool | None = None,
) -> SweepReport:
    """Run every config of ``spec`` whose result is not already in ``out_dir``.

    Args:
        spec: a :class:`SweepSpec` or any iterable of configs.
        out_dir: the sweep directory (``sweep.json`` + ``runs/<hash>/``).
        workers: 1 runs in this process; more use :func:`process_pool_backend`.
            A run that raises is stored as "failed" with its traceback; a run
            whose worker process died is reported (``lost``) but not stored.
        resume: skip runs that are complete on disk (default); False redoes all.
        retry_failed: with ``resume``, redo runs recorded as "failed" too.
        backend: overrides ``workers`` (see the module docstring).
        progress: show a rich progress bar on stderr.
        vectorize: None (default) and True: the runs that differ only in seed, data seed,
            label noise, lr, momentum, weight decay, EGR coefficient or stopping
            thresholds train as one ensemble each, and (MLP and random features under
            GD/SGD) widths of one family are packed into one ensemble
            (:func:`implicit_reg.engine.plan.plan_sweep`); the jobs run longest first
            on ``workers`` processes (:func:`~implicit_reg.engine.vectorized_sweep.planned_backend`).
            False: one run at a time. A given ``backend`` with a ``vectorized``
            attribute (the Ray backend) is replaced by that backend unless False, so
            that the same planned jobs train where it runs; another is left as it is
            by None and wrapped by True (:func:`vectorized_backend`). The files are the same; the
            numbers agree with serial runs to rounding (float64: 1e-10 relative;
            float32 training can amplify rounding over long runs, ``docs/vectorized.md``),
            and each run's ``meta.json`` says how it was trained.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    if isinstance(spec, SweepSpec):
        configs, manifest = spec.configs(), spec.to_dict()
    else:
        unique: dict[str, RunConfig] = {}
        for c in spec:
            unique.setdefault(c.config_hash(), c)
        configs, manifest = list(unique.values()), {"name": out.name, "base": {}, "grid": {}}
    store = ResultStore(out / RUNS_DIR)
    hashes = [c.config_hash() for c in configs]
    manifest.update(runs=hashes, updated_at=now())
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST_FILE, manifest)

    def wanted(c: RunConfig) -> bool:
        if not resume:
            return True
        status = store.status(c)
        return status is None or (retry_failed and status == "failed")

    pending = [c for c in configs if wanted(c)]
    report = SweepReport(
        root=out, total=len(configs), skipped=len(configs) - len(pending), hashes=hashes
    )
    # jobs claimed at a time (claims.py): one per worker of ours; all for a given backend (Ray)
    at_once = workers if backend is None else None
    if backend is None and vectorize is not False:
        from .vectorized_sweep import planned_backend

        backend = planned_backend(workers)
    elif vectorize:
        backend = backend or (serial_backend if workers == 1 else process_pool_backend(workers))
        # a backend that places the work itself (Ray) offers `vectorized`: ensembles on its workers
        backend = getattr(backend, "vectorized", None) or vectorized_backend(backend)
    elif vectorize is None:  # a given backend: its planned version (Ray's), or it as it is
        backend = getattr(backend, "vectorized", None) or backend
    else:
        backend = backend or (serial_backend if workers == 1 else process_pool_backend(workers))
    shared = claimed_results(
        backend, pending, store, at_once=at_once, grouped=vectorize is not False, root=out
    )  # the runs no other sweep on this directory is training (claims in out/.claims)
    with _progress(progress) as bar, closing(shared):  # closed: claims released on any error
        task = bar.add_task(
            getattr(spec, "name", out.name),
            total=len(configs),
            completed=report.skipped,
            diverged=0,
            failed=0,
        )
        for result in shared:
            report.done += 1
            status = result.status
            if result.summary.get("lost"):
                report.lost += 1
                report.errors.append(result.summary.get("error", ""))
            else:
                store.write(result)
            if status == "diverged":
                report.diverged += 1
            elif status == "failed":
                report.failed += 1
            else:
                report.complete += 1
            bar.update(task, advance=1, diverged=report.diverged, failed=report.failed)
    return report
