"""Extreme eigenvalues of a symmetric operator: Lanczos, ARPACK and power iteration.

All three take any operator with the flat-vector interface of
:class:`implicit_reg.probes.operator.HessianOperator` (``matvec``, ``dim``,
``dtype``, ``device``, ``n_hvp``) and return an :class:`EigResult` that
certifies itself: each Ritz pair (λ, v) carries its residual ‖Hv − λv‖
computed with one extra HVP, a converged flag and the HVP count.

- :func:`lanczos` (default): Lanczos (Lanczos 1950) with full
  reorthogonalization against every stored basis vector ("twice is enough",
  Giraud et al. 2005), basis kept in float64. After each step the tridiagonal
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
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

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


def _random_unit(dim: int, gen: torch.Generator, device) -> Tensor:
    v = torch.randn(dim, generator=gen, device=device, dtype=torch.float64)
    return v / v.norm()


def _apply(op, v: Tensor) -> Tensor:
    """H v with v in float64; the product comes back in float64."""
    return op.matvec(v.to(op.dtype)).to(torch.float64)


def ritz_residuals(op, values: Tensor, vectors: Tensor) -> Tensor:
    """‖H v_i − λ_i v_i‖ for each column v_i, one HVP each (one block)."""
    values = values.to(device=vectors.device, dtype=torch.float64)
    return (apply_block(op, vectors) - vectors * values[None, :]).norm(dim=0)


class _Krylov:
    """Lanczos recurrence with full reorthogonalization; basis stored in float64.

    After m steps: H Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ, T_m = tridiag(β, α, β).
    """

    def __init__(self, op, v0: Tensor, gen: torch.Generator):
        self.op, self.gen = op, gen
        self.device = v0.device
        self.Q = torch.empty(min(op.dim, 32), op.dim, dtype=torch.float64, device=self.device)
        self.Q[0] = v0 / v0.norm()
        self.alpha: list[float] = []
        self.beta: list[float] = []  # beta[j] couples q_j and q_{j+1}
        self.scale = 0.0  # running estimate of ‖T‖ ≈ ‖H‖
        self.exhausted = False  # the whole space has been spanned

    @property
    def m(self) -> int:
        return len(self.alpha)

    def _grow(self) -> None:
        if self.m + 1 >= self.Q.shape[0]:
            rows = min(2 * self.Q.shape[0], self.op.dim + 1)
            Q = torch.empty(rows, self.op.dim, dtype=torch.float64, device=self.device)
            Q[: self.Q.shape[0]] = self.Q
            self.Q = Q

    def _orthogonalize(self, w: Tensor, upto: int) -> Tensor:
        Q = self.Q[:upto]
        for _ in range(2):  # twice is enough
            w = w - Q.T @ (Q @ w)
        return w

    def step(self, restart_on_breakdown: bool = True) -> bool:
        """One Lanczos step; returns False when the space is exhausted."""
        j = self.m
        q = self.Q[j]
        w = _apply(self.op, q)
        a = float(q @ w)
        w = w - a * q
        if j > 0:
            w = w - self.beta[-1] * self.Q[j - 1]
        w = self._orthogonalize(w, j + 1)
        b = float(w.norm())
        self.alpha.append(a)
        self.scale = max(self.scale, abs(a) + b + (self.beta[-1] if self.beta else 0.0))
        if j + 1 >= self.op.dim:
            self.beta.append(0.0)
            self.exhausted = True
            return False
        self._grow()
        breakdown = b <= 1e3 * np.finfo(np.float64).eps * max(self.scale, np.finfo(np.float64).tiny)
        if breakdown:
            # Krylov space is invariant: exact Ritz values so far. Continue with a
            # fresh random direction orthogonal to the basis (T gets a zero coupling).
            if not restart_on_breakdown:
                self.beta.append(0.0)
                self.exhausted = True
                return False
            for _ in range(3):
                w = self._orthogonalize(_random_unit(self.op.dim, self.gen, self.device), j + 1)
                if w.norm() > 0.5:
                    break
            self.Q[j + 1] = w / w.norm()
            self.beta.append(0.0)
            return True
        self.Q[j + 1] = w / b
        self.beta.append(b)
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-decomposition of T_m: values ascending, vectors as columns."""
        a = np.asarray(self.alpha)
        b = np.asarray(self.beta[: self.m - 1])
        if self.m == 1:
            return a.copy(), np.ones((1, 1))
        return eigh_tridiagonal(a, b)


class _BlockKrylov:
    """Block Lanczos (Golub & Underwood 1977) with full reorthogonalization, float64.

    After m block steps with blocks Q_0..Q_{m-1} (orthonormal columns),
    H Q_j = Q_{j−1} B_{j−1}ᵀ + Q_j A_j + Q_{j+1} B_j, so Qᵀ H Q = T_m is block
    tridiagonal and a Ritz pair (θ_i, Q s_i) has residual
    ‖H Q s_i − θ_i Q s_i‖ = ‖B_{m−1} s_i^{(m−1)}‖, with s_i^{(m−1)} the rows of s_i
    belonging to the last block (the block analogue of β_m·|s_{m,i}|).
    """

    def __init__(self, op, V0: Tensor, gen: torch.Generator):
        self.op, self.gen, self.device = op, gen, V0.device
        self.Q = torch.empty(0, op.dim, dtype=torch.float64, device=self.device)  # rows
        self.A: list[Tensor] = []
        self.B: list[Tensor] = []  # B[j] couples block j and block j+1
        self.sizes: list[int] = []
        self.scale = 0.0
        self.exhausted = False
        self.next = self._orthonormal(V0.T.contiguous())

    @property
    def m(self) -> int:
        """Basis vectors so far (= products spent in the recurrence)."""
        return int(self.Q.shape[0])

    def _orth_against(self, W: Tensor, basis: Tensor) -> Tensor:
        for _ in range(2):  # twice is enough
            if basis.shape[0]:
                W = W - (W @ basis.T) @ basis
        return W

    def _orthonormal(self, W: Tensor) -> Tensor:
        """Orthonormal rows spanning the rows of W, orthogonal to the basis; rows
        that W does not reach are filled with seeded random directions."""
        W = self._orth_against(W, self.Q)
        room = self.op.dim - self.m
        W = W[:room]
        rows = []
        ref = max(float(W.norm(dim=1).max()) if W.numel() else 0.0, self.scale, 1e-300)
        for w in W:
            for _ in range(4):
                basis = torch.cat([self.Q, *[r[None] for r in rows]]) if rows else self.Q
                w = self._orth_against(w[None], basis)[0]
                nw = float(w.norm())
                if nw > 1e3 * np.finfo(np.float64).eps * ref:
                    rows.append(w / nw)
                    break
                w = _random_unit(self.op.dim, self.gen, self.device)
                ref = 1.0
        return torch.stack(rows) if rows else W[:0]

    def step(self, limit: int) -> bool:
        """One block step; False when no further step fits (space spanned or ``limit``
        basis vectors reached)."""
        Qj = self.next
        self.Q = torch.cat([self.Q, Qj])
        W = apply_block(self.op, Qj.T.contiguous()).T  # rows: (H q)ᵀ
        A = Qj @ W.T
        A = 0.5 * (A + A.T)
        W = W - A @ Qj
        if self.B:
            prev = self.Q[self.m - Qj.shape[0] - self.sizes[-1] : self.m - Qj.shape[0]]
            W = W - self.B[-1] @ prev
        W = self._orth_against(W, self.Q)
        self.A.append(A)
        self.sizes.append(Qj.shape[0])
        self.W_last = W  # H Y − Y Θ = (s_lastᵀ W)ᵀ for Ritz vectors Y = Q S
        prev_norm = float(torch.linalg.matrix_norm(self.B[-1], ord=2)) if self.B else 0.0
        w_norm = float(torch.linalg.matrix_norm(W, ord=2))
        self.scale = max(self.scale, float(torch.linalg.matrix_norm(A, ord=2)) + w_norm + prev_norm)
        if self.m >= self.op.dim:
            self.exhausted = True
            return False
        size = min(Qj.shape[0], self.op.dim - self.m, limit - self.m)
        if size <= 0:
            return False
        Qn = self._orthonormal(W[:size])
        if Qn.shape[0] < size:  # no direction left that random fill could add: space spanned
            self.exhausted = True
            return False
        self.B.append(Qn @ W.T)  # (size, p_j): couples block j to block j+1
        self.next = Qn
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-decomposition of the block tridiagonal T: values ascending, vectors as columns."""
        n = self.m
        T = torch.zeros(n, n, dtype=torch.float64)
        off = 0
        for j, (A, p) in enumerate(zip(self.A, self.sizes)):
            T[off : off + p, off : off + p] = A.cpu()
            if j + 1 < len(self.A):
                q = self.sizes[j + 1]
                Bj = self.B[j].cpu()
                T[off + p : off + p + q, off : off + p] = Bj
                T[off : off + p, off + p : off + p + q] = Bj.T
            off += p
        theta, S = torch.linalg.eigh(T)  # torch's thread pool, not numpy's BLAS threads
        return theta.numpy(), S.numpy()

    def bounds(self, S: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """‖Wᵀ s_i^{last}‖ = ‖H y_i − θ_i y_i‖ (exact arithmetic) for the selected Ritz vectors."""
        last = self.sizes[-1]
        s_last = torch.as_tensor(S[-last:, idx].copy(), dtype=torch.float64, device=self.device)
        return (self.W_last.T @ s_last).norm(dim=0).cpu().numpy()


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
    if v0 is not None:
        if not isinstance(v0, Tensor) or v0.dim() not in (1, 2) or v0.shape[0] != op.dim:
            shape = tuple(v0.shape) if hasattr(v0, "shape") else type(v0).__name__
            raise ValueError(f"v0 must have shape ({op.dim},) or ({op.dim}, j), got {shape}")
        v0 = v0.to(device=op.device, dtype=torch.float64)
        if not bool(torch.isfinite(v0).all()) or not v0.norm() > 0:
            raise ValueError("v0 must be a finite, non-zero vector")
    if p > 1:
        return _block_lanczos(op, k, which, tol, max_iter, gen, v0, p, start, return_eigenvectors)
    if v0 is None:
        v0 = _random_unit(op.dim, gen, op.device)
    elif v0.dim() == 2:
        v0 = v0[:, 0]
        if not v0.norm() > 0:
            raise ValueError("v0 must be a non-zero vector")
    kr = _Krylov(op, v0, gen)
    converged = False
    while True:
        more = kr.step()
        if kr.m >= k:
            theta, S = kr.ritz()
            idx = _select(theta, k, which)
            bounds = abs(kr.beta[-1]) * np.abs(S[-1, idx])
            if not more or np.all(bounds <= tol * kr.scale):
                converged = True
                break
        if kr.m >= max_iter:
            break
    values = torch.as_tensor(theta[idx], dtype=torch.float64)
    Y = kr.Q[: kr.m].T @ torch.as_tensor(S[:, idx], dtype=torch.float64, device=op.device)
    Y = Y / Y.norm(dim=0, keepdim=True)
    residuals = ritz_residuals(op, values.to(op.device), Y).cpu()
    return EigResult(
        eigenvalues=values,
        eigenvectors=Y if return_eigenvectors else None,
        residuals=residuals,
        converged=converged,
        n_hvp=op.n_hvp - start,
        n_iter=kr.m,
    )


def default_block_size(k: int) -> int:
    """Block size of :func:`lanczos` for k wanted pairs: 1 (single-vector Lanczos).

    ``benchmarks/bench_probes_batched.py`` measures block Lanczos (p = 2, 5)
    against it for k = 5: block Lanczos needs more products in all (53 and
    90 against 38 on the small MLP) and, on CPU, the batched product does not
    save enough per vector to make up for it, so it is opt-in.
    """
    return 1


def _block_lanczos(
    op, k, which, tol, max_iter, gen, v0, p, start, return_eigenvectors
) -> EigResult:
    cols = []
    if v0 is not None:
        cols = list((v0[:, None] if v0.dim() == 1 else v0)[:, :p].T)
    while len(cols) < p:
        cols.append(_random_unit(op.dim, gen, op.device))
    kr = _BlockKrylov(op, torch.stack(cols, dim=1), gen)
    converged = False
    while True:
        more = kr.step(max(max_iter, k))
        if kr.m >= k:
            theta, S = kr.ritz()
            idx = _select(theta, k, which)
            if kr.exhausted or np.all(kr.bounds(S, idx) <= tol * kr.scale):
                converged = True
                break
        if not more:
            break
    values = torch.as_tensor(theta[idx].copy(), dtype=torch.float64)
    Y = kr.Q.T @ torch.as_tensor(S[:, idx].copy(), dtype=torch.float64, device=op.device)
    Y = Y / Y.norm(dim=0, keepdim=True)
    residuals = ritz_residuals(op, values, Y).cpu()
    return EigResult(
        eigenvalues=values,
        eigenvectors=Y if return_eigenvectors else None,
        residuals=residuals,
        converged=converged,
        n_hvp=op.n_hvp - start,
        n_iter=len(kr.sizes),
    )


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
    v = _random_unit(op.dim, gen, op.device)
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
