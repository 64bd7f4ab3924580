"""Modified equations of heavy-ball momentum, RMSProp and Adam (full batch).

Backward error analysis, as in :mod:`.modified_gradient` for plain GD
(Barrett & Dherin, ICLR 2021): find a flow θ̇ = f₀(θ) + h·f₁(θ) whose
trajectory θ(t) passes, up to O(h³) per step, through the iterates
θ_n = θ(nh) of an optimizer with step size h. The leading term f₀ is the flow
the optimizer discretizes ("order 1": O(h²) local error); f₁ is the
correction ("order 2": O(h³) local error). Time runs so that one step is
time h.

For optimizers with memory (momentum buffers, moment estimates) "local
error" means the local truncation error of a multistep method: when the past
iterates θ_{n-1}, θ_{n-2}, … lie on a trajectory of the flow (and the
optimizer's state is built from them), one step lands within O(h^{p+1}) of
that trajectory at time h, p = 1 or 2. ``tests/test_modified_equations.py``
measures exactly that against ``torch.optim`` and fits the slopes.

**Heavy ball** (Ghosh, Lyu, Zhang & Wang, "Implicit regularization in
Heavy-ball momentum accelerated stochastic gradient descent", ICLR 2023,
arXiv 2302.00849; Kovachki & Stuart, JMLR 2021, for the modified equation of
momentum methods). θ_{n+1} = θ_n − h∇L(θ_n) + β(θ_n − θ_{n−1}), which is
``torch.optim.SGD(lr=h, momentum=β)``. Put θ_n = θ(nh) and expand
θ_{n±1} − θ_n = ±h θ̇ + (h²/2) θ̈ + O(h³):

    (1 − β) θ̇ + (h/2)(1 + β) θ̈ = −∇L + O(h²),

so f₀ = −∇L/(1−β), θ̈ = f₀′f₀ = H∇L/(1−β)² and

    θ̇ = −(1/(1−β)) ∇L̃,   L̃ = L + μ‖∇L‖²,   μ = h(1+β)/(4(1−β)²),

i.e. the gradient flow of L̃ run at the effective step h/(1−β) (in time
t' = t/(1−β)), with μ = (1+β)/(1−β) · (h/(1−β))/4: GD's h/4 at the effective
step, times :func:`~.regularizers.momentum_implicit_factor` (Ghosh et al.:
the implicit regularizer of GD+M is (1+β)/(1−β) times GD's at equal
effective step).

**RMSProp and Adam** (Cattaneo, Klusowski & Shigida, "On the Implicit Bias
of Adam", ICML 2024, arXiv 2309.00079). Adam with ε inside the square root,
as in the paper (β = β₁, ρ = β₂ there):

    m_{n+1} = β₁m_n + (1−β₁)∇L(θ_n),   v_{n+1} = β₂v_n + (1−β₂)∇L(θ_n)²,
    θ_{n+1} = θ_n − h m̂_{n+1} / ψ(v̂_{n+1}),   ψ(v) = √(v + ε),

with m̂ = m/(1−β₁^{n+1}), v̂ = v/(1−β₂^{n+1}) under bias correction. PyTorch
puts ε outside, ψ(v) = √v + ε (``torch.optim.Adam``/``RMSprop``); both are
handled (``eps_placement``). RMSProp is β₁ = 0 without bias correction.

Derivation (componentwise, g = ∇L(θ_n), H its Hessian). The moment
estimates average past gradients, ∇L(θ_{n−k}) = g − k h H θ̇ + O(h²), with
normalized weights w_k, so m̂ = g − h·a₁·Hθ̇ and v̂ = g² − 2h·a₂·g⊙Hθ̇ with
the *lags* a_i = Σ_k k w_k (:func:`ema_lag`): β/(1−β) for a long history,
β/(1−β) − tβ^t/(1−β^t) after t bias-corrected steps. Matching
θ_{n+1} − θ_n = hθ̇ + (h²/2)θ̈ to −h m̂/ψ(v̂) order by order gives

    f₀ = −g/ψ(g²),
    θ̇ = −(1/ψ(g²)) ⊙ [ g + h·c ⊙ ∇N(θ) ] + O(h²),                  (★)
    c = (a₁ + ½) − (a₂ + ½)·r,   r = 2g²ψ′(g²)/ψ(g²) ∈ [0, 1],

where N(θ) = Σ_i Φ(∂_iL) with Φ′(g) = g/ψ(g²), so ∇N = H (g/ψ(g²)):

- ε inside: r = g²/(g² + ε) and N = ‖∇L‖_{1,ε} = Σ_i √((∂_iL)² + ε), the
  paper's perturbed one-norm; c = [(a₁ − a₂)g² + ε(a₁ + ½)]/(g² + ε).
- ε outside: r = |g|/(|g| + ε) and Φ(g) = |g| − ε·log(1 + |g|/ε);
  c = [(a₁ − a₂)|g| + ε(a₁ + ½)]/(|g| + ε). ψ = |g| + ε has a kink where a
  component of g crosses 0; the expansion holds away from such crossings.

(★) is the full-batch modified equation of Cattaneo et al. (RMSProp the case
β = 0), written in this module's notation and derived as above; the order
test in ``tests/test_modified_equations.py`` is its check. The h-term
penalizes the perturbed one-norm where c > 0 and hinders its decrease
("anti-penalizes") where c < 0, the paper's dichotomy. Sign of c
(:func:`one_norm_coeff`):

- c → a₁ − a₂ = β₁/(1−β₁) − β₂/(1−β₂) when √ε ≪ |∂_iL| (r → 1): negative
  whenever β₂ > β₁, the usual setting: Adam and RMSProp anti-regularize;
- c → a₁ + ½ = (1+β₁)/(2(1−β₁)) > 0 when √ε ≫ |∂_iL| (r → 0): Adam is then
  heavy ball with step h/√ε, and (★) reduces to the heavy-ball modified
  flow above (tested);
- in between, c > 0 exactly when r < (a₁ + ½)/(a₂ + ½): a component
  switches from anti-penalized to penalized as its gradient shrinks during
  training.

With c frozen at a constant, (★) is the ψ-preconditioned flow of
L + h·c·N; with ε ≪ g² that is the paper's modified loss
L + h(β₁/(1−β₁) − β₂/(1−β₂))‖∇L‖_{1,ε}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .hvp import DEFAULT_METHOD, Params, grad_and_hvp
from .modified_gradient import heavy_ball_coeff, modified_gradient_exact
from .updates import adam_update

__all__ = [
    "EPS_PLACEMENTS",
    "heavy_ball_effective_lr",
    "heavy_ball_coeff",
    "heavy_ball_velocity",
    "ema_lag",
    "perturbed_one_norm",
    "one_norm_coeff",
    "adam_velocity",
    "rmsprop_velocity",
    "adam_step",
]

EPS_PLACEMENTS = ("inside", "outside")
ORDERS = (1, 2)


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or lr == math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def _check_beta(name: str, beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {beta!r}")
    return float(beta)


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_placement(eps_placement: str) -> str:
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(
            f"unknown eps_placement {eps_placement!r}; choose one of {', '.join(EPS_PLACEMENTS)}"
        )
    return eps_placement


def _check_order(order) -> int:
    if order not in ORDERS or isinstance(order, bool):
        raise ValueError(f"order must be 1 (leading flow) or 2 (modified flow), got {order!r}")
    return int(order)


def _check_step(step, bias_correction: bool):
    if bias_correction:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(
                "bias_correction=True needs step, the 1-based index t of the update "
                f"(torch's state['step'] after it), an int >= 1; got {step!r}"
            )
    elif step is not None:
        raise ValueError(
            "step is only used with bias_correction=True; without it the history is taken "
            f"as long (β^t ≈ 0), got step={step!r}"
        )
    return step


def _leaves(params: Sequence[Tensor]) -> Params:
    """Fresh leaves that require grad, so a velocity can be taken at any point
    (the loss closure must be a function of its tuple argument)."""
    return tuple(p.detach().requires_grad_(True) for p in params)


# ---------------------------------------------------------------- heavy ball


def heavy_ball_effective_lr(lr: float, beta: float) -> float:
    """h/(1−β): the step of GD that heavy ball with step h and momentum β moves like."""
    return _check_lr(lr) / (1 - _check_beta("momentum beta", beta))


def heavy_ball_velocity(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    *,
    lr: float,
    beta: float,
    order: int = 2,
    method: str = DEFAULT_METHOD,
) -> Params:
    """θ̇ of heavy ball's flow, in time where one step is time h.

    ``loss_fn`` maps a tuple of tensors to the scalar loss (a pure function of
    it: the velocity is taken at fresh leaves made from ``params``).

    order 1: −∇L/(1−β) (the flow heavy ball discretizes, O(h²) per step);
    order 2: −(∇L + 2μ·H∇L)/(1−β) = −∇L̃/(1−β), μ = :func:`heavy_ball_coeff`
    (O(h³) per step; Ghosh et al., ICLR 2023).
    """
    _check_order(order)
    mu = heavy_ball_coeff(lr, beta)
    params = _leaves(params)
    if order == 1:
        with torch.enable_grad():
            g = torch.autograd.grad(loss_fn(params), params)
    else:
        _, g = modified_gradient_exact(loss_fn, params, mu, method=method)
    return tuple(-x.detach() / (1 - beta) for x in g)


# ---------------------------------------------------------------- RMSProp / Adam


def ema_lag(beta: float, step: int | None = None) -> float:
    """a = Σ_k k·w_k, the mean age (in steps) of the gradients an EMA averages.

    With weights w_k = (1−β)β^k over a long history, a = β/(1−β); after
    ``step`` = t bias-corrected updates, w_k = (1−β)β^k/(1−β^t) for
    k < t and a = β/(1−β) − tβ^t/(1−β^t) (0 at t = 1). The moment estimate
    then lags the current gradient by a·h·Hθ̇ (Cattaneo et al., ICML 2024).
    """
    beta = _check_beta("beta", beta)
    if beta == 0:
        return 0.0
    if step is None:
        return beta / (1 - beta)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1 or None, got {step!r}")
    bt = beta**step
    return beta / (1 - beta) - step * bt / (1 - bt)


def _psi(g2: Tensor, eps: float, eps_placement: str) -> Tensor:
    """ψ(g²): √(g²+ε) (inside) or |g| + ε (outside)."""
    return torch.sqrt(g2 + eps) if eps_placement == "inside" else torch.sqrt(g2) + eps


def _elasticity(g: Tensor, eps: float, eps_placement: str) -> Tensor:
    """r = 2g²ψ′(g²)/ψ(g²): g²/(g²+ε) inside, |g|/(|g|+ε) outside (0 where g = 0)."""
    if eps_placement == "inside":
        g2 = g * g
        return g2 / (g2 + eps) if eps > 0 else torch.ones_like(g)
    a = g.abs()
    return a / (a + eps) if eps > 0 else torch.ones_like(g)


def perturbed_one_norm(
    grads: Sequence[Tensor], eps: float, *, eps_placement: str = "inside"
) -> Tensor:
    """N = Σ_i Φ(g_i), the norm that Adam's h-term acts on (differentiable).

    ε inside: Φ(g) = √(g² + ε), the perturbed one-norm ‖g‖_{1,ε} of
    Cattaneo, Klusowski & Shigida (ICML 2024). ε outside (PyTorch's Adam):
    Φ(g) = |g| − ε·log(1 + |g|/ε), the potential with Φ′(g) = g/(|g| + ε).
    Either way ∇_θ N(∇L(θ)) = H·(g/ψ(g²)).
    """
    eps = _check_eps(eps)
    _check_placement(eps_placement)
    total = None
    for g in grads:
        if eps_placement == "inside":
            term = torch.sqrt(g * g + eps).sum()
        elif eps > 0:
            a = g.abs()
            term = (a - eps * torch.log1p(a / eps)).sum()
        else:
            term = g.abs().sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("grads is empty")
    return total


def one_norm_coeff(
    grad: Tensor,
    *,
    betas: tuple[float, float],
    eps: float,
    eps_placement: str = "inside",
    bias_correction: bool = False,
    step: int | None = None,
) -> Tensor:
    """c = (a₁ + ½) − (a₂ + ½)·r per component: the sign and size of Adam's h-term.

    In (★) of this module (Cattaneo et al., ICML 2024), θ̇ = −ψ⁻¹⊙(g + h·c⊙∇N):
    c > 0 penalizes the perturbed one-norm N, c < 0 anti-penalizes it.
    a_i = :func:`ema_lag` (β_i, t); r = g²/(g²+ε) (ε inside) or |g|/(|g|+ε)
    (ε outside). Limits: a₁ − a₂ for √ε ≪ |g| (negative when β₂ > β₁),
    (1+β₁)/(2(1−β₁)) for √ε ≫ |g|. RMSProp: ``betas=(0, α)``.
    """
    b1, b2 = _check_beta("beta1", betas[0]), _check_beta("beta2", betas[1])
    eps = _check_eps(eps)
    _check_placement(eps_placement)
    _check_step(step, bias_correction)
    a1, a2 = ema_lag(b1, step), ema_lag(b2, step)
    return (a1 + 0.5) - (a2 + 0.5) * _elasticity(grad, eps, eps_placement)


def adam_velocity(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps_placement: str = "inside",
    bias_correction: bool = False,
    step: int | None = None,
    order: int = 2,
    method: str = DEFAULT_METHOD,
) -> Params:
    """θ̇ of full-batch Adam's flow, in time where one step is time h.

    ``loss_fn`` maps a tuple of tensors to the scalar loss (a pure function of
    it: the velocity is taken at fresh leaves made from ``params``).

    order 1: −g/ψ(g²) (the flow Adam discretizes; O(h²) per step);
    order 2: −ψ(g²)⁻¹ ⊙ (g + h·c ⊙ ∇N), c = :func:`one_norm_coeff`,
    ∇N = H(g/ψ(g²)) from the package's one HVP: equation (★) of this module,
    Cattaneo, Klusowski & Shigida (ICML 2024); O(h³) per step when the
    moment estimates were built along the flow.

    Args:
        betas: (β₁, β₂), the paper's (β, ρ).
        eps: ε; ``eps_placement`` "inside" (the paper's √(v̂ + ε)) or
            "outside" (``torch.optim.Adam``'s √v̂ + ε).
        bias_correction: with it, ``step`` is the 1-based index t of the
            update being modelled (torch's ``state['step']`` after it) and
            the lags are those of t steps; without it the history is long.
    """
    lr = _check_lr(lr)
    _check_order(order)
    c_args = dict(
        betas=betas,
        eps=eps,
        eps_placement=eps_placement,
        bias_correction=bias_correction,
        step=step,
    )
    eps = _check_eps(eps)
    params = _leaves(params)

    def phi(g: Params) -> Params:  # g/ψ(g²)
        return tuple(x / _psi(x * x, eps, eps_placement) for x in g)

    if order == 1:
        with torch.enable_grad():
            g = tuple(x.detach() for x in torch.autograd.grad(loss_fn(params), params))
        one_norm_coeff(g[0], **c_args)  # validates the hyperparameters
        return tuple(-x for x in phi(g))
    g, grad_n = grad_and_hvp(loss_fn, params, phi, method=method)
    return tuple(
        -(x + lr * one_norm_coeff(x, **c_args) * dn) / _psi(x * x, eps, eps_placement)
        for x, dn in zip(g, grad_n)
    )


def rmsprop_velocity(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    eps_placement: str = "outside",
    order: int = 2,
    method: str = DEFAULT_METHOD,
) -> Params:
    """θ̇ of full-batch RMSProp's flow: :func:`adam_velocity` with β₁ = 0, β₂ = α
    and no bias correction (Cattaneo et al., ICML 2024, RMSProp as Adam with β = 0).

    ``eps_placement`` defaults to "outside", ``torch.optim.RMSprop``'s
    θ ← θ − h·g/(√v + ε); c = ½ − (α/(1−α) + ½)·r, negative for √ε ≪ |g|.
    """
    return adam_velocity(
        loss_fn,
        params,
        lr=lr,
        betas=(0.0, alpha),
        eps=eps,
        eps_placement=eps_placement,
        bias_correction=False,
        order=order,
        method=method,
    )


def adam_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    *,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    eps_placement: str = "inside",
    bias_correction: bool = True,
) -> tuple[Params, Params, Params]:
    """One Adam update as a pure function: returns (θ', m', v').

    m' = β₁m + (1−β₁)g, v' = β₂v + (1−β₂)g², θ' = θ − h·m̂'/ψ(v̂'), with
    m̂' = m'/(1−β₁^t), v̂' = v'/(1−β₂^t) (t = ``step``, 1-based, the update's
    index) when ``bias_correction``, else m̂' = m', v̂' = v'. ψ(v) = √(v + ε)
    ("inside": Cattaneo et al.'s Adam, absent from ``torch.optim``) or
    √v + ε ("outside": equal to ``torch.optim.Adam``, tested). β₁ = 0
    without bias correction is ``torch.optim.RMSprop`` (α = β₂). The arithmetic
    is :func:`~.updates.adam_update`'s (the optimizers' one Adam step) on copies.
    """
    lr = _check_lr(lr)
    b1, b2 = _check_beta("beta1", betas[0]), _check_beta("beta2", betas[1])
    eps = _check_eps(eps)
    _check_placement(eps_placement)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    new_p, new_m, new_v = (
        [t.detach().clone() for t in ts] for ts in (params, exp_avgs, exp_avg_sqs)
    )
    adam_update(
        new_p, list(grads), new_m, new_v, step=step, lr=lr, beta1=b1, beta2=b2, eps=eps,
        bias_correction=bias_correction, eps_placement=eps_placement,
    )  # fmt: skip
    return tuple(new_p), tuple(new_m), tuple(new_v)
