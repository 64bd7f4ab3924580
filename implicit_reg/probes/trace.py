"""Stochastic trace estimators: Hutchinson and Hutch++.

Both take an operator with the flat-vector interface (``matvec``, ``dim``,
``dtype``, ``device``) and draw their random vectors from a private, seeded
``torch.Generator``; the global RNG is never used.

- :func:`hutchinson` (Hutchinson 1990): tr(H) = E[zᵀHz] for Rademacher z.
  The sample mean comes with its standard error s/√n. Sampling stops when
  SE ≤ rtol·|mean| + atol (absolute values, so a negative trace stops like a
  positive one) after at least ``min_samples``, or at ``max_samples``.
- Both apply their products in blocks (``op.matmat``; one pass over the data
  per block): Hutchinson ``block_size`` probes at a time, Hutch++ three
  blocks (sketch, its range, the remainder probes). Where only the quadratic
  forms zᵀHz are needed (Hutchinson's probes, tr(QᵀHQ), the remainder) they come
  from ``op.quadratic_forms`` when the operator has one
  (:func:`~implicit_reg.probes.operator.apply_quadratic`; on an MLP the
  R-operator's second-order pass, about half an HVP), counted as one product each.
- :func:`hutchpp` (Meyer, Musco, Musco, Woodruff, SOSA 2021): spend a third
  of the budget on a sketch Q = orth(H S), take tr(QᵀHQ) exactly and apply
  Hutchinson only to the deflated remainder (I − QQᵀ)H(I − QQᵀ). Unbiased;
  its error falls as 1/m instead of 1/√m when the spectrum decays, as a
  trained network's Hessian spectrum does. The standard error is that of
  the remainder's Hutchinson mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .operator import apply_block, apply_quadratic

__all__ = ["TraceResult", "hutchinson", "hutchinson_samples", "hutchpp", "rademacher"]


@dataclass
class TraceResult:
    """A trace estimate with its standard error.

    Attributes:
        estimate: the estimate of tr(H).
        stderr: its standard error (sample std of the stochastic part / √n).
        n_samples: random probe vectors used by the stochastic part.
        n_hvp: HVPs spent in total.
    """

    estimate: float
    stderr: float
    n_samples: int
    n_hvp: int


def rademacher(shape, gen: torch.Generator, device, dtype=torch.float64) -> Tensor:
    """Entries ±1 with equal probability, drawn from ``gen``."""
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype).mul_(2).sub_(1)


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_nonneg(name: str, value) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _stderr(samples) -> float:
    n = len(samples)
    if n < 2:
        return math.inf
    t = torch.as_tensor(samples, dtype=torch.float64)
    return float(t.std(unbiased=True)) / math.sqrt(n)


def _stderr_rows(s: Tensor) -> Tensor:
    """Standard error of the mean of each row of ``s`` (inf with fewer than 2 samples)."""
    if s.shape[1] < 2:
        return torch.full((s.shape[0],), math.inf, dtype=torch.float64)
    return s.std(1, unbiased=True) / math.sqrt(s.shape[1])


def hutchinson_samples(
    quad,
    *,
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_samples: int = 10,
    max_samples: int = 1000,
    block_size: int = 10,
) -> Tensor:
    """The one Hutchinson loop: samples z_jᵀHz_j until the standard error is small enough.

    ``quad(b)`` draws the next b probes of each of R independent estimates (one
    operator: R = 1; an ensemble: one per member) and returns their quadratic
    forms, shape ``(R, b)``. The first call asks for ``min_samples``, later ones
    for ``block_size``; after each, the loop stops when every row has
    SE ≤ rtol·|mean| + atol (SE = std/√n), or at ``max_samples``. Returns the
    float64 samples ``(R, n)``. :func:`hutchinson` and
    :func:`implicit_reg.ensemble.probes.ensemble_hutchinson` are its two callers.
    """
    rtol, atol = _check_nonneg("rtol", rtol), _check_nonneg("atol", atol)
    _check_int("min_samples", min_samples, 2)
    _check_int("max_samples", max_samples, min_samples)
    _check_int("block_size", block_size, 1)
    chunks: list[Tensor] = []
    n = 0
    while n < max_samples:
        b = min(max(block_size, min_samples - n), max_samples - n)
        chunks.append(quad(b).to(torch.float64))
        n += b
        if n >= min_samples:
            s = torch.cat(chunks, dim=1)
            if bool((_stderr_rows(s) <= rtol * s.mean(1).abs() + atol).all()):
                break
    return torch.cat(chunks, dim=1)


def hutchinson(
    op,
    *,
    rtol: float = 1e-2,
    atol: float = 0.0,
    min_samples: int = 10,
    max_samples: int = 1000,
    seed: int = 0,
    block_size: int = 10,
) -> TraceResult:
    """Hutchinson's estimate of tr(H) with Rademacher probes.

    tr(H) ≈ (1/n)·Σ_j z_jᵀ H z_j, SE = std(z_jᵀHz_j)/√n. Stops when
    SE ≤ rtol·|estimate| + atol and n ≥ ``min_samples``, or at ``max_samples``
    (:func:`hutchinson_samples`). Probes are applied ``block_size`` at a time
    (the first block fills ``min_samples``; each block is one ``op.matmat``,
    one pass over the data when it fits the operator's memory budget) and the
    rule is checked after each block, so n is the first block boundary where
    it holds; ``block_size=1`` checks after every probe. The probes are the
    same for every block size.

    Args:
        op: operator with ``matvec`` and ``dim``.
        rtol, atol: stopping tolerances on the standard error.
        min_samples: at least this many probes (≥ 2, for a standard error).
        max_samples: at most this many probes (one HVP each).
        seed: seeds a private ``torch.Generator``.
        block_size: probes per batched product after the first block.
    """
    gen = torch.Generator(device=op.device).manual_seed(int(seed))
    start = op.n_hvp

    def quad(b: int) -> Tensor:
        Z = rademacher((b, op.dim), gen, op.device).T  # rows drawn in order: z_1, z_2, …
        return apply_quadratic(op, Z)[None]

    s = hutchinson_samples(
        quad, rtol=rtol, atol=atol, min_samples=min_samples, max_samples=max_samples,
        block_size=block_size,
    )[0]  # fmt: skip
    return TraceResult(float(s.mean()), _stderr(s), s.numel(), op.n_hvp - start)


def hutchpp(op, *, n_hvp: int = 99, seed: int = 0) -> TraceResult:
    """Hutch++ estimate of tr(H) with a budget of ``n_hvp`` HVPs.

    With s = n_hvp // 3 sketch columns and g = n_hvp − 2s remainder probes:

        Q = orth(H S),  S ∈ {±1}^{dim×s},
        tr(H) ≈ tr(QᵀHQ) + (1/g)·Σ_j z_jᵀ(I − QQᵀ)H(I − QQᵀ)z_j.

    The first term is exact for the sketched subspace; the standard error is
    that of the second. Three batched products: H S, H Q and H Z. When s ≥ dim the sketch spans the whole space and
    the estimate is exact (SE = 0).

    Args:
        op: operator with ``matvec`` and ``dim``.
        n_hvp: total HVP budget (≥ 4: one sketch column and two probes).
        seed: seeds a private ``torch.Generator``.
    """
    _check_int("n_hvp", n_hvp, 4)
    gen = torch.Generator(device=op.device).manual_seed(int(seed))
    start = op.n_hvp
    s = min(n_hvp // 3, op.dim)
    g = n_hvp - 2 * s
    S = rademacher((op.dim, s), gen, op.device)
    HS = apply_block(op, S)
    Q, R = torch.linalg.qr(HS)
    # drop directions that H S does not reach (rank-deficient sketch)
    diag = R.diagonal().abs()
    Q = Q[:, diag > 1e-12 * max(float(diag.max()), 1e-300)] if s > 0 else Q
    top = float(apply_quadratic(op, Q).sum())
    if Q.shape[1] == op.dim:
        return TraceResult(top, 0.0, 0, op.n_hvp - start)
    Z = rademacher((g, op.dim), gen, op.device).T  # probes drawn in order, as columns
    Z = Z - Q @ (Q.T @ Z)
    # Hutchinson on the deflated remainder, all g probes in one block
    rest = hutchinson_samples(
        lambda b: apply_quadratic(op, Z)[None], rtol=0.0, min_samples=g,
        max_samples=g, block_size=g,
    )[0]  # fmt: skip
    return TraceResult(top + float(rest.mean()), _stderr(rest), g, op.n_hvp - start)
