"""Checkpoint files: the one writer and the one reader of model (and training) state.

A checkpoint is a ``torch.save`` dict. Every checkpoint has

- ``state_dict``: the model's ``state_dict()``;
- ``model_spec``: the ``build_model`` arguments that rebuild its architecture;
- ``dataset_spec``, ``loss``, ``config``: what it was trained on;
- ``step``, ``status``.

The end-of-run file ``checkpoint.pt`` (``checkpoint=True``) adds the
``optimizer`` state; mid-run checkpoints (``checkpoint_every``) add
everything a resumed run needs to continue bit for bit (see
:mod:`implicit_reg.engine.loop`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

__all__ = ["to_bytes", "read_checkpoint", "read_model_state", "load_checkpoint"]

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
    before loading (``build_model`` is deterministic in its seed).
    """
    from ..workloads.models import build_model

    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    model = build_model(**ckpt["model_spec"]).to(dtype)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model, dict(ckpt["model_spec"]), dict(ckpt["dataset_spec"]), ckpt["loss"], init
