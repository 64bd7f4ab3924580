"""The central flow of gradient descent at the edge of stability.

Cohen, Damian, Talwalkar, Kolter & Lee, "Understanding Optimization in Deep
Learning with Central Flows", ICLR 2025 (arXiv 2410.24206). Full-batch GD
with step η, θ_{k+1} = θ_k − η∇L(θ_k), oscillates along the top Hessian
eigenvector u once the sharpness S(θ) = λ_max(∇²L(θ)) reaches 2/η, and
self-stabilizes (Damian, Nichani & Lee, ICLR 2023). Its time-averaged
trajectory follows the *central flow*, in time t counted in GD steps:

    dθ/dt = −η [ ∇L(θ) + ½σ²(t)·∇S(θ) ],                               (1)

where σ² ≥ 0 is the variance of the oscillation along u, fixed by the
complementarity conditions

    S(θ) ≤ 2/η,   σ² ≥ 0,   σ²·(2/η − S(θ)) = 0,                      (2)

and, while S = 2/η, dS/dt = ⟨∇S, dθ/dt⟩ = 0, i.e.
σ² = max(0, −2⟨∇S, ∇L⟩/‖∇S‖²): the gradient flow with the component of ∇L
that would raise S projected out. Below the edge σ² = 0 and (1) is the
gradient flow θ̇ = −η∇L. The time-averaged loss it predicts is
L(θ) + ½σ²·S(θ) (the oscillation's mean excess loss, ``loss_predicted``).

∇S: for a simple top eigenvalue with unit eigenvector u,
∇S(θ) = ∇_θ(uᵀ∇²L(θ)u) with u held fixed, the contraction ∇³L[u, u] of the
third-derivative tensor; :func:`sharpness_gradient` computes it as the
gradient of the HVP contraction uᵀH(θ)u with ``torch.func`` (reverse mode
three times: uᵀHu = ⟨∇⟨∇L, u⟩, u⟩, then its gradient), which is why it does not
go through the package's detached HVP (:func:`implicit_reg.core.hvp.grad_and_hvp`).
Not forward-over-reverse (``jvp(grad(L))``): on torch 2.13 that raises "ZeroTensors
are immutable" for any loss that calls ``F.mse_loss`` (pytorch/pytorch#123996, the
forward-mode derivative of ``mse_loss_backward``; the HVP's ``method="jvp"`` names
the same bug).

Discretization (:func:`central_flow`): Euler steps of dt (in GD steps) with
σ² chosen, as in the authors' public JAX code, so that the *linearized*
constraint holds at the end of each step:

    S + dt·⟨∇S, θ̇(σ²)⟩ ≤ 2/η   ⇒   σ² = max(0, 2(S − 2/η − dt·η⟨∇S, ∇L⟩)/(dt·η‖∇S‖²)).

As dt → 0 on the edge this is the σ² of (2); below the edge it is 0 (then the
step is exactly an Euler step of gradient flow); above the edge it pulls S
back to 2/η within a step. The top eigenvector comes from a caller-supplied
eigensolver, warm-started from the previous step's vector (core imports
nothing above it; pass e.g. the probes' Lanczos). This module handles one
eigenvalue at the edge (the paper's k = 1); when a second one reaches 2/η the
paper solves a semidefinite complementarity problem instead, not done here.

**RMSProp** (:func:`rmsprop_central_flow`; Cohen et al., ICLR 2025, §RMSProp):
ν ← β₂ν + (1−β₂)∇L², θ ← θ − η∇L/P, P = √ν + ε (``torch.optim.RMSprop``, α = β₂).
Its edge is on the preconditioned sharpness S_P = λ_max(P⁻¹H) = λ_max(A),
A = P^{-1/2}HP^{-1/2}, at 2/η. With w the unit top eigenvector of A, the iterates
oscillate along v = P^{-1/2}w (P⁻¹H's eigenvector) with variance σ², and the
time-averaged state (θ, ν) follows

    dθ/dt = −η P⁻¹ [∇L + ½σ²∇_θS_P],   ∇_θS_P = ∇³L[v, v] (``sharpness_gradient``),
    dν/dt = (1−β₂)[∇L² + σ²(Hv)² − ν],  (Hv)² the mean excess of g² along the oscillation,

with σ² from the same complementarity, now through both variables:
dS_P/dt = ⟨∇_θS_P, θ̇⟩ + ⟨∇_νS_P, ν̇⟩, where ∂S_P/∂ν_i = −S_P·w_i²/(2P_i√ν_i)
(first-order perturbation of A's eigenvalue). θ̇ and ν̇ are affine in σ²,
so dS_P/dt = r₀ + σ²r₁ with r₁ < 0 and, per Euler step (as for GD),
σ² = max(0, (S_P − 2/η + dt·r₀)/(−dt·r₁)). Below the edge σ² = 0 and the flow is
RMSProp's preconditioned gradient flow (tested). Derived here from the paper's
construction for GD; the paper's own RMSProp equations could not be read from any
stored copy, so their notation is not quoted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .hvp import Params, check_scalar_loss, grad_and_hvp

__all__ = [
    "ParamsHessian",
    "sharpness_gradient",
    "central_flow_sigma2",
    "central_flow_velocity",
    "CentralFlowResult",
    "central_flow",
    "ScaledHessian",
    "rmsprop_sharpness_gradients",
    "rmsprop_central_flow",
]

EigSolver = Callable[[object, Tensor | None], tuple[float, Tensor]]


def _flat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in ts])


def _unflat(z: Tensor, like: Sequence[Tensor]) -> Params:
    out, i = [], 0
    for p in like:
        out.append(z[i : i + p.numel()].reshape(p.shape).to(p.dtype))
        i += p.numel()
    return tuple(out)


class ParamsHessian:
    """The Hessian of ``loss_fn`` at ``params`` as a flat-vector operator.

    ``matvec(v)`` = H v through the package's one HVP
    (:func:`~.hvp.grad_and_hvp`); ``dim``, ``dtype``, ``device`` and the
    product count ``n_hvp`` are the interface the probes' eigensolvers
    (:func:`implicit_reg.probes.eigen.lanczos`) take.
    """

    def __init__(self, loss_fn: Callable[[Params], Tensor], params: Sequence[Tensor]):
        self.loss_fn = loss_fn
        self.params = tuple(p.detach() for p in params)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.n_hvp = 0

    def matvec(self, vec: Tensor) -> Tensor:
        if vec.shape != (self.dim,):
            raise ValueError(
                f"expected a flat vector of shape ({self.dim},), got {tuple(vec.shape)}"
            )
        self.n_hvp += 1
        ps = tuple(p.clone().requires_grad_(True) for p in self.params)
        _, hv = grad_and_hvp(self.loss_fn, ps, _unflat(vec.to(self.dtype), ps))
        return _flat(hv)


def sharpness_gradient(
    loss_fn: Callable[[Params], Tensor], params: Sequence[Tensor], vec: Sequence[Tensor]
) -> tuple[float, Params]:
    """(uᵀH(θ)u, ∇_θ(uᵀH(θ)u)) with u = ``vec`` held fixed, by ``torch.func``.

    For the unit top eigenvector u of a simple λ_max this is (S, ∇S)
    (Cohen et al., ICLR 2025): ∇S_k = Σ_ij ∂³L/∂θ_i∂θ_j∂θ_k u_i u_j. All three
    derivatives are reverse mode, uᵀHu = ⟨∇_θ⟨∇L(θ), u⟩, u⟩ (reverse-over-reverse
    HVP), so losses built on ``F.mse_loss`` work (forward-over-reverse does not on
    torch 2.13, module docstring); ``loss_fn`` must be a pure function of its tuple
    argument.
    """
    from torch.func import grad, grad_and_value

    params = tuple(p.detach() for p in params)
    vec = tuple(v.detach().to(p.dtype) for v, p in zip(vec, params))
    if len(vec) != len(params) or any(v.shape != p.shape for v, p in zip(vec, params)):
        raise ValueError("vec must have one tensor per parameter, with matching shapes")

    def loss(ps):
        return check_scalar_loss(loss_fn(ps))

    def dot_u(ts):
        return sum((t * v).sum() for t, v in zip(ts, vec))

    def uhu(ps):
        hu = grad(lambda qs: dot_u(grad(loss)(qs)))(ps)  # H u = ∇⟨∇L, u⟩
        return dot_u(hu)

    dS, S = grad_and_value(uhu)(params)
    return float(S), tuple(d.detach() for d in dS)


def central_flow_sigma2(
    sharpness: float, grad_dot: float, grad_s_sq: float, *, lr: float, dt: float
) -> float:
    """σ² of one Euler step of dt: the least σ² ≥ 0 with S + dt·⟨∇S, θ̇⟩ ≤ 2/η.

    θ̇ = −η(∇L + ½σ²∇S), so σ² = max(0, 2(S − 2/η − dt·η·⟨∇S,∇L⟩)/(dt·η·‖∇S‖²)).
    ``grad_dot`` = ⟨∇S, ∇L⟩, ``grad_s_sq`` = ‖∇S‖². Zero when ‖∇S‖ = 0 (no
    direction can lower S).
    """
    return _complementarity_sigma2(
        sharpness, 2.0 / lr, -lr * grad_dot, -0.5 * lr * grad_s_sq, dt=dt
    )


def _complementarity_sigma2(sharpness: float, edge: float, r0: float, r1: float, *, dt: float):
    """The least σ² ≥ 0 with S + dt·(r₀ + σ²r₁) ≤ ``edge``, where dS/dt = r₀ + σ²r₁
    (r₁ ≤ 0: the oscillation lowers S); 0 when r₁ = 0."""
    excess = sharpness - edge + dt * r0
    if excess <= 0 or r1 >= 0:
        return 0.0
    return excess / (-dt * r1)


def central_flow_velocity(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    eigvec: Sequence[Tensor],
    *,
    lr: float,
    dt: float,
) -> tuple[Params, dict]:
    """dθ/dt = −η(∇L + ½σ²∇S) of (1), σ² from :func:`central_flow_sigma2`.

    ``eigvec`` is the unit top eigenvector u of ∇²L(θ), one tensor per
    parameter. Returns the velocity and ``dict(loss, sharpness, sigma2,
    loss_predicted)`` with S = uᵀHu and loss_predicted = L + ½σ²S.
    """
    lr, dt = _check_positive("lr", lr), _check_positive("dt", dt)
    params = tuple(p.detach().clone().requires_grad_(True) for p in params)
    with torch.enable_grad():
        loss = check_scalar_loss(loss_fn(params))
        g = tuple(x.detach() for x in torch.autograd.grad(loss, params))
    loss = loss.detach()
    S, dS = sharpness_gradient(loss_fn, params, eigvec)
    dot = float(sum((a * b).sum() for a, b in zip(dS, g)))
    sq = float(sum((a * a).sum() for a in dS))
    sigma2 = central_flow_sigma2(S, dot, sq, lr=lr, dt=dt)
    vel = tuple(-lr * (a + 0.5 * sigma2 * b) for a, b in zip(g, dS))
    info = dict(
        loss=float(loss),
        sharpness=S,
        sigma2=sigma2,
        loss_predicted=float(loss) + 0.5 * sigma2 * S,
    )
    return vel, info


@dataclasses.dataclass
class CentralFlowResult:
    """A central-flow trajectory, one row per Euler step (time in GD steps).

    ``theta`` holds the flat parameters at ``t`` (the last row is the end
    point); ``loss``, ``sharpness`` (uᵀHu), ``sigma2`` and ``loss_predicted``
    (L + ½σ²S, the predicted time-averaged loss of GD) are taken at the start
    of each step, so they have one row fewer than ``theta``. ``n_hvp``
    counts Hessian-vector products of the eigensolver; ``diverged`` is True
    when the loss became non-finite (the arrays stop there).
    """

    t: np.ndarray
    theta: np.ndarray
    loss: np.ndarray
    sharpness: np.ndarray
    sigma2: np.ndarray
    loss_predicted: np.ndarray
    n_hvp: int
    diverged: bool
    #: RMSProp's flow only: ν (flat, one row per row of ``theta``); ``sharpness`` is then
    #: λ_max(P⁻¹H)
    nu: np.ndarray | None = None


def central_flow(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    *,
    lr: float,
    t_end: float,
    eig_solver: EigSolver,
    dt: float = 0.25,
) -> CentralFlowResult:
    """Integrate GD's central flow (1)–(2) from ``params`` over ``t_end`` GD steps.

    Euler steps of ``dt`` (GD steps; the authors' default substep is 1/4) with
    the linearized complementarity of :func:`central_flow_sigma2`.

    Args:
        loss_fn: pure function of a tuple of tensors (full-batch mean loss).
        params: θ(0) (not modified).
        lr: η of the GD being modelled.
        t_end: length of the flow in GD steps.
        eig_solver: ``eig_solver(op, v0) -> (λ_max, u)`` for the flat
            operator ``op`` (:class:`ParamsHessian`) and warm start ``v0``
            (None at the first step, then the previous u), e.g. a wrapper of
            :func:`implicit_reg.probes.eigen.lanczos` with ``k=1``.
        dt: Euler step in GD steps, 0 < dt ≤ 1.
    """
    lr = _check_positive("lr", lr)
    dt = _check_positive("dt", dt)
    if dt > 1:
        raise ValueError(f"dt must be <= 1 GD step (Euler at the edge needs dt·ηS <= 2), got {dt}")
    t_end = _check_positive("t_end", t_end)
    if not callable(eig_solver):
        raise ValueError("eig_solver must be callable: eig_solver(op, v0) -> (lambda_max, u)")
    like = tuple(p.detach() for p in params)
    theta = _flat(like).clone()
    n_steps = max(1, round(t_end / dt))
    thetas, rows = [theta.clone()], []
    u, n_hvp, diverged = None, 0, False
    for _ in range(n_steps):
        ps = _unflat(theta, like)
        op = ParamsHessian(loss_fn, ps)
        _, u = eig_solver(op, u)
        n_hvp += op.n_hvp
        u = u.detach().to(theta.dtype).reshape(-1)
        u = u / u.norm()
        vel, info = central_flow_velocity(loss_fn, ps, _unflat(u, like), lr=lr, dt=dt)
        if not math.isfinite(info["loss"]):
            diverged = True
            break
        rows.append(info)
        theta = theta + dt * _flat(vel)
        thetas.append(theta.clone())
    return _result(rows, thetas, dt, n_hvp, diverged)


def _result(rows, thetas, dt, n_hvp, diverged, nu=None) -> CentralFlowResult:
    """A flow's per-step rows and iterates as a :class:`CentralFlowResult` (both flows)."""
    col = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in ("loss", "sharpness", "sigma2", "loss_predicted")}  # fmt: skip
    extra = {} if nu is None else {"nu": torch.stack(nu).cpu().double().numpy()}
    return CentralFlowResult(
        t=dt * np.arange(len(thetas), dtype=np.float64),
        theta=torch.stack(thetas).cpu().double().numpy(),
        n_hvp=n_hvp,
        diverged=diverged,
        **col,
        **extra,
    )


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- RMSProp


class ScaledHessian(ParamsHessian):
    """A = D H D for a flat positive ``scale`` D (D = P^{-1/2}: A has the eigenvalues
    of P⁻¹H), one HVP per product, for the probes' eigensolvers."""

    def __init__(self, loss_fn, params, scale: Tensor):
        super().__init__(loss_fn, params)
        if scale.shape != (self.dim,) or not bool((scale > 0).all()):
            raise ValueError(f"scale must be a positive flat vector of shape ({self.dim},)")
        self.scale = scale.to(self.dtype)

    def matvec(self, vec: Tensor) -> Tensor:
        return self.scale * super().matvec(self.scale * vec.to(self.dtype))


def _rmsprop_p(nu: Tensor, eps: float) -> Tensor:
    return nu.sqrt() + eps


def rmsprop_sharpness_gradients(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    nu: Tensor,
    w: Tensor,
    *,
    eps: float,
) -> tuple[float, Tensor, Tensor, Tensor]:
    """(S_P, ∇_θS_P, ∇_νS_P, Hv) for the unit top eigenvector ``w`` (flat) of
    A = P^{-1/2}HP^{-1/2}, P = √ν + ε, all flat: S_P = vᵀHv with v = P^{-1/2}w,
    ∇_θS_P = ∇³L[v, v] (:func:`sharpness_gradient`), ∂S_P/∂ν_i = −S_P w_i²/(2P_i√ν_i),
    and Hv = S_P·P^{1/2}w."""
    like = tuple(p.detach() for p in params)
    P = _rmsprop_p(nu, eps)
    w = w / w.norm()
    v = w / P.sqrt()
    S, dS = sharpness_gradient(loss_fn, like, _unflat(v, like))
    dS_dnu = -S * w * w / (2 * P * nu.sqrt())
    return S, _flat(dS), dS_dnu, S * P.sqrt() * w


def rmsprop_central_flow(
    loss_fn: Callable[[Params], Tensor],
    params: Sequence[Tensor],
    nu0: Tensor | Sequence[Tensor],
    *,
    lr: float,
    beta2: float = 0.99,
    eps: float = 1e-8,
    t_end: float,
    eig_solver: EigSolver,
    dt: float = 0.25,
) -> CentralFlowResult:
    """Integrate RMSProp's central flow (module docstring) from (θ, ν) over ``t_end`` steps.

    Args:
        loss_fn: pure function of a tuple of tensors (full-batch mean loss).
        params: θ(0) (not modified).
        nu0: ν(0) > 0, flat or one tensor per parameter (e.g. an RMSprop's
            ``square_avg``, or ∇L(θ₀)² for a long history).
        lr: η; the edge is λ_max(P⁻¹H) = 2/η.
        beta2: torch's ``alpha``, in [0, 1).
        eps: ε ≥ 0 of P = √ν + ε (outside the root, as torch).
        eig_solver: ``eig_solver(op, v0) -> (λ_max, w)`` on :class:`ScaledHessian`
            (e.g. ``implicit_reg.probes.lanczos_eig_solver(40)``), warm-started.
        dt: Euler step in optimizer steps, 0 < dt ≤ 1.

    Returns:
        :class:`CentralFlowResult` with ``sharpness`` = λ_max(P⁻¹H), ``nu`` the ν rows.
    """
    lr, dt, t_end = (_check_positive(k, v) for k, v in (("lr", lr), ("dt", dt), ("t_end", t_end)))
    if dt > 1:
        raise ValueError(f"dt must be <= 1 optimizer step, got {dt}")
    if isinstance(beta2, bool) or not isinstance(beta2, (int, float)) or not 0 <= beta2 < 1:
        raise ValueError(f"beta2 must be a number in [0, 1), got {beta2!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not callable(eig_solver):
        raise ValueError("eig_solver must be callable: eig_solver(op, v0) -> (lambda_max, w)")
    like = tuple(p.detach() for p in params)
    theta = _flat(like).clone()
    nu = (nu0 if isinstance(nu0, Tensor) else _flat(nu0)).detach().reshape(-1).to(theta)
    if nu.shape != theta.shape or not bool((nu > 0).all()) or not bool(nu.isfinite().all()):
        raise ValueError(
            f"nu0 must be finite and > 0 with one entry per parameter ({theta.numel()})"
        )
    thetas, nus, rows = [theta.clone()], [nu.clone()], []
    w, n_hvp, diverged = None, 0, False
    for _ in range(max(1, round(t_end / dt))):
        ps = _unflat(theta, like)
        P = _rmsprop_p(nu, eps)
        op = ScaledHessian(loss_fn, ps, P.rsqrt())
        _, w = eig_solver(op, w)
        n_hvp += op.n_hvp
        w = w.detach().to(theta.dtype).reshape(-1)
        w = w / w.norm()
        qs = tuple(p.clone().requires_grad_(True) for p in ps)
        with torch.enable_grad():
            loss = check_scalar_loss(loss_fn(qs))
            g = _flat(torch.autograd.grad(loss, qs))
        loss = loss.detach()
        if not math.isfinite(float(loss)):
            diverged = True
            break
        S, dS, dS_dnu, hv = rmsprop_sharpness_gradients(loss_fn, ps, nu, w, eps=eps)
        # θ̇ = a + σ²b, ν̇ = c + σ²d; dS/dt = r₀ + σ²r₁
        a, b = -lr * g / P, -0.5 * lr * dS / P
        c, d = (1 - beta2) * (g * g - nu), (1 - beta2) * hv * hv
        r0 = float(dS @ a + dS_dnu @ c)
        r1 = float(dS @ b + dS_dnu @ d)
        sigma2 = _complementarity_sigma2(S, 2.0 / lr, r0, r1, dt=dt)
        rows.append(
            dict(
                loss=float(loss),
                sharpness=S,
                sigma2=sigma2,
                loss_predicted=float(loss) + 0.5 * sigma2 * S,
            )
        )
        theta = theta + dt * (a + sigma2 * b)
        nu = nu + dt * (c + sigma2 * d)
        thetas.append(theta.clone())
        nus.append(nu.clone())
    return _result(rows, thetas, dt, n_hvp, diverged, nu=nus)
