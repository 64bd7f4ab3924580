"""The on-disk result store: one directory per run, named by the config hash.

Layout of a store root::

    ROOT/<config_hash>/config.json    the resolved RunConfig
                       meta.json      package, torch, python versions, host, times,
                                      how it was trained (alone or in an ensemble)
                       history.csv    long form: step, metric, value
                       checkpoint.pt  optional: model + optimizer state
                       params.pt      optional (save_params): final and initial model state
                       checkpoints/   optional: mid-run checkpoints (checkpoint_every)
                       summary.json   the wide final summary, written LAST
    ROOT/.ensembles/<id>/             mid-run checkpoints of a vectorized ensemble

A sweep directory holds ``sweep.json`` (:data:`MANIFEST_FILE`: the spec and
its run hashes) and a store root ``runs/`` (:data:`RUNS_DIR`);
:func:`store_root` and :func:`complete_run_dirs` find the runs of either.

Every file is written atomically (a temporary file in the same directory,
then ``os.replace``), so a reader never sees half a file, and a run counts as
complete only when its ``summary.json`` exists: a process killed at any
moment leaves either a complete run or an incomplete one, which a resumed
sweep redoes (from its last mid-run checkpoint, if it has one). Every backend
(serial, process pool, vectorized, Ray) hands its
:class:`~implicit_reg.engine.record.RunResult` objects to :meth:`ResultStore.write`,
the store's only writer.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunConfig
from .record import versions

if TYPE_CHECKING:  # pragma: no cover
    from .record import RunResult

__all__ = [
    "CONFIG_FILE",
    "META_FILE",
    "HISTORY_FILE",
    "SUMMARY_FILE",
    "CHECKPOINT_FILE",
    "PARAMS_FILE",
    "CHECKPOINTS_DIR",
    "RUNS_DIR",
    "MANIFEST_FILE",
    "ResultStore",
    "store_root",
    "complete_run_dirs",
    "read_json",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "versions",
]

CONFIG_FILE = "config.json"
META_FILE = "meta.json"
HISTORY_FILE = "history.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
PARAMS_FILE = "params.pt"
CHECKPOINTS_DIR = "checkpoints"
ENSEMBLES_DIR = ".ensembles"
RUNS_DIR = "runs"
MANIFEST_FILE = "sweep.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same directory, are flushed and
    fsync'ed, and the file is moved over ``path`` with ``os.replace`` (atomic
    on POSIX and Windows when both are on one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """Replace non-finite floats by None (strict JSON has no NaN/inf) — but keep them
    readable by writing them as strings "nan"/"inf"/"-inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (non-finite floats written as the strings "nan", "inf", "-inf")."""
    text = json.dumps(_clean_floats(obj), indent=2, sort_keys=True, default=_json_default)
    atomic_write_text(path, text + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON written by :func:`atomic_write_json`, turning "nan"/"inf" back into floats
    for the keys that hold numbers."""
    with open(path, encoding="utf-8") as fh:
        return _restore_floats(json.load(fh))


def _restore_floats(obj: Any) -> Any:
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _restore_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_floats(v) for v in obj]
    return obj


def history_csv(rows: Iterable[dict[str, Any]]) -> str:
    """Long-form rows ``{step, metric, value}`` as CSV text (``repr`` floats: lossless)."""
    buf = io.StringIO()
    buf.write("step,metric,value\n")
    for r in rows:
        buf.write(f"{int(r['step'])},{r['metric']},{float(r['value'])!r}\n")
    return buf.getvalue()


class ResultStore:
    """A directory of run directories, each named by :meth:`RunConfig.config_hash`.

    Thin: it knows where a run lives, whether it is complete, how to write a
    :class:`~implicit_reg.engine.train.RunResult` atomically and how to read it back.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, config: RunConfig) -> Path:
        return self.root / config.config_hash()

    def is_complete(self, config: RunConfig) -> bool:
        """A run is complete when its summary exists (the summary is written last)."""
        return (self.path_for(config) / SUMMARY_FILE).is_file()

    def status(self, config: RunConfig) -> str | None:
        """The recorded status ("complete", "diverged", "failed") or None if not complete."""
        path = self.path_for(config) / SUMMARY_FILE
        if not path.is_file():
            return None
        return read_json(path).get("status")

    def checkpoint_dir(self, config: RunConfig) -> Path:
        """Where a run's mid-run checkpoints live (``<run>/checkpoints/``)."""
        return self.path_for(config) / CHECKPOINTS_DIR

    def ensemble_checkpoint_dir(self, configs: Iterable[RunConfig]) -> Path:
        """Where the mid-run checkpoints of a vectorized ensemble of ``configs`` live:
        named by the hash of the members' config hashes, in order."""
        key = ",".join(c.config_hash() for c in configs)
        return self.root / ENSEMBLES_DIR / hashlib.sha256(key.encode()).hexdigest()[:12]

    def prepare(self, config: RunConfig) -> Path:
        """Create the run directory, clearing what an incomplete earlier attempt left
        there except its mid-run checkpoints.

        A complete run's directory is never cleared here; rerunning it
        (``resume=False``) overwrites each file atomically instead.
        """
        d = self.path_for(config)
        if d.exists() and not (d / SUMMARY_FILE).exists():
            for item in d.iterdir():
                if item.name == CHECKPOINTS_DIR:
                    continue
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write(self, result: RunResult) -> Path:
        """Write one run: config, versions, history, checkpoint, parameters, then the summary.

        The summary goes last, so the run is complete only when everything
        else is on disk.
        """
        d = self.prepare(result.config)
        atomic_write_json(d / CONFIG_FILE, result.config.to_dict())
        atomic_write_json(d / META_FILE, result.meta)
        atomic_write_text(d / HISTORY_FILE, history_csv(result.history))
        if result.checkpoint is not None:
            atomic_write_bytes(d / CHECKPOINT_FILE, result.checkpoint)
        if result.params is not None:
            atomic_write_bytes(d / PARAMS_FILE, result.params)
        atomic_write_json(d / SUMMARY_FILE, result.summary)
        return d

    def read_summary(self, config: RunConfig) -> dict[str, Any]:
        return read_json(self.path_for(config) / SUMMARY_FILE)

    def run_dirs(self) -> Iterator[Path]:
        """Complete run directories under the root, sorted by name."""
        if not self.root.is_dir():
            return
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and (d / SUMMARY_FILE).is_file() and (d / CONFIG_FILE).is_file():
                yield d

    def incomplete_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [
            d
            for d in sorted(self.root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and not (d / SUMMARY_FILE).exists()
        ]


def store_root(sweep_dir: str | Path) -> Path:
    """The directory holding the run directories: ``sweep_dir/runs`` for a sweep,
    else ``sweep_dir`` itself (a store written by ``implicit-reg train --out``)."""
    d = Path(sweep_dir)
    if not d.is_dir():
        raise ValueError(f"directory {str(d)!r} does not exist")
    return d / RUNS_DIR if (d / RUNS_DIR).is_dir() else d


def complete_run_dirs(sweep_dir: str | Path, *, all_runs: bool = False) -> list[Path]:
    """The complete run directories of a sweep (only those its ``sweep.json`` lists,
    unless ``all_runs``) or of a plain store root."""
    dirs = list(ResultStore(store_root(sweep_dir)).run_dirs())
    manifest = Path(sweep_dir) / MANIFEST_FILE
    if not all_runs and manifest.is_file():
        wanted = set(read_json(manifest).get("runs", []))
        dirs = [p for p in dirs if p.name in wanted]
    return dirs
