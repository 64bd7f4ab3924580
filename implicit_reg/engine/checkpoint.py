"""Checkpoint files: the one writer and the one reader of model (and training) state.

A checkpoint is a ``torch.save`` dict. Every checkpoint has

- ``state_dict``: the model's ``state_dict()``;
- ``model_spec``: the ``build_model`` arguments that rebuild its architecture;
- ``dataset_spec``, ``loss``, ``config``: what it was trained on;
- ``step``, ``status``.

The end-of-run file ``checkpoint.pt`` (``checkpoint=True``) adds the
``optimizer`` state; ``params.pt`` (``save_params=True``) adds ``init_state``;
mid-run checkpoints (``checkpoint_every``) add
everything a resumed run needs to continue bit for bit (see
:mod:`implicit_reg.engine.loop`).

Where mid-run checkpoints go is decided in one place,
:func:`mid_run_checkpoints`: the runs' folder in the result store (one run's
``<run>/checkpoints/``, an ensemble's ``.ensembles/<id>/``), only with
``checkpoint_every`` and a store, emptied first when any of the runs is
already complete; :class:`Checkpoints` writes, finds and prunes the files.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .store import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .store import ResultStore

__all__ = [
    "to_bytes",
    "read_checkpoint",
    "read_model_state",
    "load_checkpoint",
    "Checkpoints",
    "mid_run_checkpoints",
]

_REQUIRED = ("model_spec", "dataset_spec", "loss", "state_dict")


def to_bytes(payload: dict[str, Any]) -> bytes:
    """``torch.save`` bytes of a checkpoint dict (written atomically by the store)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def read_checkpoint(path: str | Path, *, what: str = "checkpoint") -> dict[str, Any]:
    """The checkpoint dict at ``path`` (on CPU); ``ValueError`` if the file is missing,
    unreadable or not an implicit-reg checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is bad input here
        raise ValueError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from None
    if (
        isinstance(ckpt, dict)
        and "state_dict" not in ckpt
        and "state_dict" in ckpt.get("stepper", {})
    ):
        ckpt["state_dict"] = ckpt["stepper"]["state_dict"]  # a serial run's mid-run checkpoint
    missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not an implicit-reg checkpoint (missing {missing})")
    return ckpt


def read_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model ``state_dict`` of a checkpoint (for ``init_from``)."""
    return read_checkpoint(path, what="init_from checkpoint")["state_dict"]


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict, dict, str, dict]:
    """(model, model_spec, dataset_spec, loss name, initial state) from a training checkpoint.

    The model is rebuilt with ``implicit_reg.workloads.models.build_model(**model_spec)``
    in the dtype of the saved weights; the initial state is the same build
    before loading (``build_model`` is deterministic in its seed), or the file's own
    ``init_state`` where it has one (``params.pt`` of ``save_params``).
    """
    from ..workloads.models import build_model

    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    model = build_model(**ckpt["model_spec"]).to(dtype)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "init_state" in ckpt:
        init = {k: v.detach().clone() for k, v in ckpt["init_state"].items()}
    model.load_state_dict(state)
    return model, dict(ckpt["model_spec"]), dict(ckpt["dataset_spec"]), ckpt["loss"], init


class Checkpoints:
    """Mid-run checkpoints in one directory: ``step_<step>.pt``, written atomically.

    ``keep`` files are kept while training (two: a kill while one is being
    written leaves the other); :meth:`finish` leaves the last ``keep_last`` once
    the run has ended (``keep_checkpoints``, 1 by default; 0 removes them).
    Built by :func:`mid_run_checkpoints`.
    """

    PATTERN = re.compile(r"step_(\d+)\.pt$")

    def __init__(
        self, directory: str | Path, every: int, *, keep: int = 2, keep_last: int = 1
    ) -> None:
        self.dir, self.every, self.keep, self.keep_last = (
            Path(directory),
            int(every),
            keep,
            keep_last,
        )

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.dir.iterdir() if (m := self.PATTERN.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        path = atomic_write_bytes(self.dir / f"step_{step:09d}.pt", to_bytes(payload))
        self.prune(self.keep)
        return path

    def latest(self, hashes: list[str]) -> dict[str, Any] | None:
        """The newest readable checkpoint of these runs (by config hash), or None."""
        for path in reversed(self.files()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged file: try the one before
                continue
            if isinstance(state, dict) and state.get("hashes") == hashes:
                return state
        return None

    def prune(self, keep: int) -> None:
        files = self.files()
        for path in files[: max(0, len(files) - keep)]:
            path.unlink(missing_ok=True)

    def finish(self) -> None:
        """The run has ended: keep the last ``keep_last`` files."""
        self.prune(self.keep_last)


def mid_run_checkpoints(
    configs: Sequence[RunConfig], store: ResultStore | None
) -> Checkpoints | None:
    """Where the mid-run checkpoints of ``configs`` (one run, or the members of one
    ensemble, in order) go: the one decision, for every way of training.

    None without a store or without ``checkpoint_every`` (of the first config: an
    ensemble's members share it). Otherwise a :class:`Checkpoints` in the store's
    folder for these runs (:meth:`~implicit_reg.engine.store.ResultStore.checkpoint_dir`
    of one run, :meth:`~implicit_reg.engine.store.ResultStore.ensemble_checkpoint_dir`
    of several), keeping the last ``keep_checkpoints`` when the run ends. The folder
    is emptied first if any of the runs is already complete: checkpoints continue a
    run that was interrupted, never seed the rerun of a finished one (which starts
    again from step 0, with today's code).
    """
    configs = list(configs)
    if store is None or not configs or not configs[0].checkpoint_every:
        return None
    if len(configs) == 1:
        directory = store.checkpoint_dir(configs[0])
    else:
        directory = store.ensemble_checkpoint_dir(configs)
    if any(store.is_complete(c) for c in configs) and directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
    first = configs[0]
    return Checkpoints(directory, first.checkpoint_every, keep_last=first.keep_checkpoints)
