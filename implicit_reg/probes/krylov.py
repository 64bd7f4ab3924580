"""The one Lanczos recurrence of the package: single-vector, block, and many runs at once.

A :class:`Run` is block Lanczos (Golub & Underwood 1977) with full
reorthogonalization ("twice is enough", Giraud et al. 2005), basis in
float64. After blocks Q_0..Q_{m−1} (orthonormal rows, p_j vectors each),

    H Q_j = Q_{j−1} B_{j−1}ᵀ + Q_j A_j + Q_{j+1} B_j,     Qᵀ H Q = T (block tridiagonal),

and a Ritz pair (θ_i, Q s_i) of T has residual ‖H Q s_i − θ_i Q s_i‖ =
‖B_last s_i^{last}‖, s_i^{last} the rows of s_i of the last block (Parlett
1998, §13.2). With p = 1 this is the single-vector Lanczos of Lanczos (1950):
T tridiagonal (α_j = A_j, β_j = B_j), residual β_m·|s_{m,i}|, and the
eigenproblem of T is solved by ``scipy.linalg.eigh_tridiagonal``.

Every caller of Lanczos in the package is a case of it:

- :func:`implicit_reg.probes.eigen.lanczos`: one run, p = 1 (default) or a
  block of p, restarted with a seeded random direction when its Krylov space
  becomes invariant (so multiple and clustered eigenvalues are still found);
- :func:`implicit_reg.probes.density.slq_density`: R runs of p = 1 with the
  same operator, stepped together (:func:`step_together`): one batched
  product ``op.matmat`` of the R current vectors per step; a run stops at an
  invariant subspace (its quadrature is then exact);
- :func:`implicit_reg.ensemble.probes.ensemble_lanczos_max`: M runs of p = 1,
  run m on member m's Hessian, all M products from one ensemble HVP.

Each run's arithmetic is that of a lone run, so stepping runs together
changes no number beyond rounding (``tests/test_probes_batched.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from .operator import apply_block

__all__ = ["Run", "step_together", "rows_of", "random_unit"]

_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).tiny)


def random_unit(dim: int, gen: torch.Generator | None, device) -> Tensor:
    """A unit vector of N(0, I) direction in float64, drawn from ``gen``."""
    v = torch.randn(dim, generator=gen, device=device, dtype=torch.float64)
    return v / v.norm()


def rows_of(op) -> Callable[[Sequence[Tensor]], list[Tensor]]:
    """Blocks of rows ↦ their products with ``op``, all in one ``apply_block`` (one pass)."""

    def apply(blocks: Sequence[Tensor]) -> list[Tensor]:
        sizes = [b.shape[0] for b in blocks]
        W = apply_block(op, torch.cat(list(blocks)).T.contiguous()).T
        return list(W.split(sizes))

    return apply


class Run:
    """One (block) Lanczos recurrence, float64, fully reorthogonalized.

    Args:
        V0: ``(dim, p)`` start block (p = 1: a start vector); orthonormalized.
        gen: draws the random directions that replace a start column or a
            new direction the recurrence cannot reach.
        restart: at an invariant Krylov subspace, go on with a random
            direction orthogonal to the basis (eigenvalues: the coupling is
            ≈ 0 and T stays exact) instead of stopping (quadrature).

    After :meth:`advance` the run holds ``m`` basis vectors (rows of ``Q``),
    the blocks ``A`` and couplings ``B``, ``scale`` (a running estimate of
    ‖T‖ ≈ ‖H‖) and ``exhausted`` (the space it can reach is spanned).
    """

    def __init__(self, V0: Tensor, *, gen: torch.Generator | None = None, restart: bool = True):
        self.dim, self.device = V0.shape[0], V0.device
        self.gen, self.restart = gen, restart
        self._Q = torch.empty(
            min(self.dim, max(32, 2 * V0.shape[1])), self.dim, dtype=torch.float64, device=V0.device
        )
        self.m = 0
        self.A: list[Tensor] = []
        self.B: list[Tensor] = []  # B[j] couples block j and block j+1
        self.sizes: list[int] = []
        self.scale = 0.0
        self.exhausted = False
        self.next = self._orthonormal(V0.T.to(torch.float64))  # rows to apply next
        if self.next.shape[0] == 0:
            raise ValueError("the start block must not be zero")

    @property
    def Q(self) -> Tensor:
        """The basis so far, as rows ``(m, dim)``."""
        return self._Q[: self.m]

    def _append(self, rows: Tensor) -> None:
        need = self.m + rows.shape[0]
        if need > self._Q.shape[0]:
            Q = torch.empty(
                min(max(need, 2 * self._Q.shape[0]), self.dim),
                self.dim,
                dtype=torch.float64,
                device=self.device,
            )
            Q[: self.m] = self._Q[: self.m]
            self._Q = Q
        self._Q[self.m : need] = rows
        self.m = need

    @staticmethod
    def _orth_against(W: Tensor, basis: Tensor) -> Tensor:
        if basis.shape[0]:
            for _ in range(2):  # twice is enough
                W = W - (W @ basis.T) @ basis
        return W

    def _orthonormal(self, W: Tensor) -> Tensor:
        """Orthonormal rows spanning the rows of W, orthogonal to the basis. A row that W
        does not reach is replaced by a random direction (``restart``) or dropped."""
        W = self._orth_against(W, self.Q)[: self.dim - self.m]
        rows: list[Tensor] = []
        ref = max(float(W.norm(dim=1).max()) if W.numel() else 0.0, self.scale, 1e-300)
        for w in W:
            for _ in range(4):
                basis = torch.cat([self.Q, torch.stack(rows)]) if rows else self.Q
                w = self._orth_against(w[None], basis)[0]
                nw = float(w.norm())
                if nw > 1e3 * _EPS * ref:
                    rows.append(w / nw)
                    break
                if not self.restart:
                    break
                w, ref = random_unit(self.dim, self.gen, self.device), 1.0
        return torch.stack(rows) if rows else W[:0]

    def advance(self, W: Tensor, limit: int) -> bool:
        """Take the products ``W = (H Q_j)ᵀ`` (rows) of the block :attr:`next` and complete
        the step. Returns False when no further step fits: the space is spanned,
        the run stopped at an invariant subspace, or ``limit`` basis vectors are reached."""
        Qj, start = self.next, self.m
        self._append(Qj)
        A = Qj @ W.T
        A = 0.5 * (A + A.T)
        W = W - A @ Qj
        if self.B:
            W = W - self.B[-1] @ self._Q[start - self.sizes[-1] : start]
        W = self._orth_against(W, self.Q)
        self.A.append(A)
        self.sizes.append(Qj.shape[0])
        self.W_last = W  # H Y − Y Θ = (s_lastᵀ W)ᵀ for Ritz vectors Y = Q S
        if Qj.shape[0] == 1:
            norms = abs(float(A)) + float(W.norm()) + (abs(float(self.B[-1])) if self.B else 0.0)
        else:
            prev = float(torch.linalg.matrix_norm(self.B[-1], ord=2)) if self.B else 0.0
            norms = float(torch.linalg.matrix_norm(A, ord=2))
            norms += float(torch.linalg.matrix_norm(W, ord=2)) + prev
        self.scale = max(self.scale, norms)
        if self.m >= self.dim:
            self.exhausted = True
            return False
        size = min(Qj.shape[0], self.dim - self.m, limit - self.m)
        if size <= 0:
            return False
        Qn = self._orthonormal(W[:size])
        if Qn.shape[0] < size:  # nothing left to add (or, without restart, invariant)
            self.exhausted = True
            return False
        self.B.append(Qn @ W.T)  # (size, p_j): couples block j to block j+1
        self.next = Qn
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-decomposition of T: Ritz values ascending, eigenvectors of T as columns."""
        if all(p == 1 for p in self.sizes):  # tridiagonal
            a = np.array([float(A) for A in self.A])
            if len(a) == 1:
                return a.copy(), np.ones((1, 1))
            b = np.array([float(B) for B in self.B[: len(a) - 1]])
            return eigh_tridiagonal(a, b)
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

    def bounds(self, S: np.ndarray, idx) -> np.ndarray:
        """‖B_last s_i^{last}‖ = ‖H y_i − θ_i y_i‖ (exact arithmetic) for Ritz vectors ``idx``."""
        last = self.sizes[-1]
        s_last = torch.as_tensor(
            np.ascontiguousarray(S[-last:, idx]), dtype=torch.float64, device=self.device
        )
        return (self.W_last.T @ s_last.reshape(last, -1)).norm(dim=0).cpu().numpy()

    def vectors(self, S: np.ndarray, idx) -> Tensor:
        """Unit Ritz vectors Q s_i for the columns ``idx`` of S, as columns ``(dim, k)``."""
        s = torch.as_tensor(np.ascontiguousarray(S[:, idx]), dtype=torch.float64)
        Y = self.Q.T @ s.reshape(self.m, -1).to(self.device)
        return Y / Y.norm(dim=0, keepdim=True)


def step_together(
    runs: Sequence[Run], apply: Callable[[Sequence[Tensor]], list[Tensor]], limit: int
) -> list[bool]:
    """One step of every run in ``runs``: one call of ``apply`` on all their next blocks
    (one pass over the data, e.g. :func:`rows_of`); returns each run's :meth:`Run.advance`."""
    products = apply([r.next for r in runs])
    return [r.advance(W, limit) for r, W in zip(runs, products)]
