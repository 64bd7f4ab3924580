"""Update rules as pure functions over lists of tensors, applied in place.

Each rule takes the parameters θ, the directions it needs (gradients,
Hessian-vector products, momentum buffers) and keyword-only hyperparameters,
and writes θ ← θ − h·d. The optimizer classes in :mod:`implicit_reg.core.optim`
only gather tensors and hyperparameters and call these functions; the
ensemble (:mod:`implicit_reg.ensemble.vectorized`) calls them on stacked
tensors.

The step ``lr`` (h) may be

- a Python number;
- a 0-dim (or one-element) tensor, as ``torch.optim`` accepts: it is read as a
  number unless it requires grad (``differentiable=True``), in which case the
  step stays in the autograd graph (θ ← θ − d·h through ``addcmul``);
- a 1-dim tensor of M step sizes for *stacked* parameters of shape [M, ...]
  (one ensemble member per leading index): member m moves by h_m·d_m,
  broadcast over the trailing dims.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "gd_update",
    "sgd_update",
    "sgd_update_fused",
    "egr_update",
    "adam_update",
    "apply_step",
]

#: where ε enters Adam's denominator: √v̂ + ε (torch) or √(v̂ + ε) (Cattaneo et al. 2024)
EPS_PLACEMENTS = ("outside", "inside")

Lr = float | Tensor


def _member_view(lr: Tensor, p: Tensor) -> Tensor:
    """[M] step sizes viewed as [M, 1, ..., 1] against stacked ``p`` of shape [M, ...]."""
    if p.dim() < lr.dim() or p.shape[: lr.dim()] != lr.shape:
        raise ValueError(
            f"per-member lr of shape {tuple(lr.shape)} does not lead parameter shape "
            f"{tuple(p.shape)}; stacked parameters are [M, ...] with one lr per member"
        )
    return lr.reshape(lr.shape + (1,) * (p.dim() - lr.dim()))


def _is_per_member(lr: Lr) -> bool:
    return isinstance(lr, Tensor) and lr.dim() > 0 and lr.numel() > 1


def apply_step(p: Tensor, d: Tensor, lr: Lr) -> None:
    """θ ← θ − h·d in place, for one tensor; ``lr`` as in the module docstring."""
    if isinstance(lr, Tensor):
        if _is_per_member(lr):
            p.add_(_member_view(lr.to(p.device), p) * d, alpha=-1.0)
        elif lr.requires_grad:  # differentiable: keep h in the graph
            p.addcmul_(d, lr.reshape(()), value=-1)
        else:
            p.add_(d, alpha=-lr.item())
    else:
        p.add_(d, alpha=-lr)


def gd_update(
    params: list[Tensor], grads: Sequence[Tensor], *, lr: Lr, maximize: bool = False
) -> None:
    """Gradient descent, in place: θ ← θ − h·g (θ ← θ + h·g with ``maximize``)."""
    if not params:
        return
    if isinstance(lr, Tensor):
        for p, g in zip(params, grads):
            apply_step(p, -g if maximize else g, lr)
    else:  # −h·(−g) = h·g exactly: the sign flips are exact
        torch._foreach_add_(params, list(grads), alpha=lr if maximize else -lr)


def sgd_update(
    params: list[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: Lr,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float | Tensor,
    maximize: bool = False,
) -> None:
    """SGD with heavy-ball/Nesterov momentum and weight decay, in place.

    The update of ``torch.optim.SGD`` (Sutskever et al. 2013, in torch's form):

        d = −g if maximize else g
        d = d + λθ                      (weight decay λ ≠ 0)
        b = d                           (first step, b is None)
        b ← β·b + (1 − τ)·d             (later steps)
        d = d + β·b if Nesterov else b  (momentum β ≠ 0)
        θ ← θ − h·d

    ``momentum_buffers`` has one entry per parameter (used only when β ≠ 0);
    None entries are created, the others are updated in place.
    """
    for i, (p, g) in enumerate(zip(params, grads)):
        d = -g if maximize else g
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            d = d + p.clone() * weight_decay  # differentiable in λ
        elif weight_decay != 0:
            wd = weight_decay.item() if isinstance(weight_decay, Tensor) else weight_decay
            d = d.add(p, alpha=wd)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = d.detach().clone()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = d.add(buf, alpha=momentum) if nesterov else buf
        apply_step(p, d, lr)


def sgd_update_fused(
    params: list[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: Lr,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float | Tensor,
    maximize: bool = False,
) -> None:
    """:func:`sgd_update` in one ATen kernel per (device, dtype), ``torch._fused_sgd_``.

    The same equations; the kernel rounds differently (fused multiply-adds),
    exactly as ``torch.optim.SGD(fused=True)`` does. The buffers are created
    (uninitialised, filled by the kernel) when all are None, the kernel's
    first step. ``momentum_buffers`` may be empty when β = 0.
    """
    if not params:
        return
    first = momentum != 0 and all(b is None for b in momentum_buffers)
    if momentum != 0:
        for i, (g, b) in enumerate(zip(grads, momentum_buffers)):
            if b is None:
                momentum_buffers[i] = torch.empty_like(g)
    wd = weight_decay.item() if isinstance(weight_decay, Tensor) else weight_decay
    by_kind: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_kind.setdefault((p.device, p.dtype), []).append(i)
    for (device, _), idx in by_kind.items():
        torch._fused_sgd_(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [momentum_buffers[i] for i in idx] if momentum != 0 else [],
            weight_decay=float(wd),
            momentum=float(momentum),
            lr=lr.to(device) if isinstance(lr, Tensor) else float(lr),
            dampening=float(dampening),
            nesterov=bool(nesterov),
            maximize=bool(maximize),
            is_first_step=first,
        )


def egr_update(
    params: list[Tensor], grads: Sequence[Tensor], hvps: Sequence[Tensor], *, lr: Lr
) -> None:
    """Explicit gradient regularization, in place: θ ← θ − h·(g + 2·Hv).

    With ``hvps`` = H(μ⊙g) this is a GD step on L + Σ_j μ_j‖∇_jL‖², whose
    gradient is g + 2H(μ⊙g) (Barrett & Dherin, "Implicit Gradient
    Regularization", ICLR 2021); for the micro-batch penalty of Smith et al.
    (ICLR 2021) ``grads`` is the batch gradient and ``hvps`` = Σ_j w_j H_j(μ⊙g_j)
    (:func:`implicit_reg.core.modified_gradient.egr_direction_chunked`).
    """
    for p, g, h in zip(params, grads, hvps):
        apply_step(p, g + 2.0 * h, lr)


def adam_update(
    params: list[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    bias_correction: bool = True,
    eps_placement: str = "outside",
    maximize: bool = False,
) -> None:
    """Adam (Kingma & Ba, ICLR 2015), in place, in ``torch.optim.Adam``'s arithmetic.

        d = ±g + λθ                               (L2 weight decay λ, torch's Adam)
        m ← β₁m + (1−β₁)d,   v ← β₂v + (1−β₂)d²   (``lerp_`` and ``addcmul_``, as torch)
        θ ← θ − h·(m/b₁)/ψ(v/b₂),   b_i = 1 − β_i^t (bias correction) or 1

    with t = ``step`` (1-based: the index of this update) and ψ(v) = √v + ε
    ("outside", ``torch.optim.Adam``: bit for bit its CPU step, tested) or
    √(v + ε) ("inside": the Adam of Cattaneo, Klusowski & Shigida, ICML 2024).
    β₁ = 0 without bias correction is RMSProp (α = β₂).
    """
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(
            f"unknown eps_placement {eps_placement!r}; choose one of {', '.join(EPS_PLACEMENTS)}"
        )
    bc1 = 1 - beta1**step if bias_correction else 1.0
    bc2 = 1 - beta2**step if bias_correction else 1.0
    step_size = lr / bc1
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        d = -g if maximize else g
        if weight_decay != 0:
            d = d.add(p, alpha=weight_decay)
        m.lerp_(d, 1 - beta1)
        v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
        if eps_placement == "outside":
            denom = (v.sqrt() / bc2**0.5).add_(eps)
        else:
            denom = (v / bc2).add_(eps).sqrt_()
        p.addcdiv_(m, denom, value=-step_size)
