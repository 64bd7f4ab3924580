"""Pure math of the sharpness-aware gradients: SAM, ASAM and the gradient-norm penalty.

All three step on the gradient at a second point θ + e, a step of length ~r
up the loss, and relate to EGR's modified loss L + μ‖∇L‖²
(:mod:`implicit_reg.core.modified_gradient`) through the expansion
∇L(θ + e) = g + H e + O(‖e‖²), g = ∇L(θ), H = ∇²L(θ):

- **SAM** (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware
  Minimization for Efficiently Improving Generalization", ICLR 2021,
  arXiv 2010.01412): e = ρ·g/‖g‖ and g̃ = ∇L(θ + e). To first order
  g̃ = g + ρ·H g/‖g‖ = ∇(L + ρ‖∇L‖): SAM is GD on L + ρ‖∇L‖, the *norm*, not
  the squared norm of EGR. The two agree on the direction H g; EGR's weight
  is 2μ, SAM's ρ/‖g‖, so SAM at ρ behaves like EGR with μ = ρ/(2‖g‖),
  a coefficient that grows as the gradient shrinks.
- **ASAM** (Kwon, Kim, Park & Choi, "ASAM: Adaptive Sharpness-Aware
  Minimization for Scale-Invariant Learning of Deep Neural Networks", ICML
  2021, arXiv 2102.11600): the ball is taken in the rescaled coordinates
  T⁻¹θ with T = diag(|θ| + η), so e = ρ·T²g/‖T g‖; to first order
  g̃ = ∇(L + ρ‖T∇L‖).
- **Gradient-norm penalty** (Zhao, Zhang & Hu, "Penalizing Gradient Norm for
  Efficiently Improving Generalization in Deep Learning", ICML 2022,
  arXiv 2202.03599): GD on L + λ‖∇L‖ with the finite-difference gradient
  g̃ = (1 − α)·g + α·∇L(θ + r·g/‖g‖), α = λ/r; to first order g + λ·H g/‖g‖.
  α = 1 is SAM with ρ = r.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["sam_perturbation", "penalty_gradient"]


def sam_perturbation(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rhos: Sequence[float],
    etas: Sequence[float | None] | None = None,
) -> list[Tensor]:
    """The ascent step e of SAM, or of ASAM for the tensors with an η.

        SAM:   e_i = ρ_i · g_i / ‖T g‖          (T_i = 1, η_i = None)
        ASAM:  e_i = ρ_i · T_i² g_i / ‖T g‖,    T_i = |θ_i| + η_i

    One norm over all tensors (one ball); ρ_i and η_i are tensor i's (its
    param group's ``rho`` and, for ASAM, ``eta``). A zero gradient gives e = 0.
    """
    etas = [None] * len(params) if etas is None else list(etas)
    scale = [None if eta is None else p.detach().abs() + eta for p, eta in zip(params, etas)]
    scaled = [g if t is None else t * g for g, t in zip(grads, scale)]
    if not scaled:
        return []
    device = scaled[0].device
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(s).to(device) for s in scaled])
    )
    if norm == 0:
        return [torch.zeros_like(g) for g in grads]
    return [
        (s if t is None else t * s) * (rho / norm).to(s.device)
        for s, t, rho in zip(scaled, scale, rhos)
    ]


def penalty_gradient(
    grads: Sequence[Tensor], grads_at_e: Sequence[Tensor], *, alpha: float
) -> list[Tensor]:
    """g̃ = (1 − α)·g + α·∇L(θ + e) (Zhao, Zhang & Hu 2022); α = 1 returns ∇L(θ + e) itself (SAM)."""
    if alpha == 1.0:
        return list(grads_at_e)
    return [(1.0 - alpha) * g + alpha * ge for g, ge in zip(grads, grads_at_e)]
