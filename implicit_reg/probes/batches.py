"""The data a curvature operator sums over, as a sequence of loss terms.

Three forms of data are accepted (:func:`loss_terms`):

1. A pair of tensors ``(X, y)``, split into chunks of ``chunk_size`` rows;
   the loss of a chunk is ``loss_fn(model(x), y)``.
2. A re-iterable of ``(inputs, targets)`` batches (a ``DataLoader`` without
   shuffling) where ``inputs`` is a tensor (``model(x)``), a tuple
   (``model(*x)``) or a dict (``model(**x)``, as HuggingFace models take it);
   the batch size is the length of ``targets``.
3. A re-iterable of arbitrary batches with ``batch_loss(model, batch) ->
   (mean loss, batch size)``, a user function that calls the model itself.

In every case the full-data loss is the mean over samples,

    L(θ) = (1/N)·Σ_c n_c·L_c(θ),    N = Σ_c n_c,

so each term returns the *size-weighted* chunk loss n_c·L_c and the operator
divides the sum by N. The result does not depend on how the data is chunked.
Parameters outside the measured set and all buffers are taken from the model
(buffers as copies: a train-mode pass never changes the running statistics).

Bad input fails with a ``ValueError`` that names the chunk (chunk c is the
c-th slice of ``chunk_size`` rows, or the c-th batch, counted from 0): a NaN or
inf in the floating-point inputs or targets (checked on the first pass over the
data, :func:`loss_terms` without ``sizes``), and a chunk loss that is not finite
(checked at each evaluation, outside ``vmap``; one host sync per chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.objective import _is_pair

__all__ = ["Term", "loss_terms", "check_data", "check_finite", "batch_size_of", "to_device"]

BatchLoss = Callable[[nn.Module, object], tuple[Tensor, int]]


def to_device(obj, device):
    """Move a tensor, or the tensors in a tuple/list/dict, to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def batch_size_of(targets) -> int:
    """Samples in a batch: the length of its targets (or of their first tensor)."""
    if isinstance(targets, Tensor):
        return len(targets) if targets.dim() > 0 else 1
    if isinstance(targets, Mapping) and targets:
        return batch_size_of(next(iter(targets.values())))
    if isinstance(targets, (tuple, list)) and targets:
        return batch_size_of(targets[0])
    raise ValueError(f"cannot tell the batch size from targets of type {type(targets).__name__}")


def _call(model: nn.Module, state: dict, inputs):
    if isinstance(inputs, Mapping):
        return functional_call(model, state, (), dict(inputs))
    if isinstance(inputs, tuple):
        return functional_call(model, state, inputs)
    return functional_call(model, state, (inputs,))


class _BatchLossCall(nn.Module):
    """``batch_loss(model, batch)`` as a module, so ``functional_call`` can swap θ in."""

    def __init__(self, model: nn.Module, fn: BatchLoss, batch):
        super().__init__()
        self.m = model
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_batch", batch)

    def forward(self):
        return self._fn(self.m, self._batch)


def _scalar(loss, what: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{what} must return a scalar (mean-reduced) loss, got shape {shape}")
    return loss


def _floating(obj, path: str) -> Iterator[tuple[str, Tensor]]:
    """The floating-point tensors in a tensor, tuple/list or dict, with where they sit."""
    if isinstance(obj, Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield path, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _floating(v, f"{path}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _floating(v, f"{path}[{i}]")


def check_finite(obj, what: str, where: str, *, first_row: int = 0, of: str = "") -> None:
    """``ValueError`` naming ``where`` (the chunk), ``what`` and the rows (numbered from
    ``first_row``, followed by ``of``) if a floating-point tensor in ``obj`` holds a NaN or
    an inf."""
    for path, t in _floating(obj, what):
        bad = ~torch.isfinite(t)
        if not bool(bad.any()):
            continue
        kind = " and ".join(
            k for k, f in (("NaN", torch.isnan), ("inf", torch.isinf)) if f(t).any()
        )
        rows = ""
        if t.dim() > 0:
            idx = (bad.reshape(len(t), -1).any(dim=1).nonzero().flatten() + first_row).tolist()
            more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
            rows = f" at row{'s' if len(idx) > 1 else ''} {', '.join(map(str, idx[:5]))}{more}{of}"
        raise ValueError(f"{where}: {kind} in the {path}{rows}; clean or drop those rows")


def _finite_loss(loss: Tensor, where: str) -> Tensor:
    """The chunk loss, or a ``ValueError`` naming the chunk if it is NaN or inf. Under
    ``vmap`` a value cannot be branched on; there the check is skipped."""
    try:
        bad = not bool(torch.isfinite(loss.detach()))
    except RuntimeError:  # vmap: data-dependent control flow
        return loss
    if bad:
        raise ValueError(
            f"{where}: the loss is {float(loss.detach())} (not finite) at the parameters "
            "evaluated (the model's, or a probe's perturbation of them); the data were "
            "checked finite, so the outputs or the parameters are not (did the training diverge?)"
        )
    return loss


@dataclass
class Term:
    """One chunk of the data: n_c samples, loss n_c·L_c(θ_S), outputs f(θ_S) when known."""

    size: int
    model: nn.Module
    names: list[str]
    fixed: dict[str, Tensor]
    buffers: dict[str, Tensor]
    inputs: object = None
    targets: object = None
    loss_fn: Callable | None = None
    batch_loss: BatchLoss | None = None
    batch: object = None
    where: str = "chunk 0"  # names the chunk in error messages

    def state(self, params) -> dict[str, Tensor]:
        state = {**self.fixed, **{k: b.clone() for k, b in self.buffers.items()}}
        state.update(zip(self.names, params))
        return state

    def output(self, params) -> Tensor:
        """f_θ(x) of this chunk (needs (inputs, targets) batches)."""
        if self.batch_loss is not None:
            raise ValueError(
                "this operator needs the model's outputs: give data as (inputs, targets) "
                "batches with loss_fn, not batch_loss"
            )
        return _call(self.model, self.state(params), self.inputs)

    def output_loss(self, out: Tensor) -> Tensor:
        """n_c·ℓ(out, y): the weighted chunk loss as a function of the outputs."""
        loss = self.size * _scalar(self.loss_fn(out, self.targets), "loss_fn")
        return _finite_loss(loss, self.where)

    def loss(self, params) -> Tensor:
        """n_c·L_c(θ)."""
        if self.batch_loss is None:
            return self.output_loss(self.output(params))
        state = {"m." + k: v for k, v in self.state(params).items()}
        loss, n = functional_call(
            _BatchLossCall(self.model, self.batch_loss, self.batch), state, ()
        )
        if int(n) != self.size:
            raise ValueError(
                f"batch_loss returned batch size {n} for a batch it first sized {self.size}"
            )
        return _finite_loss(self.size * _scalar(loss, "batch_loss"), self.where)


class _OnDevice:
    """Re-iterable view of a batch iterable that moves each batch to ``device``."""

    def __init__(self, data: Iterable, device: torch.device):
        self.data, self.device = data, device

    def __iter__(self) -> Iterator:
        for batch in self.data:
            yield to_device(batch, self.device)


def check_data(data, device, batch_loss: BatchLoss | None):
    """Validate ``data`` and return it on ``device`` (a pair moved, an iterable wrapped)."""
    if _is_pair(data):
        if batch_loss is not None:
            raise ValueError("batch_loss takes an iterable of batches, not an (X, y) pair")
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        if len(x) == 0:
            raise ValueError("the data set is empty")
        return (x.to(device), y.to(device))
    if isinstance(data, (Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise ValueError(
            "data must be a pair of tensors (X, y) or an iterable of (inputs, targets) "
            f"batches, got {type(data).__name__}"
        )
    if iter(data) is data:
        raise ValueError("data must be re-iterable (a list or DataLoader), not a one-shot iterator")
    return _OnDevice(data, device)


def _size_of_batch(model, batch, batch_loss) -> int:
    if batch_loss is not None:
        with torch.no_grad():
            _, n = batch_loss(model, batch)
        return int(n)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            "each batch must be an (inputs, targets) pair; for other batches pass "
            "batch_loss=(model, batch) -> (mean loss, batch size)"
        )
    return batch_size_of(batch[1])


def loss_terms(
    model: nn.Module,
    names: list[str],
    data,
    *,
    loss_fn: Callable | None,
    batch_loss: BatchLoss | None = None,
    chunk_size: int | None = None,
    sizes: list[int] | None = None,
) -> Iterator[Term]:
    """One :class:`Term` per chunk; Σ_c term.loss(θ)/N is the full-data loss L(θ_S).

    ``sizes`` (batch sizes of an earlier pass) avoids an extra forward when
    ``batch_loss`` sizes the batches; without it (the first pass) each chunk's
    floating-point inputs and targets are checked finite (:func:`check_finite`).
    """
    chosen = set(names)
    fixed = {k: p.detach() for k, p in model.named_parameters() if k not in chosen}
    buffers = dict(model.named_buffers())
    common = dict(model=model, names=names, fixed=fixed, buffers=buffers, loss_fn=loss_fn)
    if _is_pair(data):
        x, y = data
        step = len(x) if chunk_size is None else chunk_size
        for c, i in enumerate(range(0, len(x), step)):
            xc, yc = x[i : i + step], y[i : i + step]
            where = f"chunk {c} (rows {i}-{i + len(xc) - 1} of the data)"
            if sizes is None:
                check_finite(xc, "inputs", where, first_row=i)
                check_finite(yc, "targets", where, first_row=i)
            yield Term(size=len(xc), inputs=xc, targets=yc, where=where, **common)
        return
    for c, batch in enumerate(data):
        where = f"chunk {c} (batch {c} of the data)"
        if sizes is None:
            if batch_loss is not None:
                check_finite(batch, "batch", where, of=" of the batch")
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                check_finite(batch[0], "inputs", where, of=" of the batch")
                check_finite(batch[1], "targets", where, of=" of the batch")
        n = (
            sizes[c]
            if sizes is not None and c < len(sizes)
            else _size_of_batch(model, batch, batch_loss)
        )
        if batch_loss is not None:
            yield Term(size=n, batch_loss=batch_loss, batch=batch, where=where, **common)
        else:
            yield Term(size=n, inputs=batch[0], targets=batch[1], where=where, **common)
