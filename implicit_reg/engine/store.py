"""The on-disk result store: one directory per run, named by the config hash.

Layout of a store root::

    ROOT/<config_hash>/config.json    the resolved RunConfig
                       meta.json      package, torch, python versions, host, times
                       history.csv    long form: step, metric, value
                       checkpoint.pt  optional: model + optimizer state
                       summary.json   the wide final summary, written LAST

Every file is written atomically (a temporary file in the same directory,
then ``os.replace``), so a reader never sees half a file, and a run counts as
complete only when its ``summary.json`` exists: a process killed at any
moment leaves either a complete run or an incomplete one, which a resumed
sweep redoes. Every backend (local, process pool, and later vectorized or
Ray) hands its :class:`~implicit_reg.engine.train.RunResult` objects to
:meth:`ResultStore.write`, the store's only writer.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunConfig

if TYPE_CHECKING:  # pragma: no cover
    from .train import RunResult

__all__ = [
    "CONFIG_FILE",
    "META_FILE",
    "HISTORY_FILE",
    "SUMMARY_FILE",
    "CHECKPOINT_FILE",
    "ResultStore",
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


def versions() -> dict[str, str]:
    """Versions of the software that produced a run (written to meta.json)."""
    import numpy
    import torch

    from .. import __version__

    return {
        "implicit_reg": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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

    def prepare(self, config: RunConfig) -> Path:
        """Create the run directory, clearing what an incomplete earlier attempt left there.

        A complete run's directory is never cleared here; rerunning it
        (``resume=False``) overwrites each file atomically instead.
        """
        d = self.path_for(config)
        if d.exists() and not (d / SUMMARY_FILE).exists():
            shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write(self, result: RunResult) -> Path:
        """Write one run: config, versions, history, checkpoint, then the summary.

        The summary goes last, so the run is complete only when everything
        else is on disk.
        """
        d = self.prepare(result.config)
        atomic_write_json(d / CONFIG_FILE, result.config.to_dict())
        atomic_write_json(d / META_FILE, result.meta)
        atomic_write_text(d / HISTORY_FILE, history_csv(result.history))
        if result.checkpoint is not None:
            atomic_write_bytes(d / CHECKPOINT_FILE, result.checkpoint)
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
            d for d in sorted(self.root.iterdir()) if d.is_dir() and not (d / SUMMARY_FILE).exists()
        ]
