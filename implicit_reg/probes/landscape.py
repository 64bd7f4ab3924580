"""Loss landscapes: the loss on a 1-D line or a 2-D plane through θ, evaluated in batches.

    1-D:  ℓ(α)    = L(θ + α·d₁),
    2-D:  ℓ(α, β) = L(θ + α·d₁ + β·d₂),

with L the full-data mean loss (chunked, :mod:`implicit_reg.probes.batches`) and,
optionally, the accuracy at each grid point. Three kinds of directions
(:func:`loss_landscape`, ``directions=``):

- ``"random"``: Gaussian directions, filter-normalized (Li, Xu, Taylor,
  Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets",
  NeurIPS 2018, §4): every filter d_f of a tensor with ≥ 2 dims (an output
  channel of a convolution, a row, i.e. one neuron, of a Linear weight) is
  rescaled to ‖d_f‖ = ‖θ_f‖. With ``ignore="biasbn"`` (their code's default)
  the direction is zero on 1-D tensors (biases, BatchNorm scale and shift);
  with ``ignore=None`` it equals θ there (their alternative). The draw is
  :func:`filter_normalized_direction` with seeds
  ``seed, seed + 1``.
- ``"hessian"``: the top eigenvectors of H = ∇²L(θ) by
  :func:`implicit_reg.probes.lanczos` (unit vectors: α is a distance in
  parameter space), eigenvalues kept in :attr:`Landscape.eigenvalues`.
- ``"pca"``: the PCA plane of a training trajectory θ_0, …, θ_T (Li et al.
  2018, §7): the rows θ_t − θ are centred and their top right singular vectors
  d₁, d₂ (unit, orthogonal) span the plane; :attr:`Landscape.explained_variance_ratio`
  is s_i² / Σ_j s_j² and :attr:`Landscape.trajectory` the coordinates
  (⟨θ_t − θ, d₁⟩, ⟨θ_t − θ, d₂⟩) of every iterate (:func:`pca_directions`).

Batched evaluation. A grid of G points is one (G, k) matrix of coordinates C;
the parameters of a block of b points are θ + C_blk·D, one ``(b, *shape)``
tensor per parameter, and the model runs on all b at once through
``torch.func.vmap`` over ``torch.func.functional_call``. The data are visited
once (outer loop over chunks, inner loop over blocks of points), so a
``DataLoader`` is read once per landscape, not once per point. The block size
comes from a memory budget (:func:`plan_blocks`). ``batched=False`` evaluates
one point at a time, a full pass over the data each (Li et al.'s loop); both
give the same numbers to rounding (``tests/test_landscape.py``).

The model is left exactly as found (:func:`implicit_reg.probes.state.preserved`):
parameters, ``.grad``, train/eval flags, BatchNorm statistics and the RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from .batches import Term, _call, check_data, loss_terms
from .eigen import lanczos
from .operator import HessianOperator
from .selection import select_params
from .state import DEFAULT_MODE, check_mode, preserved, seeded_rng

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "DIRECTIONS",
    "IGNORE",
    "DEFAULT_MEMORY_BUDGET",
    "ACTIVATION_FACTOR",
    "Landscape",
    "PCAPlane",
    "filter_normalized_direction",
    "random_directions",
    "hessian_directions",
    "pca_directions",
    "multi_dim_mask",
    "plan_blocks",
    "evaluate_points",
    "loss_landscape",
]

DIRECTIONS = ("random", "hessian", "pca")
IGNORE = ("biasbn", None)
#: bytes the batched evaluation may hold at once (parameter copies + activations). Small
#: on purpose: on a CPU a block's activations should stay near the cache; 16 points of
#: an MNIST-1D MLP (40-100-100-10) on 4,000 rows in one block ran 2x slower per point than
#: blocks of 16 × 1,000 rows (benchmarks/bench_landscape.py). Raise it on a GPU.
DEFAULT_MEMORY_BUDGET = 32 * 2**20
#: activations counted by forward hooks are multiplied by this to cover what hooks do
#: not see (functional activations, the loss's temporaries)
ACTIVATION_FACTOR = 3


@dataclass
class PCAPlane:
    """The PCA plane of a trajectory around a centre θ (:func:`pca_directions`).

    Attributes:
        directions: k unit, orthogonal flat vectors (the top principal axes).
        explained_variance_ratio: (k,) share of the trajectory's variance, s_i² / Σ_j s_j².
        coords: (T, k) coordinates ⟨θ_t − θ, d_i⟩ of the iterates.
    """

    directions: tuple[Tensor, ...]
    explained_variance_ratio: np.ndarray
    coords: np.ndarray


@dataclass
class Landscape:
    """ℓ on a grid: ``loss[j, i]`` at (``alphas[i]``, ``betas[j]``) in 2-D, ``loss[i]`` in 1-D.

    ``accuracy`` has the shape of ``loss`` when it was asked for. ``directions``
    are the flat d₁ (, d₂); ``kind`` is ``"random"``, ``"hessian"``, ``"pca"``
    or ``"given"``. ``eigenvalues`` (hessian), ``explained_variance_ratio`` and
    ``trajectory`` (pca, the iterates' coordinates) are None for other kinds.
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray | None
    directions: tuple[Tensor, ...]
    kind: str
    eigenvalues: np.ndarray | None = None
    explained_variance_ratio: np.ndarray | None = None
    trajectory: np.ndarray | None = None

    @property
    def dims(self) -> int:
        return 1 if self.betas is None else 2

    def table(self) -> pd.DataFrame:
        """The grid as a tidy table: one row per point, columns alpha, [beta], loss, [accuracy]."""
        import pandas as pd

        if self.betas is None:
            cols = {"alpha": self.alphas, "loss": self.loss}
            if self.accuracy is not None:
                cols["accuracy"] = self.accuracy
            return pd.DataFrame(cols)
        a, b = np.meshgrid(self.alphas, self.betas)  # (B, A), like loss
        cols = {"alpha": a.ravel(), "beta": b.ravel(), "loss": self.loss.ravel()}
        if self.accuracy is not None:
            cols["accuracy"] = self.accuracy.ravel()
        return pd.DataFrame(cols)


# ------------------------------------------------------------------ directions
def filter_normalized_direction(
    model: nn.Module, *, seed: int = 0, ignore_1d: bool = True
) -> Tensor:
    """A random filter-normalized direction over the trainable parameters (flat).

    Gaussian entries from a private generator seeded with ``seed``; each
    filter d_f of a tensor with ≥ 2 dims is scaled to ‖d_f‖ = ‖θ_f‖. Tensors
    with ≤ 1 dim get zeros (``ignore_1d=True``, Li et al.'s default) or a copy
    of θ (``ignore_1d=False``, Li et al.'s alternative).
    """
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    gen = torch.Generator(device=params[0].device).manual_seed(int(seed))
    parts = []
    for p in params:
        d = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        if p.dim() <= 1:
            d = torch.zeros_like(p) if ignore_1d else p.clone()
        else:
            dn = d.reshape(len(d), -1).norm(dim=1)
            pn = p.reshape(len(p), -1).norm(dim=1)
            scale = torch.where(dn > 0, pn / dn, torch.zeros_like(dn))
            d = d * scale.view(-1, *([1] * (p.dim() - 1)))
        parts.append(d.reshape(-1))
    return torch.cat(parts)


def _check_ignore(ignore):
    if ignore not in IGNORE:
        raise ValueError(f"ignore must be 'biasbn' or None, got {ignore!r}")
    return ignore


def random_directions(
    model: nn.Module, k: int = 2, *, seed: int = 0, ignore: str | None = "biasbn"
) -> list[Tensor]:
    """k filter-normalized random directions (flat; seeds ``seed, …, seed + k − 1``).

    d_f ← d_f·‖θ_f‖/‖d_f‖ for every filter f (first-axis slice) of every tensor
    with ≥ 2 dims, d ~ N(0, I); 1-D tensors get 0 (``ignore="biasbn"``) or θ
    (``ignore=None``). Li et al. (NeurIPS 2018), ``net_plotter.py``.
    """
    _check_ignore(ignore)
    return [
        filter_normalized_direction(model, seed=seed + i, ignore_1d=ignore == "biasbn")
        for i in range(k)
    ]


def hessian_directions(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    k: int = 2,
    *,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
    **lanczos_options,
) -> tuple[list[Tensor], np.ndarray]:
    """The k top eigenvectors of H = ∇²L(θ) (unit, flat) and their eigenvalues, by Lanczos."""
    op = HessianOperator(model, loss_fn, data, chunk_size=chunk_size, mode=mode, seed=seed)
    res = lanczos(op, k, which="LA", seed=seed, **lanczos_options)
    vecs = [res.eigenvectors[:, i].to(op.dtype) for i in range(k)]
    return vecs, np.asarray(res.eigenvalues[:k], dtype=np.float64)


def multi_dim_mask(model: nn.Module) -> Tensor:
    """Flat boolean mask over the trainable parameters: True on tensors with ≥ 2 dims
    (weights), False on biases and BatchNorm parameters (Li et al.'s ``ignore_biasbn``)."""
    ps = list(select_params(model).values())
    return torch.cat(
        [torch.full((p.numel(),), p.dim() > 1, dtype=torch.bool, device=p.device) for p in ps]
    )


def pca_directions(
    trajectory: Sequence[Tensor], center: Tensor, *, k: int = 2, mask: Tensor | None = None
) -> PCAPlane:
    """The top-k PCA plane of a trajectory (Li et al. 2018, §7, ``projection.py``).

    M has rows m_t = (θ_t − θ)⊙mask (``mask`` zeroes biases/BatchNorm, as their
    ``ignore='biasbn'``); its column-centred form M̄ = U S Vᵀ gives the directions
    d_i = V[:, i] (unit), the explained variance ratio s_i² / Σ_j s_j² (as
    ``sklearn.decomposition.PCA``) and the coordinates ⟨θ_t − θ, d_i⟩. Signs are
    fixed so that the first iterate has coordinates ≤ 0 (training runs towards +α, +β).
    Computed in float64 from the T × T Gram matrix, so the cost is O(T²·dim).
    """
    if not isinstance(center, Tensor) or center.dim() != 1:
        raise ValueError("center must be a flat parameter vector")
    rows = list(trajectory)
    if len(rows) < k + 1:
        raise ValueError(
            f"a {k}-D PCA plane needs at least {k + 1} trajectory points, got {len(rows)}"
        )
    for t, r in enumerate(rows):
        if not isinstance(r, Tensor) or r.shape != center.shape:
            shape = tuple(r.shape) if hasattr(r, "shape") else type(r).__name__
            raise ValueError(
                f"trajectory point {t} has shape {shape}, expected {tuple(center.shape)}"
            )
    c64 = center.detach().to(torch.float64)
    diffs = torch.stack([r.detach().to(c64.device, torch.float64) - c64 for r in rows])  # (T, dim)
    if not torch.isfinite(diffs).all():
        raise ValueError("the trajectory contains NaN or inf parameters")
    m = diffs if mask is None else diffs * mask.to(diffs.device, torch.float64)
    mc = m - m.mean(dim=0, keepdim=True)
    gram = mc @ mc.T  # (T, T) = U S² Uᵀ
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    total = float(evals.sum())
    if total <= 0 or float(evals[k - 1]) <= 1e-12 * total:
        raise ValueError(
            f"the trajectory spans fewer than {k} directions (all points on a "
            f"{'point' if total <= 0 else 'lower-dimensional subspace'})"
        )
    s = evals[:k].sqrt()
    dirs = (mc.T @ evecs[:, :k]) / s  # (dim, k): V = M̄ᵀ U S⁻¹
    dirs = dirs / dirs.norm(dim=0, keepdim=True)  # re-normalise against rounding
    coords = diffs @ dirs  # (T, k)
    flip = torch.where(coords[0] > 0, -1.0, 1.0).to(torch.float64)
    dirs, coords = dirs * flip, coords * flip
    return PCAPlane(
        directions=tuple(dirs[:, i].to(center.dtype).to(center.device) for i in range(k)),
        explained_variance_ratio=(evals[:k] / total).numpy(),
        coords=coords.numpy(),
    )


# ------------------------------------------------------------------ evaluation
def plan_blocks(
    *,
    n_points: int,
    dim: int,
    act_per_row: float,
    rows: int,
    itemsize: int,
    memory_budget: int,
) -> int:
    """Grid points per batched pass: the most b with

        b·itemsize·(dim + ACTIVATION_FACTOR·act_per_row·rows) ≤ memory_budget,

    at least 1 and at most ``n_points`` (``act_per_row``: activation scalars one
    sample makes in one forward pass; ``rows``: samples per data chunk).
    """
    per_point = itemsize * (dim + ACTIVATION_FACTOR * act_per_row * rows)
    return int(min(n_points, max(1, memory_budget // max(per_point, 1))))


def _rows_for_budget(
    *, n_points: int, dim: int, act_per_row: float, n_rows: int, itemsize: int, memory_budget: int
) -> int:
    """Rows per data chunk such that min(n_points, 16) points fit in the budget together."""
    want = min(n_points, 16)
    room = memory_budget / (want * itemsize) - dim
    rows = int(room // max(ACTIVATION_FACTOR * act_per_row, 1))
    return int(min(n_rows, max(1, rows)))


def _activations_per_row(model: nn.Module, term: Term, params: tuple[Tensor, ...]) -> float:
    """Scalars written by the forward pass of one chunk (every module's tensor outputs),
    per sample: an estimate of the activation memory of one grid point."""
    count = [0]

    def hook(_module, _inputs, output):
        outs = output if isinstance(output, (tuple, list)) else (output,)
        count[0] += sum(o.numel() for o in outs if isinstance(o, Tensor))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            term.output(params)
    finally:
        for h in handles:
            h.remove()
    return count[0] / max(term.size, 1)


def _correct(out: Tensor, targets) -> Tensor:
    """Correct predictions along the last-but-one axis: argmax of the outputs against
    integer labels, or against the argmax of one-hot/float targets of the outputs' shape."""
    if not isinstance(targets, Tensor) or out.shape[-1] < 2:
        raise ValueError(
            "accuracy needs class outputs (≥ 2 columns) and tensor targets; "
            "pass accuracy=False for regression"
        )
    pred = out.argmax(dim=-1)
    if not targets.is_floating_point() and targets.shape == out.shape[-2:-1]:
        return (pred == targets).sum(dim=-1)
    if targets.shape == out.shape[-2:]:
        return (pred == targets.argmax(dim=-1)).sum(dim=-1)
    raise ValueError(
        f"accuracy needs integer labels of shape {tuple(out.shape[-2:-1])} or targets of "
        f"the outputs' shape {tuple(out.shape[-2:])}, got {tuple(targets.shape)}"
    )


def _grid(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers")
    return arr


def _check_int(name: str, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def evaluate_points(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    directions: Sequence[Tensor],
    coords,
    *,
    accuracy: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    points_per_block: int | None = None,
    batched: bool = True,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """L(θ + Σ_i c_{g,i}·d_i) (and the accuracy) at every row c_g of ``coords`` (G × k).

    L is the mean over the data of ``loss_fn(model(x), y)``, summed over chunks
    as n_c·L_c and divided by N. ``data``: an (X, y) pair (chunks of
    ``chunk_size`` rows; None: as many rows as the memory budget allows 16
    points at once) or a re-iterable of (inputs, targets) batches. With
    ``batched`` the points go through ``vmap`` in blocks of ``points_per_block``
    (None: :func:`plan_blocks` under ``memory_budget`` bytes); without it, one
    point at a time. ``mode="train"`` draws the same dropout masks at every
    point (the RNG is re-seeded from ``seed`` for each chunk) and BatchNorm uses
    each chunk's statistics. Returns float64 arrays of length G (accuracy None
    unless asked for).
    """
    check_mode(mode)
    _check_int("chunk_size", chunk_size)
    _check_int("points_per_block", points_per_block)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive int (bytes), got {memory_budget!r}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be a function (output, target) -> mean loss")
    named = select_params(model)
    names = list(named)
    ps = list(named.values())
    dtype, device = ps[0].dtype, ps[0].device
    shapes, numels = [p.shape for p in ps], [p.numel() for p in ps]
    dim = sum(numels)
    dirs = list(directions)
    if not dirs:
        raise ValueError("give at least one direction")
    for i, d in enumerate(dirs):
        if not isinstance(d, Tensor) or d.shape != (dim,):
            shape = tuple(d.shape) if hasattr(d, "shape") else type(d).__name__
            raise ValueError(f"direction {i} must be a flat vector of shape ({dim},), got {shape}")
    D = torch.stack([d.detach().to(device, dtype) for d in dirs])  # (k, dim)
    C = torch.as_tensor(np.asarray(coords, dtype=np.float64), device=device).to(dtype)
    if C.dim() != 2 or C.shape[1] != len(dirs) or C.shape[0] == 0:
        raise ValueError(f"coords must have shape (points, {len(dirs)}), got {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise ValueError("coords must be finite")
    data = check_data(data, device, None)
    theta = torch.cat([p.detach().reshape(-1) for p in ps])
    G = C.shape[0]

    def params_of(block: Tensor) -> tuple[Tensor, ...]:
        # θ + Σ_i c_i·d_i, entrywise the same for any block size (loop == batched bitwise)
        flat = theta + (block[:, :, None] * D[None]).sum(dim=1)  # (b, dim)
        return tuple(t.reshape(-1, *s) for t, s in zip(flat.split(numels, dim=1), shapes))

    loss_sum = torch.zeros(G, dtype=torch.float64, device=device)
    correct = torch.zeros(G, dtype=torch.float64, device=device)
    n_total = 0
    with preserved(model, mode), torch.no_grad():
        base = tuple(p.detach() for p in ps)
        first = next(loss_terms(model, names, _head(data), loss_fn=loss_fn, chunk_size=None), None)
        if first is None:
            raise ValueError("the data set is empty")
        act = _activations_per_row(model, first, base)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if chunk_size is None and isinstance(data, tuple):
            chunk_size = _rows_for_budget(
                n_points=G, dim=dim, act_per_row=act, n_rows=len(data[0]),
                itemsize=itemsize, memory_budget=memory_budget,
            )  # fmt: skip
        terms = list(loss_terms(model, names, data, loss_fn=loss_fn, chunk_size=chunk_size))
        if not batched:
            for g in range(G):
                params = tuple(t[0] for t in params_of(C[g : g + 1]))
                for c, term in enumerate(terms):
                    with _seed(mode, seed + c):
                        out = term.output(params)
                        loss_sum[g] += term.output_loss(out).to(torch.float64)
                    if accuracy:
                        correct[g] += _correct(out, term.targets).to(torch.float64)
        else:
            for c, term in enumerate(terms):
                b = points_per_block or plan_blocks(
                    n_points=G, dim=dim, act_per_row=act, rows=term.size,
                    itemsize=itemsize, memory_budget=memory_budget,
                )  # fmt: skip
                for start in range(0, G, b):
                    stacked = params_of(C[start : start + b])
                    with _seed(mode, seed + c):
                        out = _batched_output(model, term, stacked)
                        losses = vmap(term.output_loss)(out)
                    loss_sum[start : start + b] += losses.to(torch.float64)
                    if accuracy:
                        correct[start : start + b] += _correct(out, term.targets).to(torch.float64)
        n_total = sum(t.size for t in terms)
    if n_total == 0:
        raise ValueError("the data set is empty")
    loss = (loss_sum / n_total).cpu().numpy()
    acc = (correct / n_total).cpu().numpy() if accuracy else None
    return loss, acc


def _head(data):
    """The first few rows of a pair, or the first batch of an iterable (for the estimate)."""
    if isinstance(data, tuple):
        x, y = data
        return (x[:64], y[:64])
    return [next(iter(data))]


class _seed:
    """``seeded_rng(seed)`` in train mode (same dropout masks at every point), else nothing."""

    def __init__(self, mode: str, seed: int):
        self.ctx = seeded_rng(seed) if mode == "train" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def _batched_output(model: nn.Module, term: Term, stacked: tuple[Tensor, ...]) -> Tensor:
    """f at b parameter vectors at once: (b, n, …). Buffers go in as b copies, so a
    train-mode BatchNorm updates its own copy per point (and never the model's)."""
    b = stacked[0].shape[0]
    bnames = list(term.buffers)
    bufs = tuple(v.detach().unsqueeze(0).expand(b, *v.shape).clone() for v in term.buffers.values())

    def one(params, buffers):
        state = {**term.fixed, **dict(zip(bnames, buffers)), **dict(zip(term.names, params))}
        return _call(model, state, term.inputs)

    return vmap(one, randomness="same")(stacked, bufs)


# ------------------------------------------------------------------ the API
def _default_range(coords: np.ndarray, n: int) -> np.ndarray:
    lo, hi = float(coords.min()), float(coords.max())
    pad = 0.25 * max(hi - lo, 1e-12)
    return np.linspace(lo - pad, hi + pad, n)


def loss_landscape(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data,
    directions: str | Sequence[Tensor] = "random",
    *,
    dims: int = 2,
    alphas=None,
    betas=None,
    points: int | None = None,
    seed: int = 0,
    ignore: str | None = "biasbn",
    trajectory: Sequence[Tensor] | None = None,
    accuracy: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    points_per_block: int | None = None,
    batched: bool = True,
    mode: str = DEFAULT_MODE,
    lanczos_options: dict | None = None,
) -> Landscape:
    """ℓ(α) = L(θ + α·d₁) (``dims=1``) or ℓ(α, β) = L(θ + α·d₁ + β·d₂) (``dims=2``).

    Args:
        model, loss_fn, data: as for the curvature operators ((X, y) or
            (inputs, targets) batches; ``loss_fn`` mean-reduced).
        directions: ``"random"`` (filter-normalized, Li et al. 2018),
            ``"hessian"`` (top eigenvectors of H), ``"pca"`` (PCA plane of
            ``trajectory``, a sequence of flat parameter vectors θ_t, each the
            trainable parameters concatenated in ``named_parameters()`` order)
            or ``dims`` flat tensors in that order.
        alphas, betas: grid coordinates; default ``points`` values (51 in 1-D,
            21 in 2-D) in [−1, 1], or for ``"pca"`` the trajectory's extent
            plus a quarter on each side.
        ignore: ``"biasbn"`` (default) zeroes random and PCA directions on
            1-D tensors; None keeps them (random: d = θ there).
        accuracy: also the fraction of correct argmax predictions.
        chunk_size, memory_budget, points_per_block, batched, mode: see
            :func:`evaluate_points`.
        lanczos_options: extra arguments of :func:`lanczos` (``"hessian"``).
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    _check_ignore(ignore)
    _check_int("points", points)
    n = points or (51 if dims == 1 else 21)
    eig = evr = traj = None
    if isinstance(directions, str):
        kind = directions
        if kind == "random":
            dirs = random_directions(model, dims, seed=seed, ignore=ignore)
        elif kind == "hessian":
            dirs, eig = hessian_directions(
                model, loss_fn, data, dims, chunk_size=chunk_size, mode=mode, seed=seed,
                **(lanczos_options or {}),
            )  # fmt: skip
        elif kind == "pca":
            if trajectory is None:
                raise ValueError("directions='pca' needs trajectory= (flat parameter vectors)")
            center = torch.cat([p.detach().reshape(-1) for p in select_params(model).values()])
            plane = pca_directions(
                trajectory, center, k=dims,
                mask=multi_dim_mask(model) if ignore == "biasbn" else None,
            )  # fmt: skip
            dirs, evr, traj = list(plane.directions), plane.explained_variance_ratio, plane.coords
        else:
            raise ValueError(
                f"directions must be one of {', '.join(DIRECTIONS)} or {dims} flat tensors, "
                f"got {directions!r}"
            )
    else:
        kind = "given"
        dirs = list(directions)
        if len(dirs) != dims:
            raise ValueError(f"dims={dims} needs {dims} direction tensors, got {len(dirs)}")
    if alphas is None:
        alphas = _default_range(traj[:, 0], n) if traj is not None else np.linspace(-1, 1, n)
    alphas = _grid(alphas, "alphas")
    if dims == 1:
        if betas is not None:
            raise ValueError("betas is for dims=2")
        coords = alphas[:, None]
        beta_arr = None
    else:
        if betas is None:
            betas = _default_range(traj[:, 1], n) if traj is not None else np.linspace(-1, 1, n)
        beta_arr = _grid(betas, "betas")
        a, b = np.meshgrid(alphas, beta_arr)  # (B, A)
        coords = np.stack([a.ravel(), b.ravel()], axis=1)
    loss, acc = evaluate_points(
        model, loss_fn, data, dirs, coords, accuracy=accuracy, chunk_size=chunk_size,
        memory_budget=memory_budget, points_per_block=points_per_block, batched=batched,
        mode=mode, seed=seed,
    )  # fmt: skip
    shape = (len(alphas),) if dims == 1 else (len(beta_arr), len(alphas))
    return Landscape(
        alphas=alphas, betas=beta_arr, loss=loss.reshape(shape),
        accuracy=None if acc is None else acc.reshape(shape),
        directions=tuple(d.detach() for d in dirs), kind=kind, eigenvalues=eig,
        explained_variance_ratio=evr, trajectory=traj,
    )  # fmt: skip
