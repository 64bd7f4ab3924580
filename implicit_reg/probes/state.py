"""Leave the model exactly as it was found.

Every probe runs inside :func:`preserved`. On entry it records what a probe
could disturb; on exit it puts back whatever changed, bit for bit:

- parameter values and their ``requires_grad`` flags,
- ``.grad`` of every parameter (the same tensor object, same contents),
- the train/eval flag of every submodule,
- every buffer (BatchNorm running mean/var and ``num_batches_tracked``),
- the global torch RNG state (CPU, and CUDA when it is initialized).

Tensors are written back only when they differ from the snapshot, so a probe
that touched nothing does not bump any tensor's version counter (a user's
pending autograd graph stays valid).

Evaluation mode. ``mode="eval"`` (the default of every probe) switches the
whole model to eval mode for the measurement: dropout is off and BatchNorm
uses its running statistics, so the loss is one deterministic function of θ
and its Hessian one fixed linear operator. ``mode="train"`` measures the
training-mode loss: BatchNorm uses chunk statistics (so the result depends on
the chunk size) and dropout is on. The probes then re-seed the RNG before
every pass over the data so that all passes of one probe draw the same
dropout masks, and restore the caller's RNG afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["MODES", "DEFAULT_MODE", "check_mode", "preserved", "seeded_rng"]

#: the modes a probe measures the model in (see the module docstring)
MODES = ("eval", "train")
#: the mode of every probe unless told: dropout off, BatchNorm's running statistics
DEFAULT_MODE = "eval"


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is ``"eval"`` or ``"train"``, else raise ``ValueError``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _restore(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy ``src`` into ``dst`` in place, only if they differ (bitwise)."""
    if not torch.equal(dst, src):  # NaN != NaN: a NaN tensor is re-copied, harmlessly
        with torch.no_grad():
            dst.copy_(src)


@contextmanager
def preserved(model: nn.Module, mode: str | None = None) -> Iterator[nn.Module]:
    """Context manager that restores ``model`` and the global RNG on exit.

    Args:
        model: the module a probe measures.
        mode: ``"eval"`` or ``"train"`` puts every submodule in that mode for
            the duration of the block; None keeps the modes as they are.

    Yields:
        ``model`` itself.

    Example::

        with preserved(model, mode="eval"):
            ...  # anything; model, .grad, modes, buffers and RNG come back
    """
    if mode is not None:
        check_mode(mode)
    params = [(p, p.detach().clone(), p.requires_grad) for p in model.parameters()]
    grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p, _, _ in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    rng = _rng_state()
    try:
        if mode is not None:
            model.train(mode == "train")
        yield model
    finally:
        _set_rng_state(rng)
        for m, training in modes:
            m.training = training
        for b, saved in buffers:
            _restore(b, saved)
        for p, saved, requires_grad in params:
            _restore(p, saved)
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
        for p, grad, saved in grads:
            if p.grad is not grad:
                p.grad = grad
            if grad is not None:
                _restore(grad, saved)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the block with the global RNG seeded to ``seed``; restore it after.

    Used in ``mode="train"`` so every pass of a probe draws the same dropout
    masks (the Hessian is then one fixed operator) while the caller's RNG
    stream is left untouched.
    """
    rng = _rng_state()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        _set_rng_state(rng)
