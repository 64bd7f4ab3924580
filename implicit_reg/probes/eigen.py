"""Extreme eigenvalues of a symmetric operator: Lanczos, ARPACK and power iteration.

All three take any operator with the flat-vector interface of
:class:`implicit_reg.probes.operator.HessianOperator` (``matvec``, ``dim``,
``dtype``, ``device``, ``n_hvp``) and return an :class:`EigResult` that
certifies itself: each Ritz pair (λ, v) carries its residual ‖Hv − λv‖
computed with one extra HVP, a converged flag and the HVP count.

- :func:`lanczos` (default): Lanczos (Lanczos 1950) with full
  reorthogonalization against every stored basis vector ("twice is enough",
  Giraud et al. 2005), basis kept in float64: one run of the package's one
  Lanczos recurrence, :class:`implicit_reg.probes.krylov.Run` (single-vector
  by default, a block of p with ``block_size=p``). After each step the tridiagonal
  T_m = Qᵀ H Q is diagonalized (``scipy.linalg.eigh_tridiagonal``); the Ritz
  pair (θ_i, Q s_i) has residual ‖H Q s_i − θ_i Q s_i‖ = β_m·|s_{m,i}|
  (Parlett 1998, §13.2), and iteration stops when that is ≤ tol·‖T_m‖ for
  all k wanted pairs. No restarts, so no HVP is thrown away; memory is
  (steps + 1)·dim float64 numbers.
- :func:`arpack_eigsh`: ``scipy.sparse.linalg.eigsh`` (implicitly restarted
  Lanczos, ARPACK) on a float64 ``LinearOperator``; memory ncv·dim. The
  reference used by the tests and the benchmark with ``tol=0``.
- :func:`power_iteration`: the baseline (as in PyHessian); finds the
  eigenvalue of largest *magnitude*, at a rate set by |λ₂/λ₁|.

Accuracy: with the default ``tol = √ε`` of the operator's dtype the residual
is ≤ 1.5e-8·‖H‖ in float64. An eigenvalue is then within ‖r‖ of a true one,
and within ‖r‖²/gap when it is separated from the rest of the spectrum by
``gap`` (Kato–Temple), i.e. to about machine precision.

``which="LA"`` gives the largest (algebraic) eigenvalues, largest first;
``which="SA"`` the smallest (most negative) ones, smallest first. As with
any single-vector Krylov method, an eigenvalue of multiplicity > 1 is found
once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .krylov import Run, random_unit, rows_of, step_together
from .operator import apply_block, as_linear_operator

__all__ = [
    "EigResult",
    "lanczos",
    "arpack_eigsh",
    "power_iteration",
    "ritz_residuals",
    "default_tol",
    "default_block_size",
]

WHICH = ("LA", "SA")


@dataclass
class EigResult:
    """Eigenpairs of a symmetric operator with their certificates.

    Attributes:
        eigenvalues: ``(k,)`` float64, largest first for ``"LA"``, smallest
            first for ``"SA"``.
        eigenvectors: ``(dim, k)`` float64 unit vectors (columns), or None.
        residuals: ``(k,)`` float64 ‖Hv − λv‖, computed explicitly.
        converged: whether the method's stopping rule was met for all k.
        n_hvp: HVPs spent, including the k residual checks.
        n_iter: Krylov steps (Lanczos) or iterations (power).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    converged: bool
    n_hvp: int
    n_iter: int


def default_tol(dtype: torch.dtype) -> float:
    """√ε of ``dtype``: residual tolerance relative to ‖H‖ (1.5e-8 in float64)."""
    return math.sqrt(torch.finfo(dtype).eps)


def _check_k(op, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 or k > op.dim:
        raise ValueError(f"k must be an int with 1 <= k <= dim = {op.dim}, got {k!r}")


def _check_which(which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which must be 'LA' (largest) or 'SA' (smallest), got {which!r}")


def _check_tol(tol: float | None, op) -> float:
    if tol is None:
        return default_tol(op.dtype)
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0 or None, got {tol!r}")
    return float(tol)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def _apply(op, v: Tensor) -> Tensor:
    """H v with v in float64; the product comes back in float64."""
    return op.matvec(v.to(op.dtype)).to(torch.float64)


def ritz_residuals(op, values: Tensor, vectors: Tensor) -> Tensor:
    """‖H v_i − λ_i v_i‖ for each column v_i, one HVP each (one block)."""
    values = values.to(device=vectors.device, dtype=torch.float64)
    return (apply_block(op, vectors) - vectors * values[None, :]).norm(dim=0)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    return np.arange(k) if which == "SA" else np.arange(len(theta) - 1, len(theta) - 1 - k, -1)


def lanczos(
    op,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float | None = None,
    max_iter: int | None = None,
    seed: int = 0,
    v0: Tensor | None = None,
    return_eigenvectors: bool = True,
    block_size: int | None = None,
) -> EigResult:
    """Top-k (``which="LA"``) or bottom-k (``"SA"``) eigenpairs by (block) Lanczos.

    Stops after m steps when every wanted Ritz pair has
    β_m·|s_{m,i}| ≤ tol·‖T_m‖ (the exact residual in exact arithmetic). With
    ``block_size`` p > 1 it runs block Lanczos (Golub & Underwood 1977): p
    vectors per step through ``op.matmat`` (one pass over the data for all
    p), residual estimate ‖B_m s_i^{(m)}‖ against the same tolerance, the
    same explicit residual check at the end, and eigenvalues of multiplicity
    up to p found with their multiplicity.

    Args:
        op: operator with ``matvec``, ``dim``, ``dtype``, ``device``.
        k: number of eigenpairs, 1 ≤ k ≤ dim.
        which: ``"LA"`` (largest algebraic) or ``"SA"`` (smallest algebraic).
        tol: residual tolerance relative to ‖H‖; None means √ε of
            ``op.dtype`` (1.5e-8 in float64). 0 runs until the space is
            exhausted or ``max_iter``.
        max_iter: most Lanczos steps (default min(dim, max(300, 20k))).
        seed: seeds the random start vector (a private ``torch.Generator``).
        v0: start vector ``(dim,)`` instead of a random one, or a start
            block ``(dim, j)`` (block Lanczos; columns beyond p are dropped,
            missing ones drawn at random), e.g. last probe's eigenvectors.
        return_eigenvectors: keep the Ritz vectors in the result.
        block_size: vectors per step; None: :func:`default_block_size` (1). With p > 1, ``max_iter`` bounds
            the basis vectors (products), not the block steps.

    Returns:
        :class:`EigResult`; ``n_hvp`` = products in the recurrence + k
        residual checks.
    """
    _check_k(op, k)
    _check_which(which)
    tol = _check_tol(tol, op)
    if max_iter is None:
        max_iter = min(op.dim, max(300, 20 * k))
    if max_iter < k:
        raise ValueError(f"max_iter must be >= k = {k}, got {max_iter}")
    p = default_block_size(k) if block_size is None else block_size
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 1:
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    p = int(min(p, op.dim))
    start = op.n_hvp
    gen = _generator(seed, op.device)
    cols: list[Tensor] = []
    if v0 is not None:
        if not isinstance(v0, Tensor) or v0.dim() not in (1, 2) or v0.shape[0] != op.dim:
            shape = tuple(v0.shape) if hasattr(v0, "shape") else type(v0).__name__
            raise ValueError(f"v0 must have shape ({op.dim},) or ({op.dim}, j), got {shape}")
        v0 = v0.to(device=op.device, dtype=torch.float64)
        if not bool(torch.isfinite(v0).all()) or not v0.norm() > 0:
            raise ValueError("v0 must be a finite, non-zero vector")
        cols = list((v0[:, None] if v0.dim() == 1 else v0)[:, :p].T)
        if p == 1 and not cols[0].norm() > 0:
            raise ValueError("v0 must be a non-zero vector")
    while len(cols) < p:
        cols.append(random_unit(op.dim, gen, op.device))
    run = Run(torch.stack(cols, dim=1), gen=gen, restart=True)
    apply = rows_of(op)
    converged = False
    while True:
        (more,) = step_together([run], apply, max(max_iter, k))
        if run.m >= k:
            theta, S = run.ritz()
            idx = _select(theta, k, which)
            if run.exhausted or np.all(run.bounds(S, idx) <= tol * run.scale):
                converged = True
                break
        if not more:
            break
    values = torch.as_tensor(theta[idx].copy(), dtype=torch.float64)
    Y = run.vectors(S, idx)
    residuals = ritz_residuals(op, values.to(op.device), Y).cpu()
    return EigResult(
        eigenvalues=values,
        eigenvectors=Y if return_eigenvectors else None,
        residuals=residuals,
        converged=converged,
        n_hvp=op.n_hvp - start,
        n_iter=len(run.sizes),
    )


def default_block_size(k: int) -> int:
    """Block size of :func:`lanczos` for k wanted pairs: 1 (single-vector Lanczos).

    ``benchmarks/bench_probes_batched.py`` measures block Lanczos (p = 2, 5)
    against it for k = 5: block Lanczos needs more products in all (53 and
    90 against 38 on the small MLP) and, on CPU, the batched product does not
    save enough per vector to make up for it, so it is opt-in.
    """
    return 1


def arpack_eigsh(
    op,
    k: int = 1,
    *,
    which: str = "LA",
    tol: float = 0.0,
    max_iter: int | None = None,
    ncv: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = True,
) -> EigResult:
    """Eigenpairs from ARPACK (``scipy.sparse.linalg.eigsh``) in float64.

    ``tol=0`` is ARPACK's machine-precision criterion (Ritz estimate ≤ ε·|θ|).
    The start vector is drawn from ``seed``. ``converged`` is False when
    ARPACK stopped at ``max_iter`` restarts; the best Ritz pairs are returned.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    _check_k(op, k)
    _check_which(which)
    if k >= op.dim:  # ARPACK needs k < dim: fall back to a complete Lanczos
        return lanczos(
            op,
            k,
            which=which,
            tol=0.0,
            max_iter=op.dim,
            seed=seed,
            return_eigenvectors=return_eigenvectors,
        )
    start = op.n_hvp
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(op.dim)
    converged = True
    try:
        vals, vecs = eigsh(
            as_linear_operator(op), k=k, which=which, tol=tol, maxiter=max_iter, ncv=ncv, v0=v0
        )
    except ArpackNoConvergence as err:
        vals, vecs, converged = err.eigenvalues, err.eigenvectors, False
        if len(vals) == 0:
            raise
    order = np.argsort(vals)
    order = order if which == "SA" else order[::-1]
    values = torch.as_tensor(vals[order].copy(), dtype=torch.float64)
    Y = torch.as_tensor(vecs[:, order].copy(), dtype=torch.float64, device=op.device)
    n_iter = op.n_hvp - start
    residuals = ritz_residuals(op, values.to(op.device), Y).cpu()
    return EigResult(
        values, Y if return_eigenvectors else None, residuals, converged, op.n_hvp - start, n_iter
    )


def power_iteration(
    op,
    *,
    tol: float | None = None,
    max_iter: int = 1000,
    seed: int = 0,
) -> EigResult:
    """Dominant eigenpair (largest |λ|) by power iteration, the baseline.

    v ← Hv/‖Hv‖, with Rayleigh quotient θ = vᵀHv. Stops when the residual
    ‖Hv − θv‖ ≤ tol·|θ| (tol None: √ε of ``op.dtype``); the residual comes
    from the same HVP as θ, so no extra HVP is spent. Convergence is linear
    with rate |λ₂/λ₁|.
    """
    tol = _check_tol(tol, op)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    start = op.n_hvp
    gen = _generator(seed, op.device)
    v = random_unit(op.dim, gen, op.device)
    converged = False
    for it in range(1, max_iter + 1):
        w = _apply(op, v)
        theta = float(v @ w)
        r = float((w - theta * v).norm())
        nw = w.norm()
        if r <= tol * abs(theta) or nw == 0:  # nw = 0: Hv = 0, an exact eigenpair
            converged = True
            break
        if it < max_iter:
            v = w / nw
    return EigResult(
        eigenvalues=torch.tensor([theta], dtype=torch.float64),
        eigenvectors=v[:, None],
        residuals=torch.tensor([r], dtype=torch.float64),
        converged=converged,
        n_hvp=op.n_hvp - start,
        n_iter=it,
    )
