"""The run record: what one run produced, and the one builder of each of its parts.

- :class:`RunResult`: the wide ``summary``, the long ``history`` rows
  ``{"step", "metric", "value"}``, the run metadata and an optional
  end-of-run checkpoint and final parameters (bytes).
- :func:`build_summary`: the summary of a run that ended (complete or diverged).
- :func:`failed_result`: the record of a run that raised, or whose worker was
  lost (``lost=True``: reported, not stored, so a resumed sweep retries it).
- :func:`run_meta`: versions, host, thread count and times, plus how the run
  was trained (:func:`trained_alone`, :func:`trained_in_ensemble`).

Training (:mod:`implicit_reg.engine.train`) and the store
(:mod:`implicit_reg.engine.store`) both import this module; neither imports the other's
internals.
"""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

__all__ = [
    "STATUSES",
    "RunResult",
    "build_summary",
    "failed_result",
    "run_meta",
    "now",
    "versions",
    "trained_alone",
    "trained_in_ensemble",
]

STATUSES = ("complete", "diverged", "failed")


@dataclass
class RunResult:
    """What one run produced: the wide ``summary``, the long ``history`` rows
    ``{"step", "metric", "value"}``, run metadata, and optionally the
    serialized checkpoint (``torch.save`` bytes)."""

    config: RunConfig
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    checkpoint: bytes | None = None
    params: bytes | None = None  # save_params: final and initial model state (params.pt)

    @property
    def status(self) -> str:
        return self.summary["status"]

    def history_frame(self):
        """The history as a long-form ``pandas.DataFrame`` (step, metric, value)."""
        import pandas as pd

        return pd.DataFrame(self.history, columns=["step", "metric", "value"])

    def metric(self, name: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric."""
        return [(r["step"], r["value"]) for r in self.history if r["metric"] == name]


def build_summary(
    config: RunConfig,
    *,
    status: str,
    stop_reason: str,
    steps_done: int,
    per_epoch: int,
    diverged_at: int | None,
    diverged_loss: float | None,
    history: list[dict[str, Any]],
    n_params: int,
    data,
) -> dict[str, Any]:
    """The wide summary of a run that ended: status, where it stopped, sizes, and the
    final metrics (the last value of every metric in ``history`` for a complete run;
    the loss that diverged for a diverged one)."""
    if status == "complete":
        final = {r["metric"]: r["value"] for r in history}  # the last value of each
    else:
        final = {"train_loss": float(diverged_loss)}
    return {
        "config_hash": config.config_hash(),
        "status": status,
        "stop_reason": stop_reason,
        "steps_done": steps_done,
        "epochs_done": steps_done / per_epoch,
        "diverged_at": diverged_at,
        "n_params": n_params,
        "n_train": data.n_train,
        "num_classes": data.num_classes,
        "output_dim": data.output_dim,
        "error": None,
        **final,
    }


def failed_result(
    config: RunConfig, error: str, *, lost: bool = False, meta: dict[str, Any] | None = None
) -> RunResult:
    """The record of a run that raised (``error``: the traceback), or, with ``lost``,
    of one whose worker died: counted by the sweep but not stored, so a resumed sweep
    tries it again."""
    summary = {
        "config_hash": config.config_hash(),
        "status": "failed",
        "stop_reason": "lost" if lost else "failed",
        "error": error,
    }
    if lost:
        summary["lost"] = True
    return RunResult(config=config, summary=summary, meta=dict(meta or {}))


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def trained_alone() -> dict[str, Any]:
    """Provenance of a run trained by itself (``meta["trained"]``)."""
    return {"mode": "alone"}


def trained_in_ensemble(member: int, members: int) -> dict[str, Any]:
    """Provenance of member ``member`` (0-based) of a vectorized ensemble of ``members`` runs;
    ``meta["ensemble"]["runs"]`` lists the config hashes of all of them."""
    return {"mode": "ensemble", "member": member, "members": members}


def run_meta(started_at: str, trained: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """``meta.json``: versions, host, torch threads, start and end times, provenance."""
    import torch

    return {
        **versions(),
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "started_at": started_at,
        "finished_at": now(),
        "trained": trained,
        **extra,
    }
