"""Pure math of the modified (IGR/EGR) gradient.

Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021
(arXiv 2009.11162): a GD step θ' = θ − h∇L(θ) follows, to O(h³) per step, the
gradient flow of the modified loss

    L̃(θ) = L(θ) + μ‖∇L(θ)‖²,    μ = h/4,

whose gradient is

    ∇L̃ = ∇L + 2μ·H∇L = ∇L + (h/2)·H∇L.

Convention used everywhere in this package: the coefficient μ multiplies the
*unnormalised* squared gradient norm. The paper writes the same term as
λ·R_IG with R_IG = ‖∇L‖²/m over m parameters and λ = h·m/4; convert with
:func:`coeff_from_paper_rate` and :func:`paper_rate_from_coeff`.

With several parameter groups, each with its own μ_j, the regularizer is
Σ_j μ_j‖∇_{θ_j}L‖², whose gradient is ∇L + 2·H(μ ⊙ ∇L), where μ ⊙ g scales
group j's block of g by μ_j.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .hvp import DEFAULT_METHOD, Params, grad_and_hvp

__all__ = [
    "igr_coeff",
    "heavy_ball_coeff",
    "coeff_from_paper_rate",
    "paper_rate_from_coeff",
    "default_fd_radius",
    "modified_gradient_exact",
    "egr_direction_exact",
    "egr_direction_chunked",
    "EGR_PENALTIES",
    "check_chunks",
    "finite_difference_hvp",
    "modified_gradient_fd",
    "flat_norm",
]

EGR_METHODS = ("exact", "finite_difference")
EGR_PENALTIES = ("full", "per_chunk")


def igr_coeff(lr: float) -> float:
    """μ = h/4: the coefficient of ‖∇L‖² in GD's implicit modified loss."""
    return lr / 4.0


def heavy_ball_coeff(lr: float, beta: float) -> float:
    """μ = h(1+β)/(4(1−β)²): the coefficient of ‖∇L‖² in heavy ball's modified loss.

    Ghosh, Lyu, Zhang & Wang, ICLR 2023 (arXiv 2302.00849): GD with heavy-ball
    momentum β and step h follows L̃ = L + μ‖∇L‖² at the effective step h/(1−β);
    μ = (1+β)/(1−β) · (h/(1−β))/4, i.e. GD's :func:`igr_coeff` at the effective step
    times :func:`~.regularizers.momentum_implicit_factor`; h/4 at β = 0. Derived in
    :mod:`.modified_equations`; the explicit term is
    ``gradient_norm_penalty(loss, params, coeff=μ)``.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"momentum beta must be a number in [0, 1), got {beta!r}")
    return lr * (1 + beta) / (4.0 * (1 - beta) ** 2)


def coeff_from_paper_rate(rate: float, num_params: int) -> float:
    """Convert Barrett & Dherin's λ (with R_IG = ‖∇L‖²/m) to μ = λ/m."""
    if num_params < 1:
        raise ValueError(f"num_params must be >= 1, got {num_params}")
    return rate / num_params


def paper_rate_from_coeff(coeff: float, num_params: int) -> float:
    """Convert μ to Barrett & Dherin's λ = μ·m; for μ = h/4 this is h·m/4."""
    if num_params < 1:
        raise ValueError(f"num_params must be >= 1, got {num_params}")
    return coeff * num_params


def default_fd_radius(dtype: torch.dtype) -> float:
    """Default finite-difference radius r = √ε of the dtype (1.5e-8 in float64,
    3.5e-4 in float32).

    The perturbation θ + r·v/‖v‖ has length r in parameter space whatever
    ‖v‖ is. On a smooth (C³) loss the error of H v is truncation ∝ r plus
    round-off ∝ ε/r, and √ε balances the two. Measured on a 40→512→512→10
    MLP, 4,000 rows (``benchmarks/bench_optim_step.py --fd-sweep``, table in
    ``docs/optimizers.md``): tanh 1.3e-7 (float64) and 1.2e-3 (float32),
    within 2–3× of the best radius in either dtype.

    ReLU networks have no safe radius. Moving θ by r flips the sign of about
    3·10⁵·r pre-activations there (4,000 rows × 1,024 units); each flip
    makes the gradient jump by a finite amount, an error ∝ 1/r in H v:

    - sparse (float64, √ε: ~0.005 flips per step): most steps are accurate
      (2e-8), about 1 in 200 carries an error of order 10²; a smaller r
      makes such steps rarer and their error larger in the same proportion.
    - dense (float32, √ε: ~100 flips per step): the error is O(1), about 2
      there (the difference quotient sees a smoothed Hessian). A smaller
      float32 radius is worse, not better: at 1e-7 round-off alone gives
      0.4 (ReLU) and 1.3 (tanh), and from 3e-7 on the flips are sparse and
      the errors reach 10²–10³.

    So the default serves smooth losses, and for ReLU networks EGR's
    ``method="exact"`` (its default) is the one to use.

    Raises ``ValueError`` for dtypes coarser than float32 (float16,
    bfloat16), where a forward difference of gradients is meaningless.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"finite differences need a floating dtype, got {dtype}")
    eps = torch.finfo(dtype).eps
    if eps > torch.finfo(torch.float32).eps:
        raise ValueError(
            f"finite differences need float32 or float64 parameters, got {dtype}; "
            "use method='exact' (or pass an explicit radius)"
        )
    return math.sqrt(eps)


def flat_norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of a tuple of tensors seen as one flat vector."""
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in tensors))


def modified_gradient_exact(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    coeffs: Sequence[float] | float,
    *,
    method: str = DEFAULT_METHOD,
) -> tuple[Params, Params]:
    """Exact ∇(L + Σ_j μ_j‖∇_jL‖²) = g + 2H(μ ⊙ g) through the package's HVP.

    Args:
        loss_fn: maps ``params`` to the scalar loss L.
        params: tensors θ.
        coeffs: μ, one float for all tensors or one per tensor.

    Returns:
        ``(g, g̃)``: the plain gradient and the modified gradient.
    """
    params = tuple(params)
    mus = _per_tensor(coeffs, len(params))
    g, hv = grad_and_hvp(
        loss_fn, params, lambda g: tuple(m * x for m, x in zip(mus, g)), method=method
    )
    return g, tuple(gi + 2.0 * h for gi, h in zip(g, hv))


def egr_direction_exact(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    coeffs: Sequence[float] | float,
    *,
    method: str = DEFAULT_METHOD,
) -> tuple[Params, Params]:
    """(g, H(μ ⊙ g)) with g = ∇L, through the package's one HVP.

    The pair that :func:`implicit_reg.core.updates.egr_update` turns into the
    step θ ← θ − h·(g + 2H(μ⊙g)) (Barrett & Dherin, ICLR 2021).
    """
    params = tuple(params)
    mus = _per_tensor(coeffs, len(params))
    return grad_and_hvp(
        loss_fn, params, lambda g: tuple(m * x for m, x in zip(mus, g)), method=method
    )


def check_chunks(chunks) -> None:
    """``ValueError`` unless ``chunks`` is a non-empty sequence of ``(w_c, closure)``
    pairs with finite weights w_c > 0 summing to 1."""
    if not chunks:
        raise ValueError("chunks is empty: give at least one (weight, closure) pair")
    for item in chunks:
        if not isinstance(item, (tuple, list)) or len(item) != 2 or not callable(item[1]):
            raise ValueError(f"each chunk is a (weight, closure) pair, got {item!r}")
        w = item[0]
        if (
            isinstance(w, bool)
            or not isinstance(w, (int, float))
            or not w > 0
            or not math.isfinite(w)
        ):
            raise ValueError(f"chunk weights must be finite numbers > 0, got {w!r}")
    total = sum(w for w, _ in chunks)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"chunk weights must sum to 1 (w_c = n_c/N, each closure returning its chunk's mean "
            f"loss), got {total!r}"
        )


def egr_direction_chunked(
    chunks: Sequence[tuple[float, Callable[[Params], Tensor]]],
    params: Sequence[Tensor],
    coeffs: Sequence[float] | float,
    *,
    penalty: str = "full",
    method: str = DEFAULT_METHOD,
) -> tuple[Tensor, Params, Params]:
    """EGR's (L, g, Hv) from a loss split into weighted chunks, L = Σ_c w_c L_c.

    ``chunks`` holds ``(w_c, L_c)`` pairs: L_c maps ``params`` to chunk c's
    *mean* loss and w_c = n_c/N (the weights sum to 1), so Σ_c w_c L_c is the
    mean loss over all N rows whatever the chunking.

    ``penalty="full"``: the penalty μ‖∇L‖² of the whole loss (Barrett &
    Dherin, ICLR 2021). Its gradient g + 2H(μ⊙g) needs the full g before any
    Hessian product, so two passes:

        pass 1:  g  = Σ_c w_c ∇L_c
        pass 2:  Hv = Σ_c w_c ∇²L_c (μ⊙g)

    The result equals the unchunked one up to floating-point summation order.

    ``penalty="per_chunk"``: the micro-batch penalty Σ_c w_c μ‖∇L_c‖² of Smith,
    Dherin, Barrett & De ("On the Origin of Implicit Regularization in
    Stochastic Gradient Descent", ICLR 2021, arXiv 2101.12176), which SGD with
    micro-batches c follows on average (with equal chunks Σ_c w_c = (1/J)Σ_c,
    their L + (h/4J)Σ_c‖∇L_c‖²). Its gradient is g + 2·Σ_c w_c H_c(μ⊙g_c) with
    g_c = ∇L_c; one pass, since each chunk's product needs only its own g_c.
    This *does* depend on the chunking, by definition.

    Returns:
        ``(L, g, Hv)``, all detached; ``egr_update(params, g, Hv, lr=h)`` steps.
    """
    if penalty not in EGR_PENALTIES:
        raise ValueError(
            f"unknown EGR penalty {penalty!r}; choose one of {', '.join(EGR_PENALTIES)}"
        )
    check_chunks(chunks)
    params = tuple(params)
    mus = _per_tensor(coeffs, len(params))
    g = [torch.zeros_like(p) for p in params]
    hv = [torch.zeros_like(p) for p in params]
    losses: list[Tensor] = []

    def weighted(fn, w):
        def f(ps):
            out = w * fn(ps)
            losses.append(out.detach())
            return out

        return f

    if penalty == "full":
        for w, fn in chunks:  # pass 1: g = Σ_c w_c ∇L_c
            with torch.enable_grad():
                loss = weighted(fn, w)(params)
                gs = torch.autograd.grad(loss, params, allow_unused=True)
            for acc, x in zip(g, gs):
                if x is not None:
                    acc.add_(x)
        v = tuple(m * x for m, x in zip(mus, g))
        for w, fn in chunks:  # pass 2: Hv = Σ_c w_c H_c (μ⊙g)
            _, hv_c = grad_and_hvp(lambda ps, fn=fn, w=w: w * fn(ps), params, vec=v, method=method)
            for acc, x in zip(hv, hv_c):
                acc.add_(x)
    else:
        for w, fn in chunks:  # (w_c g_c, w_c H_c(μ⊙g_c)) from one grad_and_hvp
            gc, hc = grad_and_hvp(
                weighted(fn, w),
                params,
                vec=lambda wg, w=w: tuple(m * x / w for m, x in zip(mus, wg)),
                method=method,
            )
            for acc_g, acc_h, a, b in zip(g, hv, gc, hc):
                acc_g.add_(a)
                acc_h.add_(b)
    return torch.stack(losses).sum(), tuple(g), tuple(hv)


def finite_difference_hvp(
    grad_at: Callable[[Params], Sequence[Tensor]],
    params: Sequence[Tensor],
    grad: Sequence[Tensor],
    vec: Sequence[Tensor],
    *,
    radius: float,
) -> Params:
    """Forward-difference HVP: Hv ≈ ‖v‖·[∇L(θ + r·v/‖v‖) − ∇L(θ)] / r.

    The step r is fixed in parameter space, so ε = r/‖v‖ is scaled by the
    direction's norm. Error is O(r) on a C³ loss; on piecewise-linear
    networks (ReLU) it is unbounded when θ + r·v/‖v‖ crosses a kink.

    Args:
        grad_at: returns ∇L at the given parameter values.
        params: θ (not modified).
        grad: ∇L(θ), already computed.
        vec: v.
        radius: r > 0.
    """
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"finite-difference radius must be positive and finite, got {radius}")
    vnorm = float(flat_norm(vec))
    if vnorm == 0.0:
        return tuple(torch.zeros_like(p) for p in params)
    scale = radius / vnorm
    shifted = tuple(p.detach() + scale * v for p, v in zip(params, vec))
    g_shift = grad_at(shifted)
    return tuple((gs - g) / scale for gs, g in zip(g_shift, grad))


def modified_gradient_fd(
    grad_at: Callable[[Params], Sequence[Tensor]],
    params: Sequence[Tensor],
    coeffs: Sequence[float] | float,
    *,
    radius: float | None = None,
) -> tuple[Params, Params]:
    """Finite-difference g̃ = g + 2H(μ ⊙ g), with two gradient evaluations."""
    params = tuple(params)
    mus = _per_tensor(coeffs, len(params))
    g = tuple(grad_at(tuple(p.detach() for p in params)))
    v = tuple(m * x for m, x in zip(mus, g))
    r = default_fd_radius(params[0].dtype) if radius is None else radius
    hv = finite_difference_hvp(grad_at, params, g, v, radius=r)
    return g, tuple(gi + 2.0 * h for gi, h in zip(g, hv))


def _per_tensor(coeffs: Sequence[float] | float, n: int) -> tuple[float, ...]:
    if isinstance(coeffs, (int, float)):
        return (float(coeffs),) * n
    coeffs = tuple(float(c) for c in coeffs)
    if len(coeffs) != n:
        raise ValueError(f"need one coefficient per tensor ({n}), got {len(coeffs)}")
    return coeffs
