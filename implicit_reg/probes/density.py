"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

The empirical spectral density φ(t) = (1/d)·Σ_i δ(t − λ_i) is estimated as in
Ghorbani, Krishnan & Xiao (ICML 2019) and Ubaru, Chen & Saad (SIMAX 2017):
for a random unit vector v, m Lanczos steps from v give T_m = V Θ Vᵀ, and

    vᵀ g(H) v ≈ Σ_j τ_j g(θ_j),    τ_j = V_{1j}²    (Gauss quadrature),

with E[vᵀ g(H) v] = (1/d)·tr g(H). Averaging over ``n_runs`` vectors and
replacing each δ by a Gaussian of width σ gives

    φ_σ(t) = (1/n_runs)·Σ_r Σ_j τ_rj·N(t; θ_rj, σ²),

evaluated on a grid and renormalized to integrate to 1 (trapezoid rule).
The extreme nodes θ converge to λ_min and λ_max first. The tridiagonal
eigenproblem is solved with ``scipy.linalg.eigh_tridiagonal``; the Lanczos
basis is fully reorthogonalized (PyHessian's SLQ does the same).

The ``n_runs`` recurrences are runs of the package's one Lanczos
(:class:`implicit_reg.probes.krylov.Run`, single-vector, stopped at an
invariant subspace) stepped side by side (:func:`~implicit_reg.probes.krylov.step_together`):
each step is one batched product ``op.matmat`` of the live runs' current
vectors, one pass over the data for all of them. Each run's arithmetic is
that of a lone Lanczos run, so the nodes and weights equal the
one-run-at-a-time ones to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .krylov import Run, rows_of, step_together

__all__ = ["DensityResult", "slq_density"]

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


@dataclass
class DensityResult:
    """A broadened spectral density, ready to plot (``plt.plot(r.grid, r.density)``).

    Attributes:
        grid: ``(grid_size,)`` points t.
        density: ``(grid_size,)`` φ_σ(t) ≥ 0, integrating to 1 on ``grid``.
        nodes: list over runs of the Ritz values θ (ascending).
        weights: list over runs of the quadrature weights τ (each sums to 1).
        sigma: the Gaussian width used.
        n_hvp: HVPs spent.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    sigma: float
    n_hvp: int


def slq_density(
    op,
    *,
    n_steps: int = 80,
    n_runs: int = 4,
    sigma: float | None = None,
    rel_sigma: float = 0.01,
    grid_size: int = 1000,
    seed: int = 0,
) -> DensityResult:
    """Spectral density by stochastic Lanczos quadrature.

    Args:
        op: operator with ``matvec``, ``dim``, ``dtype``, ``device``.
        n_steps: Lanczos steps per run (capped at ``dim``; a run that finds an
            invariant subspace earlier stops there, with exact quadrature).
        n_runs: independent random start vectors (Rademacher, normalized).
        sigma: Gaussian width; None means ``rel_sigma``·(θ_max − θ_min).
        grid_size: number of grid points; the grid spans
            [θ_min − 5σ, θ_max + 5σ].
        seed: seeds a private ``torch.Generator``.
    """
    for name, val, low in (
        ("n_steps", n_steps, 1),
        ("n_runs", n_runs, 1),
        ("grid_size", grid_size, 2),
    ):
        if not isinstance(val, int) or isinstance(val, bool) or val < low:
            raise ValueError(f"{name} must be an int >= {low}, got {val!r}")
    if sigma is not None and (not math.isfinite(sigma) or sigma <= 0):
        raise ValueError(f"sigma must be positive or None, got {sigma!r}")
    if not math.isfinite(rel_sigma) or rel_sigma <= 0:
        raise ValueError(f"rel_sigma must be positive, got {rel_sigma!r}")
    gen = torch.Generator(device=op.device).manual_seed(int(seed))
    start = op.n_hvp
    v0 = [
        torch.randint(0, 2, (op.dim,), generator=gen, device=op.device).double() * 2 - 1
        for _ in range(n_runs)
    ]
    runs = [Run(v[:, None], restart=False) for v in v0]
    apply, steps, live = rows_of(op), min(n_steps, op.dim), runs
    while live:  # one batched product of the live runs' vectors per step
        more = step_together(live, apply, steps)
        live = [r for r, go in zip(live, more) if go]
    nodes, weights = [], []
    for run in runs:
        theta, S = run.ritz()
        nodes.append(theta)
        weights.append(S[0] ** 2)
    lo = min(float(t.min()) for t in nodes)
    hi = max(float(t.max()) for t in nodes)
    if sigma is None:
        width = hi - lo
        sigma = rel_sigma * (width if width > 0 else max(abs(hi), 1.0))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size)
    density = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        z = (grid[:, None] - theta[None, :]) / sigma
        density += (np.exp(-0.5 * z**2) * tau[None, :]).sum(axis=1)
    density /= n_runs * sigma * math.sqrt(2 * math.pi)
    density /= _trapezoid(density, grid)
    return DensityResult(grid, density, nodes, weights, float(sigma), op.n_hvp - start)
