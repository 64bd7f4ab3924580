"""Curvature of the full-data loss as linear operators on flat vectors.

:class:`CurvatureOperator` owns what every curvature shares: the measured
parameters θ_S (:func:`implicit_reg.probes.selection.select_params`; the rest
held constant), the loop over the data in chunks
(:func:`implicit_reg.probes.batches.loss_terms`), the mode and the promise
to leave the model as found (:func:`implicit_reg.probes.state.preserved`),
flat vectors, and the blocked product ``matmat``. A curvature only adds its
product with one block of vectors on one chunk. :class:`HessianOperator` is

    H = ∇²L(θ),   L(θ) = (1/N)·Σ_c n_c·L_c(θ),   H v = (1/N)·Σ_c ∇²[n_c·L_c](θ) v,

differentiated with the package's one HVP,
:func:`implicit_reg.core.hvp.grad_and_hvp`. The Gauss–Newton and Fisher
matrices live in :mod:`implicit_reg.probes.curvature`.

Chunks may have any sizes (a DataLoader with a short last batch, or
``chunk_size`` not dividing N); the result equals one full-batch product.
Only parameters with ``requires_grad=True`` are ever measured.

Batched products. ``matmat(V)`` for V of shape ``(dim, b)`` splits the
columns into blocks of at most ``block_size`` and computes each block in one
pass over the data. The block size comes from a memory budget: as many
columns as fit in ``block_memory`` bytes (default :data:`DEFAULT_BLOCK_MEMORY`)
at :data:`COPIES_PER_COLUMN` flat vectors of the parameters' dtype each, so an
estimator's columns (Hutch++'s 33, SLQ's runs) go in one pass whenever they
fit; ``block_size`` overrides it. Peak memory is set by chunk size × block
size, never by N. ``n_hvp`` counts products per vector (a block of b costs b).

How :class:`HessianOperator` computes a block on a chunk (``product``):

- ``"loop"``: one forward pass and one first backward with its graph kept,
  then one second backward per column, H v_j = ∇_θ(g·v_j)
  (:func:`implicit_reg.core.hvp.hvp_of_graph` with ``retain_graph``). A block
  of b costs 1 forward + 1 backward + b second backwards instead of b of
  each, so a column of ``matmat`` is never dearer than a ``matvec`` (for
  b = 1 they are the same computation).
- ``"vmap"``: :func:`torch.func.vmap` over the one HVP (its ``"vjp"`` form;
  ``"jvp"`` when that is the operator's method). The forward and first
  backward act on unbatched tensors, so they also run once; the second
  backward runs once for the whole block through vmap's batching rules.
- ``"rop"``: on an MLP, the product in closed form by the R-operator
  (:mod:`implicit_reg.probes.rop`): every step one matrix product over the
  whole block, no autograd graph. Other models raise a ``ValueError``.
- ``"auto"`` (default): measured, not guessed. The first block of each
  width class (b rounded down to a power of two, b ≥ 2) is split on its
  first chunk into near-equal parts, one per candidate (loop, vmap and, on an
  MLP, the R-operator; loop and R-operator when b = 2), each timed (CPU time
  on a CPU, synchronized wall time on an accelerator), and the loop computes
  every later block of that class unless the cheapest other product measured
  below :data:`VMAP_MARGIN` of its cost per column (the loop's shared forward
  and first backward taken out of all). Nothing is computed twice: each part
  is part of the block's result. The choice and the measured costs are kept
  in ``product_choice`` and ``product_costs``. The choice depends on timing,
  so two runs can choose differently and then differ by rounding (about
  1e-16 relative); ``product="loop"`` repeats bit for bit.

:meth:`CurvatureOperator.quadratic_forms` gives diag(VᵀMV), what Hutchinson
and Hutch++ need for most of their probes; :class:`HessianOperator` computes it
on an MLP (``"auto"``, ``"rop"``) by the R-operator's second-order pass, half
the matrix products of H V.

Which wins depends on the model and the block (``benchmarks/bench_probes_batched.py``,
one thread, float64, CPU time, load 7-13 on 2 shared cores): on a 10→32→32→4 MLP with
512 samples vmap's second backward of 33 columns costs 0.77-0.9× the loop's, and the
estimators tie within the noise (Hutch++ 99: vmap 0.85-0.88×, loop 0.99-1.13×
curvlinops'); on a 40→256→256→10 MLP with 2,000 samples the loop is 0.6× vmap (large
matrix products, where vmap's batching rules add copies and bmm); on issue 19's
BatchNorm CNN vmap over convolution backward costs several times the loop. (Also
measured and dropped: one batched second backward through
``torch.autograd.grad(..., is_grads_batched=True)``, 1.06× the loop on the small MLP and
1.8× on the large one; vmap over forward-over-reverse, curvlinops' own product, 1.07-1.3×
and 1.7×; vmap over the column axis stored last, 0.89×.) Both products compute the
same 14 matrix products per column on the small MLP, and MKL's [512, 32] × [32, 32]
product (58 µs, about 0.8 ms of the 1.05 ms per column) bounds them. The R-operator
computes the same products with the block stacked, [n·b, 32] × [32, 32], in row parts
that stay in cache, and the quadratic forms need half of them: Hutch++ 99 at 0.44×
curvlinops' on the small MLP and 0.48× on the 256-wide one (docs/probes.md, third pass).

Lanczos, Hutchinson and the density see only the flat-vector interface
(``matvec``, ``matmat``, ``dim``, ``dtype``, ``device``, ``n_hvp``); they
never see the model. :class:`MatrixOperator` offers the same interface for
an explicit symmetric matrix.

The operator never changes the model: every pass over the data runs inside
:func:`implicit_reg.probes.state.preserved` in the chosen ``mode``.

Data sharded across processes: with ``process_group`` each rank sums over its
own shard and the ranks' sums are all-reduced before dividing by the global N,
so every rank gets the single-process full-data product
(:mod:`implicit_reg.probes.distributed`). A DDP-wrapped model is measured
through the module inside.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from ..core.hvp import DEFAULT_METHOD, check_method, check_scalar_loss, grad_and_hvp, hvp_of_graph
from .batches import BatchLoss, Term, check_data, loss_terms
from .distributed import shard_ranks, unwrap
from .rop import MLPPlan, mlp_plan, rop_block_product, rop_quadratic_forms
from .selection import Selection, select_params
from .state import DEFAULT_MODE, check_mode, preserved, seeded_rng

__all__ = [
    "CurvatureOperator",
    "HessianOperator",
    "MatrixOperator",
    "as_linear_operator",
    "apply_block",
    "apply_quadratic",
    "block_size_for",
    "DEFAULT_BLOCK_MEMORY",
    "COPIES_PER_COLUMN",
    "PRODUCTS",
]

#: bytes of vector storage one ``matmat`` block may use (512 MiB). With the
#: default looped product a block's memory beyond one chunk's graph is its
#: vectors alone, so this budget is what bounds it: 33 columns of Hutch++ need
#: 1.2 MiB on a 1.5k-parameter MLP, 124 MiB on a 78k-parameter one.
DEFAULT_BLOCK_MEMORY = 512 * 2**20

#: flat vectors of the parameters' dtype held per column of a block: the block
#: itself, its per-parameter copy, the accumulator, the block's result and the
#: concatenated result (``vmap`` adds one chunk's activations per column).
COPIES_PER_COLUMN = 5

#: how :class:`HessianOperator` computes a block (see the module docstring).
PRODUCTS = ("auto", "loop", "vmap", "rop")

#: ``"auto"`` takes vmap (or the R-operator) only when it measured below this fraction of
#: the loop's cost per column: where they tie within the timing noise, the loop, whose
#: numbers repeat bit for bit, stays.
VMAP_MARGIN = 0.8


def block_size_for(dim: int, dtype: torch.dtype, block_memory: int | None = None) -> int:
    """Columns per ``matmat`` block that fit ``block_memory`` bytes (default
    :data:`DEFAULT_BLOCK_MEMORY`): ⌊budget / (COPIES_PER_COLUMN·dim·itemsize)⌋, at least 1."""
    budget = DEFAULT_BLOCK_MEMORY if block_memory is None else block_memory
    per_column = COPIES_PER_COLUMN * dim * torch.empty((), dtype=dtype).element_size()
    return max(1, budget // per_column)


def _clock(device: torch.device) -> Callable[[], float]:
    """The clock ``"auto"`` times products with: on CPU the process's CPU seconds (on a
    shared machine they track the work, where wall time tracks the neighbours); on an
    accelerator wall seconds after a synchronize (its kernels run asynchronously)."""
    if device.type == "cpu":
        return time.process_time
    sync = getattr(torch, device.type).synchronize

    def tick() -> float:
        sync()
        return time.perf_counter()

    return tick


def _check_positive_int(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}"
        )
    return value


def apply_block(op, V: Tensor) -> Tensor:
    """H V for a ``(dim, b)`` float64 block, in float64: ``op.matmat`` when the
    operator has one, else one ``matvec`` per column."""
    if V.shape[1] == 0:
        return V.clone()
    if hasattr(op, "matmat"):
        return op.matmat(V.to(op.dtype)).to(torch.float64)
    return torch.stack([op.matvec(c.to(op.dtype)).to(torch.float64) for c in V.T], dim=1)


def apply_quadratic(op, V: Tensor) -> Tensor:
    """diag(Vᵀ H V), the quadratic forms v_jᵀ H v_j of a ``(dim, b)`` float64 block, in
    float64: ``op.quadratic_forms`` when the operator has one (the R-operator's
    second-order pass on an MLP, about half a product's cost), else the columns of
    V ⊙ H V summed."""
    if V.shape[1] == 0:
        return V.new_zeros(0)
    if hasattr(op, "quadratic_forms"):
        return op.quadratic_forms(V.to(op.dtype)).to(torch.float64)
    return (V * apply_block(op, V)).sum(0)


class CurvatureOperator:
    """A symmetric curvature matrix of the full-data loss on flat vectors of length ``dim``.

    Args:
        model: any ``nn.Module``.
        loss_fn: mean-reduced loss ``loss_fn(output, target) -> scalar``; None
            when ``batch_loss`` is given.
        data: a pair of tensors ``(X, y)``, or a re-iterable of
            ``(inputs, targets)`` batches (inputs a tensor, tuple or dict),
            or with ``batch_loss`` a re-iterable of any batches. Batches are
            moved to the parameters' device.
        params: the parameters to measure (see
            :mod:`implicit_reg.probes.selection`); None: all trainable ones.
        chunk_size: rows per physical chunk for a tensor pair (None: one
            chunk). An iterable's batches are the chunks.
        block_size: most vectors per batched pass of :meth:`matmat`; None:
            as many as fit ``block_memory`` (:func:`block_size_for`).
        block_memory: bytes of vector storage per block when ``block_size``
            is None (default :data:`DEFAULT_BLOCK_MEMORY`).
        mode: ``"eval"`` (default: dropout off, BatchNorm running statistics)
            or ``"train"`` (dropout masks re-drawn from ``seed`` on every pass,
            so the matrix is still one fixed operator; BatchNorm uses chunk
            statistics).
        seed: seeds the dropout masks in ``mode="train"`` (and Monte-Carlo
            targets of the Fisher).
        batch_loss: ``(model, batch) -> (mean loss, batch size)`` for batches
            that are not ``(inputs, targets)``.
        process_group: None (default: one process); a ``torch.distributed``
            ``ProcessGroup`` whose ranks each hold a shard of the data and the
            same model: products, losses and gradients are summed over the
            ranks (:mod:`implicit_reg.probes.distributed`); ``"auto"``: the
            default group when ``torch.distributed`` is initialized.

    Attributes:
        dim: number of measured scalars; names: their parameter names.
        dtype, device: those of the parameters.
        n_hvp: products computed so far, counted per vector.
        n_grad, n_loss: full-data gradients and losses computed so far.
        n_samples: N over all ranks; shard_sizes: N_r per rank (``[N]`` alone).
        tensor_inputs: every chunk's inputs are one tensor (not a tuple, a dict or a
            ``batch_loss`` batch), as the R-operator product needs.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
        data,
        *,
        params: Selection = None,
        chunk_size: int | None = None,
        block_size: int | None = None,
        block_memory: int | None = None,
        mode: str = DEFAULT_MODE,
        seed: int = 0,
        batch_loss: BatchLoss | None = None,
        process_group=None,
    ):
        ranks = shard_ranks(process_group)
        self._ranks = None  # no collective while this rank sizes its shard
        with ranks.guard("building the curvature operator") if ranks else nullcontext():
            self._build(
                unwrap(model), loss_fn, data, params=params, chunk_size=chunk_size,
                block_size=block_size, block_memory=block_memory, mode=mode, seed=seed,
                batch_loss=batch_loss,
            )  # fmt: skip
        self.shard_sizes = [self.n_samples]
        if ranks is not None:  # every rank checks the others built the same operator
            self.shard_sizes = ranks.agree(
                self.names, self.shapes, self.dtype, self.n_samples, self.theta()
            )
            self.n_samples, self._ranks = sum(self.shard_sizes), ranks

    def _build(
        self, model, loss_fn, data, *, params, chunk_size, block_size, block_memory, mode, seed,
        batch_loss,
    ):  # fmt: skip
        """This rank's part of the constructor: checks, parameters, data and its sizes."""
        check_mode(mode)
        _check_positive_int("chunk_size", chunk_size)
        _check_positive_int("block_size", block_size)
        _check_positive_int("block_memory", block_memory)
        if (loss_fn is None) == (batch_loss is None):
            raise ValueError(
                "give exactly one of loss_fn (for (inputs, targets) data) and batch_loss"
            )
        if batch_loss is not None and not callable(batch_loss):
            raise ValueError(
                "batch_loss must be a function (model, batch) -> (mean loss, batch size)"
            )
        named = select_params(model, params)
        first = next(iter(named.values()))
        if any(p.dtype != first.dtype or p.device != first.device for p in named.values()):
            raise ValueError("all measured parameters must share one dtype and device")
        self.model, self.loss_fn, self.batch_loss = model, loss_fn, batch_loss
        self.data = check_data(data, first.device, batch_loss)
        self.chunk_size, self.mode, self.seed = chunk_size, mode, seed
        self.names = list(named)
        self.shapes = [p.shape for p in named.values()]
        self.numels = [p.numel() for p in named.values()]
        self.dim = sum(self.numels)
        self.dtype, self.device = first.dtype, first.device
        self.block_size = (
            block_size_for(self.dim, self.dtype, block_memory) if block_size is None else block_size
        )
        self.n_hvp = 0
        self.n_grad = 0
        self.n_loss = 0
        self.sizes = None
        sizes, self.tensor_inputs = [], True
        with self._passes():
            for t in self._terms():
                sizes.append(t.size)
                self.tensor_inputs &= isinstance(t.inputs, Tensor)
        self.sizes = sizes
        self.n_samples = sum(self.sizes)
        if self.n_samples == 0:
            raise ValueError("the data set is empty")

    # ----------------------------------------------------------- flat vectors
    def params(self) -> tuple[Tensor, ...]:
        """The model's current measured parameters, detached (shared storage)."""
        named = dict(self.model.named_parameters())
        try:
            ps = [named[k] for k in self.names]
        except KeyError as err:
            raise ValueError("the model's parameters changed since the operator was built") from err
        if not all(p.requires_grad for p in ps):
            raise ValueError(
                "the model's trainable parameters changed since the operator was built"
            )
        return tuple(p.detach() for p in ps)

    def theta(self) -> Tensor:
        """θ_S as one flat vector (a copy)."""
        return self.flatten(self.params())

    def flatten(self, tensors) -> Tensor:
        """Concatenate one tensor per measured parameter into a flat vector."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vec: Tensor) -> tuple[Tensor, ...]:
        """Split a flat vector into tensors shaped like the measured parameters."""
        vec = self._check_vec(vec).to(self.dtype)
        return tuple(c.view(s) for c, s in zip(vec.split(self.numels), self.shapes))

    def _unflatten_block(self, mat: Tensor) -> tuple[Tensor, ...]:
        """``(dim, b)`` → one ``(b, *shape)`` tensor per parameter."""
        rows = mat.T.contiguous().split(self.numels, dim=1)
        return tuple(r.reshape(-1, *s) for r, s in zip(rows, self.shapes))

    def _check_block(self, mat: Tensor) -> Tensor:
        if not isinstance(mat, Tensor) or mat.dim() != 2 or mat.shape[0] != self.dim:
            shape = tuple(mat.shape) if hasattr(mat, "shape") else type(mat).__name__
            raise ValueError(f"expected a matrix of shape ({self.dim}, b), got {shape}")
        return mat.to(device=self.device, dtype=self.dtype)

    def _check_vec(self, vec: Tensor) -> Tensor:
        if not isinstance(vec, Tensor) or vec.shape != (self.dim,):
            shape = tuple(vec.shape) if hasattr(vec, "shape") else type(vec).__name__
            raise ValueError(f"expected a flat vector of shape ({self.dim},), got {shape}")
        return vec.to(self.device)

    # -------------------------------------------------------------- passes
    def _passes(self):
        """Context for one pass over the data: model preserved, mode set, RNG seeded."""
        stack = ExitStack()
        if self._ranks is not None:  # a failing rank tells the others before raising
            stack.enter_context(self._ranks.guard())
        stack.enter_context(preserved(self.model, self.mode))
        if self.mode == "train":
            stack.enter_context(seeded_rng(self.seed))
        self._pass_gen = torch.Generator(device=self.device).manual_seed(int(self.seed) + 104729)
        return stack

    def _terms(self):
        return loss_terms(
            self.model, self.names, self.data, loss_fn=self.loss_fn, batch_loss=self.batch_loss,
            chunk_size=self.chunk_size, sizes=self.sizes,
        )  # fmt: skip

    def _leaves(self, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(p.detach() for p in params)

    def _sum_ranks(self, local: Tensor, vectors: Tensor | None = None) -> Tensor:
        """This rank's sum over its shard, summed over the process group's ranks (itself
        without a group); ``vectors`` (the point or vectors applied) are checked equal on
        every rank."""
        if self._ranks is None:
            return local
        return self._ranks.sum(local, vectors, self.theta())

    def _block_product(self, term: Term, params: tuple[Tensor, ...], vs: tuple[Tensor, ...]):
        """Σ over the chunk: the (unnormalized) product with a block ``vs`` of ``(b, *shape)``."""
        raise NotImplementedError

    def matmat(self, mat: Tensor) -> Tensor:
        """M V for a ``(dim, b)`` matrix, in ⌈b/block_size⌉ blocks of (nearly) equal width.

        Each block costs one pass over the data; the result is in the
        parameters' dtype and counts b products in ``n_hvp``.
        """
        mat = self._check_block(mat)
        if mat.shape[1] == 0:
            return mat.clone()
        return self._by_blocks(mat, self._block_product).T.contiguous()

    def _by_blocks(self, mat: Tensor, per_chunk) -> Tensor:
        """Σ over the data of ``per_chunk(term, params, vs)`` (tensors with a leading axis of
        the block's b columns) for the columns of ``mat`` in ⌈b/block_size⌉ blocks of
        (nearly) equal width (33 columns at 32 are 17 + 16, not 32 + 1), one pass over the
        data each, summed over the ranks and divided by N: a ``(b, k)`` tensor, row j for
        column j. Counts b products in ``n_hvp``."""
        out = []
        b = mat.shape[1]
        width = -(-b // -(-b // self.block_size))
        for start in range(0, b, width):
            block = mat[:, start : start + width]
            vs = self._unflatten_block(block)
            with self._passes():
                params = self._leaves(self.params())
                acc = None
                for term in self._terms():
                    parts = per_chunk(term, params, vs)
                    acc = list(parts) if acc is None else [a.add_(h) for a, h in zip(acc, parts)]
            local = torch.cat([a.reshape(a.shape[0], -1) for a in acc], dim=1)
            out.append(self._sum_ranks(local, block) / self.n_samples)
            self.n_hvp += block.shape[1]
        return torch.cat(out)

    def matvec(self, vec: Tensor) -> Tensor:
        """M v for a flat ``v``; returns a flat vector in the parameters' dtype."""
        return self.matmat(self._check_vec(vec)[:, None])[:, 0]

    def quadratic_forms(self, mat: Tensor) -> Tensor:
        """diag(Vᵀ M V) for a ``(dim, b)`` matrix: v_jᵀ M v_j per column, in the
        parameters' dtype, counted as b products in ``n_hvp``. Here from :meth:`matmat`;
        a curvature with a cheaper second-order pass overrides it."""
        mat = self._check_block(mat)
        return (mat * self.matmat(mat)).sum(0)

    # ------------------------------------------------------- loss and gradient
    def loss_and_gradient(self, theta: Tensor | None = None) -> tuple[float, Tensor]:
        """(L, ∇L) at θ_S (default: the model's current θ_S), ∇L as a flat vector."""
        params = self.params() if theta is None else self.unflatten(theta)
        with self._passes():
            params = tuple(p.detach().requires_grad_(True) for p in params)
            total = 0.0
            acc = [torch.zeros_like(p) for p in params]
            for term in self._terms():
                with torch.enable_grad():
                    loss = term.loss(params)
                    gs = torch.autograd.grad(loss, params, allow_unused=True)
                total += float(loss.detach())
                for a, g in zip(acc, gs):
                    if g is not None:
                        a.add_(g)
        self.n_grad += 1
        grad = self.flatten(acc)
        if self._ranks is not None:  # loss and gradient in one all-reduce
            both = torch.cat([grad.new_tensor([total], dtype=torch.float64), grad.double()])
            both = self._sum_ranks(both, theta)
            total, grad = float(both[0]), both[1:].to(self.dtype)
        return total / self.n_samples, grad / self.n_samples

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        """∇L at θ_S (default: the model's θ_S) as a flat vector."""
        return self.loss_and_gradient(theta)[1]

    def loss(self, theta: Tensor | None = None) -> float:
        """L at θ_S (default: the model's θ_S), without autograd."""
        params = self.params() if theta is None else self.unflatten(theta)
        with self._passes(), torch.no_grad():
            total = sum(float(t.loss(params)) for t in self._terms())
        self.n_loss += 1
        if self._ranks is not None:
            local = torch.tensor([total], dtype=torch.float64, device=self.device)
            total = float(self._sum_ranks(local, theta)[0])
        return total / self.n_samples


class HessianOperator(CurvatureOperator):
    """H = ∇²L(θ_S) of the full-data mean loss, on flat vectors of length ``dim``.

    Takes the arguments of :class:`CurvatureOperator`, ``method``, the HVP
    form (one of :data:`implicit_reg.core.hvp.HVP_METHODS`) used by
    :meth:`matvec`, and ``product``, how :meth:`matmat` computes a block (one
    of :data:`PRODUCTS`; default ``"auto"``: measured per width class of
    block; ``"loop"``: one forward and first backward per chunk, one second
    backward per column; ``"vmap"``: the HVP under ``vmap``). With
    ``method="jvp"`` the loop is one forward-over-reverse HVP per column. All
    equal stacked ``matvec`` to rounding (``tests/test_probes_batched.py``).

    Attributes (besides :class:`CurvatureOperator`'s):
        product_choice: width class (``b.bit_length()`` of a block of b
            columns) → the product ``"auto"`` measured as cheaper for it.
        product_costs: width class → measured seconds per column of each
            product (the loop's shared forward and first backward taken out).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
        data,
        *,
        chunk_size: int | None = None,
        method: str = DEFAULT_METHOD,
        mode: str = DEFAULT_MODE,
        seed: int = 0,
        params: Selection = None,
        block_size: int | None = None,
        block_memory: int | None = None,
        product: str = "auto",
        batch_loss: BatchLoss | None = None,
        process_group=None,
    ):
        check_method(method)
        if product not in PRODUCTS:
            raise ValueError(f"unknown product {product!r}; choose one of {', '.join(PRODUCTS)}")
        self.method, self.product = method, product
        self.product_choice: dict[int, str] = {}
        self.product_costs: dict[int, dict[str, float]] = {}
        super().__init__(
            model, loss_fn, data, params=params, chunk_size=chunk_size, block_size=block_size,
            block_memory=block_memory, mode=mode, seed=seed, batch_loss=batch_loss,
            process_group=process_group,
        )  # fmt: skip
        # the MLP the R-operator can run, or why not (it feeds the body one tensor)
        self._plan = (
            "a batch_loss hides the model's outputs" if batch_loss is not None
            else "the data's inputs are not all tensors" if not self.tensor_inputs
            else mlp_plan(self.model, mode)
        )  # fmt: skip
        self._rop = isinstance(self._plan, MLPPlan)
        if product == "rop" and not self._rop:
            raise ValueError(f"product='rop' needs an MLP: {self._plan}")

    def quadratic_forms(self, mat: Tensor) -> Tensor:
        """diag(Vᵀ H V) for a ``(dim, b)`` matrix, counted as b products in ``n_hvp``.

        On an MLP (``product`` ``"auto"`` or ``"rop"``) by the R-operator's second-order
        pass (:func:`implicit_reg.probes.rop.rop_quadratic_forms`: three matrix products
        per hidden layer against an HVP's six, in blocks of ``block_size``); otherwise,
        and for ``"loop"`` and ``"vmap"`` (bit-for-bit repeatable), the columns of
        V ⊙ H V summed."""
        mat = self._check_block(mat)
        if self.product not in ("auto", "rop") or not self._rop:
            return super().quadratic_forms(mat)
        if mat.shape[1] == 0:
            return mat.new_zeros(0)

        def forms(term, params, vs):
            return (rop_quadratic_forms(self._plan, term, params, vs),)

        return self._by_blocks(mat, forms)[:, 0]

    def _leaves(self, params: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if self.method == "double_backward" or (self.product != "vmap" and self.method == "vjp"):
            return tuple(p.detach().requires_grad_(True) for p in params)
        return tuple(p.detach() for p in params)

    def matvec(self, vec: Tensor) -> Tensor:
        """H v for a flat ``v`` by the one HVP; a flat vector in the parameters' dtype."""
        vs = self.unflatten(vec)
        with self._passes():
            params = self._leaves(self.params())
            acc = [torch.zeros_like(p) for p in params]
            for term in self._terms():
                _, hv = grad_and_hvp(term.loss, params, vs, method=self.method)
                for a, h in zip(acc, hv):
                    a.add_(h)
        self.n_hvp += 1
        return self._sum_ranks(self.flatten(acc), vec) / self.n_samples

    def _block_product(self, term: Term, params, vs):
        product, b = self.product, vs[0].shape[0]
        if product == "auto":
            if b < 2:  # one column: the loop is exactly one matvec's computation
                product = "loop"
            else:
                product = self.product_choice.get(b.bit_length())
                if product is None:
                    return self._measured_product(term, params, vs)
        if product == "loop":
            return self._looped_product(term, params, vs)
        if product == "rop":
            return rop_block_product(self._plan, term, params, vs)
        return self._vmapped_product(term, params, vs)

    def _measured_product(self, term: Term, params, vs):
        """The block on this chunk in near-equal parts, one per candidate product (loop,
        vmap and, on an MLP, the R-operator; the loop and the R-operator when b = 2), each
        timed; records the cheapest product per column for the block's width class.

        The loop's cost per column leaves out its forward and first backward
        (``first``), which the block pays once whichever product runs; the
        other parts' calls include their own forward pass, so ``first`` is taken out
        of them as well.
        """
        b = vs[0].shape[0]
        names = ["loop", "vmap"]
        if self._rop:
            names = ["loop", "rop"] if b == 2 else ["loop", "vmap", "rop"]
        bounds = [round(i * b / len(names)) for i in range(len(names) + 1)]
        clock: dict[str, float] = {}
        devices = [self.device] if self.device.type == "cuda" else []
        tick = _clock(self.device)
        parts, costs = [], {}
        for i, (name, lo, hi) in enumerate(zip(names, bounds, bounds[1:])):
            part = tuple(v[lo:hi] for v in vs)
            t0 = tick()
            # every part sees the same dropout masks; the last one advances the RNG as one
            # product of the whole block would
            last = i + 1 == len(names)
            with nullcontext() if last else torch.random.fork_rng(devices=devices):
                if name == "loop":
                    parts.append(self._looped_product(term, params, part, clock=clock))
                elif name == "vmap":
                    parts.append(self._vmapped_product(term, params, part))
                else:
                    parts.append(rop_block_product(self._plan, term, params, part))
            costs[name] = tick() - t0
        first = clock.get("first", 0.0)
        costs = {n: max(costs[n] - first, 0.0) / (hi - lo)
                 for n, lo, hi in zip(names, bounds, bounds[1:])}  # fmt: skip
        key = b.bit_length()
        self.product_costs[key] = costs
        best = min((n for n in names if n != "loop"), key=costs.__getitem__)
        self.product_choice[key] = best if costs[best] < VMAP_MARGIN * costs["loop"] else "loop"
        return tuple(torch.cat(cols) for cols in zip(*parts))

    def _vmapped_product(self, term: Term, params, vs):
        """H v_j for each row j of the block through ``vmap`` over the one HVP."""
        method = "jvp" if self.method == "jvp" else "vjp"
        primals = tuple(p.detach() for p in params)

        def one(*v):
            return grad_and_hvp(term.loss, primals, v, method=method)[1]

        return vmap(one, randomness="same")(*vs)

    def _looped_product(self, term: Term, params, vs, clock: dict | None = None):
        """H v_j for each row j of the block: the chunk's forward and first backward once,
        then one second backward per column through the kept graph. ``clock["first"]``,
        when given, receives the seconds of the shared forward and first backward."""
        b = vs[0].shape[0]
        if self.method == "jvp":  # forward-over-reverse has no graph to share
            rows = [grad_and_hvp(term.loss, params, [v[j] for v in vs], method="jvp")[1]
                    for j in range(b)]  # fmt: skip
            return tuple(torch.stack(r) for r in zip(*rows))
        out = tuple(torch.empty_like(v) for v in vs)
        tick = _clock(self.device)
        t0 = tick() if clock is not None else 0.0
        with torch.enable_grad():
            loss = check_scalar_loss(term.loss(params))
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))
            if clock is not None:
                clock["first"] = tick() - t0
            for j in range(b):
                hv = hvp_of_graph(grads, params, [v[j] for v in vs], retain_graph=j + 1 < b)
                for o, h in zip(out, hv):
                    o[j] = h
        return out


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
            raise ValueError(
                f"expected a flat vector of shape ({self.dim},), got {tuple(vec.shape)}"
            )
        self.n_hvp += 1
        return self.matrix @ vec.to(self.dtype)

    def matmat(self, mat: Tensor) -> Tensor:
        if mat.dim() != 2 or mat.shape[0] != self.dim:
            raise ValueError(f"expected a matrix of shape ({self.dim}, b), got {tuple(mat.shape)}")
        self.n_hvp += mat.shape[1]
        return self.matrix @ mat.to(self.dtype)


def as_linear_operator(op):
    """A ``scipy.sparse.linalg.LinearOperator`` in float64 wrapping ``op.matvec``
    (and ``op.matmat`` for blocks, when the operator has one)."""
    from scipy.sparse.linalg import LinearOperator

    def mv(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1), device=op.device)
        return op.matvec(v.to(op.dtype)).detach().to("cpu", torch.float64).numpy()

    def mm(x: np.ndarray) -> np.ndarray:
        V = torch.as_tensor(np.asarray(x, dtype=np.float64), device=op.device)
        return apply_block(op, V).detach().cpu().numpy()

    return LinearOperator((op.dim, op.dim), matvec=mv, matmat=mm, dtype=np.float64)
