"""Loss landscape slices: 1-D and 2-D cuts through parameter space.

    1-D:  ℓ(α)    = L(θ + α·d),
    2-D:  ℓ(α, β) = L(θ + α·d₁ + β·d₂),

along either random *filter-normalized* directions (Li, Xu, Taylor, Studer
& Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018)
or the top Hessian eigenvector(s) (unit vectors, so α is a distance in
parameter space). Filter normalization: a Gaussian direction d is rescaled
filter by filter, d_f ← d_f·‖θ_f‖/‖d_f‖, where a filter is one slice along
the first axis of a weight tensor (a row of a Linear weight, an output
channel of a conv kernel). Following Li et al.'s default, directions are
zero on 1-D tensors (biases, BatchNorm affine parameters).

Only trainable parameters move. The losses are evaluated by the package's one
grid evaluator, :func:`implicit_reg.probes.landscape.evaluate_points` (the points
in ``vmap`` blocks under a memory budget). The results are NumPy arrays ready for
``plt.plot(s.alphas, s.losses)`` and ``plt.contour(s.alphas, s.betas, s.losses)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ..core.hvp import DEFAULT_METHOD
from ..core.objective import Data
from .eigen import lanczos
from .landscape import evaluate_points, filter_normalized_direction
from .operator import HessianOperator
from .state import DEFAULT_MODE

__all__ = [
    "Slice1D",
    "Slice2D",
    "top_eigenvector_directions",
    "loss_slice_1d",
    "loss_slice_2d",
]


@dataclass
class Slice1D:
    """ℓ(α) = L(θ + α·d): ``losses[i]`` at ``alphas[i]``; ``direction`` is d (flat)."""

    alphas: np.ndarray
    losses: np.ndarray
    direction: Tensor


@dataclass
class Slice2D:
    """ℓ(α, β) = L(θ + α·d₁ + β·d₂): ``losses[j, i]`` at (``alphas[i]``, ``betas[j]``)."""

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    directions: tuple[Tensor, Tensor]


def top_eigenvector_directions(op: HessianOperator, k: int = 1, **lanczos_options) -> list[Tensor]:
    """The k top Hessian eigenvectors (unit, flat, in ``op.dtype``) by :func:`lanczos`."""
    res = lanczos(op, k, which="LA", **lanczos_options)
    return [res.eigenvectors[:, i].to(op.dtype) for i in range(k)]


def _grid(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers")
    return arr


def _direction(op: HessianOperator, model: nn.Module, d, seed: int) -> Tensor:
    if isinstance(d, Tensor):
        return op._check_vec(d).to(op.dtype)
    if d == "random":
        return filter_normalized_direction(model, seed=seed)
    if d == "top_eigenvector":
        return top_eigenvector_directions(op, 1, seed=seed)[0]
    raise ValueError(f"direction must be 'random', 'top_eigenvector' or a flat tensor, got {d!r}")


def loss_slice_1d(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    direction: str | Tensor = "random",
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    method: str = DEFAULT_METHOD,
) -> Slice1D:
    """ℓ(α) = L(θ + α·d) on ``alphas`` (default 21 points in [−1, 1]).

    ``direction``: ``"random"`` (filter-normalized, seeded), ``"top_eigenvector"``
    (unit top eigenvector by Lanczos) or a flat tensor over the trainable
    parameters.
    """

    alphas = _grid(np.linspace(-1, 1, 21) if alphas is None else alphas, "alphas")
    op = HessianOperator(model, loss_fn, data, chunk_size=chunk_size, mode=mode, method=method)
    d = _direction(op, model, direction, seed)
    losses, _ = evaluate_points(
        model, loss_fn, op.data, [d], alphas[:, None], chunk_size=chunk_size, mode=mode,
        seed=seed,
    )  # fmt: skip
    return Slice1D(alphas, losses, d)


def loss_slice_2d(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    data: Data,
    directions: str | tuple[Tensor, Tensor] = "random",
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    betas: Sequence[float] | np.ndarray | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    mode: str = DEFAULT_MODE,
    method: str = DEFAULT_METHOD,
) -> Slice2D:
    """ℓ(α, β) = L(θ + α·d₁ + β·d₂) on a grid (default 11 × 11 in [−1, 1]²).

    ``directions``: ``"random"`` (two filter-normalized directions, seeds
    ``seed`` and ``seed + 1``), ``"top_eigenvectors"`` (the two top unit
    eigenvectors) or a pair of flat tensors.
    """
    alphas = _grid(np.linspace(-1, 1, 11) if alphas is None else alphas, "alphas")
    betas = _grid(np.linspace(-1, 1, 11) if betas is None else betas, "betas")
    op = HessianOperator(model, loss_fn, data, chunk_size=chunk_size, mode=mode, method=method)
    if isinstance(directions, str):
        if directions == "random":
            d1 = filter_normalized_direction(model, seed=seed)
            d2 = filter_normalized_direction(model, seed=seed + 1)
        elif directions == "top_eigenvectors":
            d1, d2 = top_eigenvector_directions(op, 2, seed=seed)
        else:
            raise ValueError(
                f"directions must be 'random', 'top_eigenvectors' or a pair of flat tensors, got {directions!r}"
            )
    else:
        if len(directions) != 2:
            raise ValueError("directions must be a pair of flat tensors")
        d1, d2 = (_direction(op, model, d, seed) for d in directions)

    coords = np.stack(np.meshgrid(alphas, betas), axis=-1).reshape(-1, 2)  # row j: β_j
    losses, _ = evaluate_points(
        model, loss_fn, op.data, [d1, d2], coords, chunk_size=chunk_size, mode=mode, seed=seed
    )
    return Slice2D(alphas, betas, losses.reshape(len(betas), len(alphas)), (d1, d2))
