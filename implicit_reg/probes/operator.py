"""The Hessian of the full-data loss as a linear operator on flat vectors.

:class:`HessianOperator` turns (model, mean-reduced loss, data set) into
``H = ∇²L(θ)`` with

    L(θ) = (1/N)·Σ_i ℓ(f_θ(x_i), y_i) = Σ_c (n_c/N)·L_c(θ),

accumulated over physical chunks with :func:`implicit_reg.core.objective.chunk_loss_fns`
and differentiated with the package's one HVP,
:func:`implicit_reg.core.hvp.grad_and_hvp`:

    H v = Σ_c ∇²[(n_c/N)·L_c](θ) v.

Chunks may have any sizes (a DataLoader with a short last batch, or
``chunk_size`` not dividing N); the result equals one full-batch HVP. Only
parameters with ``requires_grad=True`` are measured: θ is the concatenation
of the trainable parameters in ``model.named_parameters()`` order, frozen
parameters are constants. Peak memory is set by the chunk size, not by N.

Lanczos, Hutchinson and the density see only the flat-vector interface
(``matvec``, ``dim``, ``dtype``, ``device``, ``n_hvp``); they never see the
model. :class:`MatrixOperator` offers the same interface for an explicit
symmetric matrix.

The operator never changes the model: every pass over the data runs inside
:func:`implicit_reg.probes.state.preserved` in the chosen ``mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack

import numpy as np
import torch
from torch import Tensor, nn

from ..core.hvp import DEFAULT_METHOD, check_method, grad_and_hvp
from ..core.objective import Data, _is_pair, chunk_loss_fns, num_samples, trainable_named_params
from .state import DEFAULT_MODE, check_mode, preserved, seeded_rng

__all__ = ["HessianOperator", "MatrixOperator", "as_linear_operator"]


class _OnDevice:
    """Re-iterable view of a batch iterable that moves each batch to ``device``."""

    def __init__(self, data: Iterable[tuple[Tensor, Tensor]], device: torch.device):
        self.data, self.device = data, device

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.data:
            yield x.to(self.device), y.to(self.device)


class HessianOperator:
    """H = ∇²L(θ) of the full-data mean loss, on flat vectors of length ``dim``.

    Args:
        model: any ``nn.Module``; only its trainable parameters
            (``requires_grad=True``) are measured.
        loss_fn: mean-reduced loss ``loss_fn(output, target) -> scalar``.
        data: a pair of tensors ``(X, y)`` or a re-iterable of ``(x, y)``
            batches (e.g. a ``DataLoader`` without shuffling). Batches are
            moved to the parameters' device.
        chunk_size: rows per physical chunk for a tensor pair (None: one
            chunk). Ignored for an iterable, whose batches are the chunks.
        method: HVP form, one of :data:`implicit_reg.core.hvp.HVP_METHODS`.
        mode: ``"eval"`` (default: dropout off, BatchNorm running statistics,
            H is one fixed operator) or ``"train"`` (dropout masks re-drawn
            from ``seed`` on every pass, so H is still one fixed operator;
            BatchNorm uses chunk statistics).
        seed: seeds the dropout masks in ``mode="train"``.

    Attributes:
        dim: number of trainable scalars.
        dtype, device: those of the parameters.
        n_hvp: full-data HVPs computed so far (one per :meth:`matvec`).
        n_grad: full-data gradients computed so far.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        data: Data,
        *,
        chunk_size: int | None = None,
        method: str = DEFAULT_METHOD,
        mode: str = DEFAULT_MODE,
        seed: int = 0,
    ):
        check_method(method)
        check_mode(mode)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        named = trainable_named_params(model)
        if not named:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        first = next(iter(named.values()))
        if any(p.dtype != first.dtype or p.device != first.device for p in named.values()):
            raise ValueError("all trainable parameters must share one dtype and device")
        if _is_pair(data):
            data = (data[0].to(first.device), data[1].to(first.device))
        elif isinstance(data, Iterable):
            data = _OnDevice(data, first.device)
        else:
            raise ValueError(
                f"data must be a pair of tensors (X, y) or an iterable of (x, y) batches, got {type(data).__name__}"
            )
        self.n_samples = num_samples(data)  # raises ValueError on an empty data set
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.chunk_size, self.method, self.mode, self.seed = chunk_size, method, mode, seed
        self.names = list(named)
        self.shapes = [p.shape for p in named.values()]
        self.numels = [p.numel() for p in named.values()]
        self.dim = sum(self.numels)
        self.dtype, self.device = first.dtype, first.device
        self.n_hvp = 0
        self.n_grad = 0
        self.n_loss = 0

    # ----------------------------------------------------------- flat vectors
    def params(self) -> tuple[Tensor, ...]:
        """The model's current trainable parameters, detached (shared storage)."""
        named = trainable_named_params(self.model)
        if list(named) != self.names:
            raise ValueError("the model's trainable parameters changed since the operator was built")
        return tuple(p.detach() for p in named.values())

    def theta(self) -> Tensor:
        """θ as one flat vector (a copy)."""
        return self.flatten(self.params())

    def flatten(self, tensors) -> Tensor:
        """Concatenate one tensor per trainable parameter into a flat vector."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vec: Tensor) -> tuple[Tensor, ...]:
        """Split a flat vector into tensors shaped like the trainable parameters."""
        vec = self._check_vec(vec).to(self.dtype)
        return tuple(c.view(s) for c, s in zip(vec.split(self.numels), self.shapes))

    def _check_vec(self, vec: Tensor) -> Tensor:
        if not isinstance(vec, Tensor) or vec.shape != (self.dim,):
            shape = tuple(vec.shape) if hasattr(vec, "shape") else type(vec).__name__
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {shape}")
        return vec.to(self.device)

    # -------------------------------------------------------------- passes
    def _passes(self):
        """Context for one pass over the data: model preserved, mode set, RNG seeded."""
        stack = ExitStack()
        stack.enter_context(preserved(self.model, self.mode))
        if self.mode == "train":
            stack.enter_context(seeded_rng(self.seed))
        return stack

    def _chunks(self):
        return chunk_loss_fns(self.model, self.loss_fn, self.data, self.chunk_size)

    def matvec(self, vec: Tensor) -> Tensor:
        """H v for a flat ``v``; returns a flat vector in the parameters' dtype."""
        vs = self.unflatten(vec)
        with self._passes():
            params = self._leaves(self.params())
            acc = [torch.zeros_like(p) for p in params]
            for f in self._chunks():
                _, hv = grad_and_hvp(f, params, vs, method=self.method)
                for a, h in zip(acc, hv):
                    a.add_(h)
        self.n_hvp += 1
        return self.flatten(acc)

    def matmat(self, mat: Tensor) -> Tensor:
        """H V for a ``(dim, m)`` matrix, one HVP per column."""
        if mat.dim() != 2 or mat.shape[0] != self.dim:
            raise ValueError(f"expected a matrix of shape ({self.dim}, m), got {tuple(mat.shape)}")
        return torch.stack([self.matvec(c) for c in mat.T], dim=1)

    def _leaves(self, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self.method == "double_backward":
            return tuple(p.detach().requires_grad_(True) for p in params)
        return tuple(p.detach() for p in params)

    def loss_and_gradient(self, theta: Tensor | None = None) -> tuple[float, Tensor]:
        """(L, ∇L) at θ (default: the model's current θ), ∇L as a flat vector."""
        params = self.params() if theta is None else self.unflatten(theta)
        with self._passes():
            params = tuple(p.detach().requires_grad_(True) for p in params)
            total = 0.0
            acc = [torch.zeros_like(p) for p in params]
            for f in self._chunks():
                with torch.enable_grad():
                    loss = f(params)
                    gs = torch.autograd.grad(loss, params, allow_unused=True)
                total += float(loss.detach())
                for a, g in zip(acc, gs):
                    if g is not None:
                        a.add_(g)
        self.n_grad += 1
        return total, self.flatten(acc)

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        """∇L at θ (default: the model's θ) as a flat vector."""
        return self.loss_and_gradient(theta)[1]

    def loss(self, theta: Tensor | None = None) -> float:
        """L at θ (default: the model's θ), without autograd."""
        params = self.params() if theta is None else self.unflatten(theta)
        with self._passes(), torch.no_grad():
            total = sum(float(f(params)) for f in self._chunks())
        self.n_loss += 1
        return total


class MatrixOperator:
    """An explicit symmetric matrix with the operator interface (tests, small problems)."""

    def __init__(self, matrix: Tensor):
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype, self.device = matrix.dtype, matrix.device
        self.n_hvp = 0

    def matvec(self, vec: Tensor) -> Tensor:
        if vec.shape != (self.dim,):
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {tuple(vec.shape)}")
        self.n_hvp += 1
        return self.matrix @ vec.to(self.dtype)


def as_linear_operator(op):
    """A ``scipy.sparse.linalg.LinearOperator`` in float64 wrapping ``op.matvec``."""
    from scipy.sparse.linalg import LinearOperator

    def mv(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1), device=op.device)
        return op.matvec(v.to(op.dtype)).detach().to("cpu", torch.float64).numpy()

    return LinearOperator((op.dim, op.dim), matvec=mv, dtype=np.float64)
