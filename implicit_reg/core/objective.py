"""Full-data losses computed in physical chunks.

Convention (used by the probes, the training engine and the benchmarks):
the full-batch loss is the mean over all N samples,

    L(θ) = (1/N)·Σ_i ℓ(f_θ(x_i), y_i) = Σ_c (n_c/N)·L_c(θ),

where L_c is the *mean* loss of chunk c with n_c samples. ``loss_fn`` must
therefore be mean-reduced (``nn.CrossEntropyLoss()``, ``nn.MSELoss()``).
Accumulating the size-weighted chunk means makes L, ∇L and every HVP
independent of the chunk size, including a last chunk of a different size.

A data set is either a pair of tensors ``(X, y)`` or an iterable of
``(x, y)`` batches (a ``DataLoader``); the iterable must yield the same
batches every time it is iterated (no shuffling) for an HVP to be one
linear operator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .hvp import Params, check_scalar_loss

__all__ = [
    "Data",
    "iter_chunks",
    "num_samples",
    "trainable_named_params",
    "load_trainable_params",
    "chunk_loss_fns",
    "full_loss",
    "full_gradient",
    "summed_loss_and_grad",
]

Data = tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]]


def _is_pair(data) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    )


def iter_chunks(data: Data, chunk_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` chunks. A tensor pair is split into ``chunk_size`` rows
    (None: one chunk); an iterable of batches is yielded as it is."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    if _is_pair(data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        n = len(x)
        step = n if chunk_size is None else chunk_size
        for i in range(0, n, max(step, 1)):
            yield x[i : i + step], y[i : i + step]
    else:
        yield from data


def num_samples(data: Data) -> int:
    """N, the number of samples; raises ``ValueError`` on an empty data set."""
    n = len(data[0]) if _is_pair(data) else sum(len(x) for x, _ in data)
    if n == 0:
        raise ValueError("the data set is empty")
    return n


def trainable_named_params(model: nn.Module) -> dict[str, Tensor]:
    """The parameters with ``requires_grad=True``, by name. Probes and the
    full-data losses measure only these; frozen parameters are constants."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def load_trainable_params(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Copy ``state`` (name -> tensor, one entry per trainable parameter) into
    ``model``'s trainable parameters in place, without autograd; returns ``model``."""
    with torch.no_grad():
        for k, p in trainable_named_params(model).items():
            p.copy_(state[k])
    return model


def chunk_loss_fns(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    chunk_size: int | None = None,
) -> Iterator[Callable[[Params], Tensor]]:
    """One function per chunk, θ ↦ (n_c/N)·L_c(θ); they sum to the full loss L(θ).

    θ is the tuple of trainable parameters in :func:`trainable_named_params`
    order. Frozen parameters and buffers are taken from the model; buffers
    are passed as *copies*, so a forward pass in train mode never changes the
    model's BatchNorm running statistics. The model's train/eval mode is used
    as it is.
    """
    n = num_samples(data)
    names = list(trainable_named_params(model))
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    for x, y in iter_chunks(data, chunk_size):
        weight = len(x) / n

        def f(params: Params, x=x, y=y, weight=weight) -> Tensor:
            state = {**frozen, **{k: b.clone() for k, b in buffers.items()}}
            state.update(zip(names, params))
            out = functional_call(model, state, (x,))
            loss = check_scalar_loss(loss_fn(out, y), "loss_fn's (mean-reduced) loss")
            return weight * loss

        yield f


def full_loss(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    chunk_size: int | None = None,
) -> Tensor:
    """L(θ), the mean loss over the whole data set, without autograd."""
    params = tuple(trainable_named_params(model).values())
    with torch.no_grad():
        return sum(f(params) for f in chunk_loss_fns(model, loss_fn, data, chunk_size))


def full_gradient(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    chunk_size: int | None = None,
) -> tuple[Tensor, Params]:
    """(L(θ), ∇L(θ)) over the whole data set; leaves ``.grad`` untouched."""
    params = tuple(p.detach().requires_grad_(True) for p in trainable_named_params(model).values())
    fns = chunk_loss_fns(model, loss_fn, data, chunk_size)
    return summed_loss_and_grad((partial(f, params) for f in fns), params)


def summed_loss_and_grad(
    losses: Iterable[Callable[[], Tensor]], params: Sequence[Tensor]
) -> tuple[Tensor, Params]:
    """(Σ_c L_c, Σ_c ∇L_c) over closures that each return one term L_c (a chunk's
    weighted loss), one backward per closure so only one chunk's graph is alive;
    a parameter no term depends on gets a zero gradient. The full-data objective
    L = Σ_c (n_c/N) L̄_c is summed this way (the module's loss convention)."""
    total = None
    grads = [torch.zeros_like(p) for p in params]
    for fn in losses:
        with torch.enable_grad():
            loss = fn()
            gs = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, g in zip(grads, gs):
            if g is not None:
                acc.add_(g)
        total = loss.detach() if total is None else total + loss.detach()
    return total, tuple(grads)
