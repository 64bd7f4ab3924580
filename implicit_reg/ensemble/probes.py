"""Curvature probes for every member of an ensemble at once.

The members of a :mod:`implicit_reg.ensemble.vectorized` ensemble are stacked
tensors Θ = (θ_1, …, θ_M). The ensemble loss 𝓛(Θ) = Σ_m L_m(θ_m) has the
block-diagonal Hessian blockdiag(H_1, …, H_M), so one call of the package's
HVP, :func:`implicit_reg.core.hvp.grad_and_hvp`, on 𝓛 with the stacked direction
V = (v_1, …, v_M) returns (H_m v_m)_m: every member's Hessian-vector
product in one batched pass (:func:`ensemble_hvp`). On top of it:

- :func:`ensemble_lanczos_max`: λ_max(H_m) for all members by Lanczos
  (Lanczos 1950) with full reorthogonalization: M runs of the package's one
  Lanczos recurrence (:class:`implicit_reg.probes.krylov.Run`, the one
  :func:`implicit_reg.probes.lanczos` runs), side by side (each member its
  own tridiagonal T_m, own start vector, own stopping test
  β_j·|s_j| ≤ tol·‖T_j‖), all M products of a step from one ensemble HVP.
  A member that has converged is frozen while the others go on.
- :func:`ensemble_hutchinson`: Hutchinson's estimate tr(H_m) ≈
  (1/n)Σ_j z_jᵀH_m z_j with Rademacher z_j (Hutchinson 1989), n HVPs for all
  members together, through the package's one Hutchinson loop
  (:func:`implicit_reg.probes.trace.hutchinson_samples`).
- :func:`ensemble_grad_norm_sq`: ‖∇L_m‖² for all members from one backward.

Every random draw comes from a private ``torch.Generator`` per member seeded
with that member's seed, in the order :mod:`implicit_reg.probes` draws them,
so member m's numbers equal the serial probe's on member m alone (to
rounding; ``tests/test_vectorized.py``). Nothing is modified: the functions
take the stacked tensors and return numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.hvp import DEFAULT_METHOD, Params, check_method, grad_and_hvp
from ..probes.krylov import Run
from ..probes.trace import hutchinson_samples, rademacher
from .vectorized import ensemble_gradient, member_sq_norms

__all__ = [
    "flatten_members",
    "unflatten_members",
    "ensemble_hvp",
    "ensemble_grad_norm_sq",
    "EnsembleEig",
    "ensemble_lanczos_max",
    "EnsembleTrace",
    "ensemble_hutchinson",
]

LossFns = Sequence[Callable[[Params], Tensor]]


def flatten_members(tensors: Sequence[Tensor]) -> Tensor:
    """Stacked tensors ``[M, …]`` as one ``[M, D]`` matrix (member m's flat vector in row m)."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)


def unflatten_members(flat: Tensor, like: Sequence[Tensor]) -> Params:
    """Inverse of :func:`flatten_members`: ``[M, D]`` back to tensors shaped like ``like``."""
    sizes = [t[0].numel() for t in like]
    return tuple(part.reshape(t.shape) for part, t in zip(torch.split(flat, sizes, dim=1), like))


def ensemble_hvp(
    loss_fns: LossFns, params: Params, vecs: Sequence[Tensor], *, method: str = DEFAULT_METHOD
) -> Params:
    """(H_m v_m)_m for every member: the package's HVP on 𝓛(Θ) = Σ_m L_m(θ_m).

    Args:
        loss_fns: chunk functions from :func:`implicit_reg.ensemble.vectorized.ensemble_loss_fns`.
        params: Θ, stacked.
        vecs: V, stacked like Θ.
        method: one of :data:`implicit_reg.core.hvp.HVP_METHODS`.
    """
    check_method(method)
    ps = tuple(p.detach().requires_grad_(True) for p in params)
    vecs = tuple(v.detach() for v in vecs)
    total = None
    for f in loss_fns:
        _, hv = grad_and_hvp(lambda q, f=f: f(q).sum(), ps, vecs, method=method)
        total = hv if total is None else tuple(a + b for a, b in zip(total, hv))
    return total


def ensemble_grad_norm_sq(loss_fns: LossFns, params: Params) -> Tensor:
    """‖∇L_m(θ_m)‖² for every member, float64, shape ``[M]``, from one backward pass."""
    return member_sq_norms(ensemble_gradient(loss_fns, params)[1])


def _generators(seeds: Sequence[int] | int, size: int, device) -> list[torch.Generator]:
    if isinstance(seeds, int):
        seeds = [seeds] * size
    seeds = list(seeds)
    if len(seeds) != size:
        raise ValueError(f"need one seed per member ({size}), got {len(seeds)}")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _flat_hvp(loss_fns: LossFns, params: Params, method: str) -> Callable[[Tensor], Tensor]:
    """Q ↦ (H_m q_m)_m on ``[M, D]`` float64 matrices (computed in the parameters' dtype)."""

    def apply(q: Tensor) -> Tensor:
        v = unflatten_members(q.to(params[0].dtype), params)
        return flatten_members(ensemble_hvp(loss_fns, params, v, method=method)).double()

    return apply


@dataclass
class EnsembleEig:
    """λ_max per member.

    Attributes:
        eigenvalues: ``[M]`` float64 largest Ritz value of each member.
        residual_bounds: ``[M]`` β·|s| (the Lanczos residual estimate ‖Hv − λv‖).
        converged: ``[M]`` bool, whether the member met its stopping test.
        n_iter: ``[M]`` Lanczos steps each member took.
        n_hvp: batched HVP calls (each one HVP for every member).
        eigenvectors: ``[M, D]`` float64 unit top Ritz vector of each member
            (the warm start of the next probe, ``v0=``).
    """

    eigenvalues: Tensor
    residual_bounds: Tensor
    converged: Tensor
    n_iter: Tensor
    n_hvp: int
    eigenvectors: Tensor | None = None


def ensemble_lanczos_max(
    loss_fns: LossFns,
    params: Params,
    *,
    seeds: Sequence[int] | int = 0,
    tol: float | None = None,
    max_iter: int | None = None,
    method: str = DEFAULT_METHOD,
    v0: Tensor | None = None,
) -> EnsembleEig:
    """Largest Hessian eigenvalue of every member by Lanczos, all members in one pass.

    Member m starts from the unit vector ``randn(D, generator=seed_m)`` (as
    :func:`implicit_reg.probes.lanczos` does), or from row m of ``v0`` (e.g.
    the ``eigenvectors`` of the previous probe: a warm start), and stops when its top Ritz
    pair has β_j·|s_{j,top}| ≤ tol·‖T_j‖ (‖T_j‖ estimated by the running
    max of |α_i| + β_i + β_{i−1}); the others go on. Basis in float64, full
    reorthogonalization applied twice.

    Args:
        loss_fns, params: as :func:`ensemble_hvp`.
        seeds: start-vector seed per member (or one for all).
        tol: relative residual tolerance; None: √ε of the parameters' dtype.
        max_iter: most steps (default min(D, 300)).
        method: HVP form.
        v0: ``[M, D]`` start vectors (non-zero rows), or None for random ones.
    """
    params = tuple(params)
    size, device = params[0].shape[0], params[0].device
    dim = sum(p[0].numel() for p in params)
    if tol is None:
        tol = math.sqrt(torch.finfo(params[0].dtype).eps)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 or None, got {tol!r}")
    max_iter = min(dim, 300) if max_iter is None else max_iter
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    apply = _flat_hvp(loss_fns, params, method)
    gens = _generators(seeds, size, device)
    if v0 is None:
        q0 = torch.stack(
            [torch.randn(dim, generator=g, device=device, dtype=torch.float64) for g in gens]
        )
    else:
        if not isinstance(v0, Tensor) or v0.shape != (size, dim):
            shape = tuple(v0.shape) if hasattr(v0, "shape") else type(v0).__name__
            raise ValueError(f"v0 must have shape ({size}, {dim}), got {shape}")
        q0 = v0.detach().to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(q0).all()) or bool((q0.norm(dim=1) == 0).any()):
            raise ValueError("every row of v0 must be finite and non-zero")
    q0 = q0 / q0.norm(dim=1, keepdim=True)
    runs = [Run(q0[m][:, None], restart=False) for m in range(size)]
    value = torch.full((size,), math.nan, dtype=torch.float64)
    bound = torch.full((size,), math.nan, dtype=torch.float64)
    converged = torch.zeros(size, dtype=torch.bool)
    ritz: list = [None] * size  # (S, top) of each member's last step
    live, n_hvp = list(range(size)), 0
    while live:
        Q = torch.zeros(size, dim, dtype=torch.float64, device=device)  # frozen members: 0
        for m in live:
            Q[m] = runs[m].next[0]
        W = apply(Q)  # (H_m q_m)_m, one ensemble HVP
        n_hvp += 1
        still = []
        for m in live:
            run = runs[m]
            more = run.advance(W[m : m + 1], max_iter)
            theta, S = run.ritz()
            top = len(theta) - 1
            value[m], bound[m] = float(theta[top]), float(run.bounds(S, [top])[0])
            ritz[m] = (S, top)
            if run.exhausted or bound[m] <= tol * run.scale:
                converged[m] = True
            elif more:
                still.append(m)
        live = still
    vecs = torch.stack([run.vectors(S, [top])[:, 0] for run, (S, top) in zip(runs, ritz)])
    return EnsembleEig(
        eigenvalues=value,
        residual_bounds=bound,
        converged=converged,
        n_iter=torch.tensor([run.m for run in runs]),
        n_hvp=n_hvp,
        eigenvectors=vecs,
    )


@dataclass
class EnsembleTrace:
    """Hutchinson trace per member: ``estimate`` and ``stderr`` ``[M]``, ``n_samples``."""

    estimate: Tensor
    stderr: Tensor
    n_samples: int


def ensemble_hutchinson(
    loss_fns: LossFns,
    params: Params,
    *,
    n_samples: int = 30,
    seeds: Sequence[int] | int = 0,
    method: str = DEFAULT_METHOD,
) -> EnsembleTrace:
    """tr(H_m) ≈ (1/n)·Σ_j z_jᵀ H_m z_j for every member, Rademacher z_j.

    Member m's probes are drawn from its own generator seeded with
    ``seeds[m]``, in the order :func:`implicit_reg.probes.hutchinson` draws
    them, so a fixed ``n_samples`` gives that function's estimate (run with
    ``min_samples = max_samples = n_samples``). SE = std(z_jᵀHz_j)/√n.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    params = tuple(params)
    size, device = params[0].shape[0], params[0].device
    dim = sum(p[0].numel() for p in params)
    apply = _flat_hvp(loss_fns, params, method)
    gens = _generators(seeds, size, device)

    def quad(b: int) -> Tensor:  # member m's next b probes from its own generator, in order
        Z = torch.stack([rademacher((b, dim), g, device) for g in gens])  # [M, b, D]
        return torch.stack([(Z[:, j] * apply(Z[:, j])).sum(1) for j in range(b)], 1)

    s = hutchinson_samples(
        quad, rtol=0.0, min_samples=n_samples, max_samples=n_samples, block_size=n_samples
    )  # [M, n]: the one Hutchinson loop, at a fixed n
    return EnsembleTrace(
        estimate=s.mean(1).cpu(),
        stderr=(s.std(1, unbiased=True) / math.sqrt(n_samples)).cpu(),
        n_samples=n_samples,
    )
