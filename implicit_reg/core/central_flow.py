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
    excess = sharpness - 2.0 / lr - dt * lr * grad_dot
    if excess <= 0 or grad_s_sq == 0:
        return 0.0
    return 2.0 * excess / (dt * lr * grad_s_sq)


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
    col = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in ("loss", "sharpness", "sigma2", "loss_predicted")}  # fmt: skip
    return CentralFlowResult(
        t=dt * np.arange(len(thetas), dtype=np.float64),
        theta=torch.stack(thetas).cpu().double().numpy(),
        n_hvp=n_hvp,
        diverged=diverged,
        **col,
    )


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
