"""``torch.optim`` optimizers that isolate implicit-regularization mechanisms.

- :class:`GD`: plain (full-batch) gradient descent, θ ← θ − h∇L.
- :class:`SGD`: SGD with heavy-ball/Nesterov momentum and weight decay,
  identical step for step to ``torch.optim.SGD``.
- :class:`EGR`: GD on the explicitly regularized loss L + μ‖∇L‖²
  (Barrett & Dherin, ICLR 2021), with μ = h/4 by default.

The classes only gather tensors and hyperparameters; the math lives in
:mod:`implicit_reg.modified_gradient` and :mod:`implicit_reg.hvp`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .modified_gradient import (
    EGR_METHODS,
    default_fd_radius,
    finite_difference_hvp,
    igr_coeff,
    modified_gradient_exact,
)

__all__ = ["GD", "SGD", "EGR", "gd_update", "sgd_update"]


def _check_lr(lr: float) -> float:
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    return float(lr)


def _check_nonneg(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def gd_update(params: list[Tensor], grads: list[Tensor], *, lr: float) -> None:
    """θ ← θ − h·g, in place."""
    if params:
        torch._foreach_add_(params, grads, alpha=-lr)


def sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """The ``torch.optim.SGD`` update, in place (Sutskever et al. 2013 form).

        d = g + λθ
        b ← d                    (first step)
        b ← β·b + (1 − τ)·d      (later steps)
        d = d + β·b  if Nesterov else b
        θ ← θ − h·d

    ``momentum_buffers`` is updated in place (None entries are created).
    """
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(d).detach()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = d.add(buf, alpha=momentum) if nesterov else buf
        p.add_(d, alpha=-lr)


class GD(Optimizer):
    """Full-batch gradient descent: θ_{t+1} = θ_t − h·∇L(θ_t).

    The optimizer does not know whether ``.grad`` holds a full-batch
    gradient; "full batch" is the caller's contract: the loss that the caller
    (or the closure) differentiates is the mean over the whole data set.

    Args:
        params: parameters or param groups.
        lr: step size h ≥ 0.
    """

    def __init__(self, params: Iterable, lr: float) -> None:
        super().__init__(params, {"lr": _check_lr(lr)})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step. ``closure`` (optional) follows torch's contract."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            gd_update(ps, [p.grad for p in ps], lr=group["lr"])
        return loss


class SGD(Optimizer):
    """Stochastic gradient descent with momentum; matches ``torch.optim.SGD``.

    Update (as in torch): d = g + λθ; b ← β·b + (1 − τ)·d (b = d at the first
    step); d = d + β·b with Nesterov, else d = b; θ ← θ − h·d.

    Smith, Dherin, Barrett & De (ICLR 2021) show that one epoch of m
    minibatch steps follows, on average, the modified loss
    L + (h/4m)·Σ_k‖∇L_k‖²; see
    :func:`implicit_reg.regularizers.sgd_implicit_regularizer`. With
    momentum β the implicit term is stronger by (1+β)/(1−β) (Ghosh et al.
    2023); see :func:`implicit_reg.regularizers.momentum_implicit_factor`.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": _check_lr(lr),
            "momentum": _check_nonneg("momentum", momentum),
            "dampening": _check_nonneg("dampening", dampening),
            "nesterov": bool(nesterov),
            "weight_decay": _check_nonneg("weight_decay", weight_decay),
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step. ``closure`` (optional) follows torch's contract."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            bufs = [self.state[p].get("momentum_buffer") for p in ps]
            sgd_update(
                ps,
                [p.grad for p in ps],
                bufs,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
            )
            if group["momentum"] != 0:
                for p, b in zip(ps, bufs):
                    self.state[p]["momentum_buffer"] = b
        return loss


class EGR(Optimizer):
    r"""Explicit gradient regularization: GD on L̃ = L + μ‖∇L‖².

    Update (Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021):

        θ ← θ − h·(∇L + 2μ·H∇L),       μ = h/4 when ``coeff=None``,

    so with the default the step is GD on the IGR modified loss
    L + (h/4)‖∇L‖², whose gradient is ∇L + (h/2)·H∇L. With several param
    groups the regularizer is Σ_j μ_j‖∇_{θ_j}L‖² and the gradient
    ∇L + 2H(μ ⊙ ∇L). A ``coeff=None`` group tracks its current lr, so an lr
    scheduler changes μ too.

    Methods:
        ``"exact"``: double backprop, H(μ⊙g) through :func:`implicit_reg.hvp.grad_and_hvp`.
            Cost: one forward, one backward with graph, one double backward.
        ``"finite_difference"``: H v ≈ ‖v‖·[∇L(θ + r·v/‖v‖) − ∇L(θ)]/r with
            v = μ⊙g: two gradient evaluations, no second-order graph. r is
            ``fd_radius`` (default √ε of the dtype). θ is restored bit for bit.
            Inaccurate on ReLU networks when the perturbation crosses kinks.

    Closure contract (the math needs the graph of the loss, so it differs
    from torch's in one point): the closure re-evaluates the model and
    **returns the loss without calling** ``backward()``; EGR differentiates
    it. It may zero grads; it need not. With ``"finite_difference"`` a
    torch-style closure that does call ``backward()`` is also accepted. The
    finite-difference method calls the closure twice; both calls see the same
    RNG state (same dropout masks), and if ``module`` is given its buffers
    (BatchNorm running statistics) are restored after the second call, so a
    step updates them once.

    After ``step``, ``p.grad`` holds the plain gradient ∇L (not ∇L̃), which
    is what a training loop logs.

    Args:
        params: parameters or param groups (each group may set ``lr``, ``coeff``).
        lr: step size h ≥ 0.
        coeff: μ ≥ 0, or None for h/4.
        method: ``"exact"`` or ``"finite_difference"``.
        fd_radius: perturbation size r > 0 for finite differences, or None.
        module: optional model whose buffers are protected during the second
            finite-difference evaluation.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        coeff: float | None = None,
        method: str = "exact",
        fd_radius: float | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if coeff is not None:
            _check_nonneg("coeff", coeff)
        if method not in EGR_METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(EGR_METHODS)}")
        if fd_radius is not None and (
            not isinstance(fd_radius, (int, float)) or not math.isfinite(fd_radius) or fd_radius <= 0
        ):
            raise ValueError(f"fd_radius must be a finite number > 0 or None, got {fd_radius!r}")
        defaults = {"lr": _check_lr(lr), "coeff": coeff, "method": method, "fd_radius": fd_radius}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["coeff"] is not None:
                _check_nonneg("coeff", group["coeff"])
            _check_lr(group["lr"])
            if group["method"] != method:
                raise ValueError("all param groups of one EGR must share the same method")
        self._module = module

    def _coeff(self, group: dict) -> float:
        return igr_coeff(group["lr"]) if group["coeff"] is None else group["coeff"]

    def _gather(self) -> tuple[list[Tensor], list[float], list[float]]:
        params, coeffs, lrs = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    coeffs.append(self._coeff(group))
                    lrs.append(group["lr"])
        return params, coeffs, lrs

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One EGR step; ``closure`` is required (see the class docstring)."""
        if closure is None:
            raise ValueError(
                "EGR.step needs a closure that re-evaluates the model and returns the loss: "
                "the modified gradient needs the loss's graph (exact) or a second evaluation "
                "(finite_difference)"
            )
        params, coeffs, lrs = self._gather()
        if not params:
            return closure()
        for p in params:
            p.grad = None
        method = self.defaults["method"]
        if method == "exact":
            g, g_mod, loss = self._exact(closure, params, coeffs)
        else:
            g, g_mod, loss = self._finite_difference(closure, params, coeffs)
        with torch.no_grad():
            for p, gi, gm, lr in zip(params, g, g_mod, lrs):
                p.add_(gm, alpha=-lr)
                p.grad = gi
        return loss.detach()

    def _exact(self, closure, params, coeffs):
        box: list[Tensor] = []

        def loss_fn(_):
            loss = closure()
            if any(p.grad is not None for p in params):
                raise ValueError(
                    "EGR(method='exact'): the closure called backward(); it must return the "
                    "loss without calling backward(), since EGR needs the loss's graph"
                )
            box.append(loss)
            return loss

        g, g_mod = modified_gradient_exact(loss_fn, params, coeffs)
        return g, g_mod, box[0]

    def _finite_difference(self, closure, params, coeffs):
        devices = sorted({p.device for p in params if p.device.type == "cuda"}, key=str)
        rng_before = _rng_state(devices)
        loss, g = _closure_grad(closure, params)
        v = tuple(m * x for m, x in zip(coeffs, g))
        group = self.param_groups[0]
        radius = group["fd_radius"] or default_fd_radius(params[0].dtype)
        saved = [p.detach().clone() for p in params]
        buffers = (
            [b.detach().clone() for b in self._module.buffers()] if self._module is not None else []
        )
        rng_after = _rng_state(devices)

        def grad_at(shifted):
            with torch.no_grad():
                for p, s in zip(params, shifted):
                    p.copy_(s)
            _set_rng_state(rng_before, devices)  # same dropout masks as the first call
            _, gs = _closure_grad(closure, params)
            return gs

        try:
            hv = finite_difference_hvp(grad_at, params, g, v, radius=radius)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)  # exact restore, not θ + δ − δ
                if self._module is not None:
                    for b, s in zip(self._module.buffers(), buffers):
                        b.copy_(s)
            _set_rng_state(rng_after, devices)
        return g, tuple(gi + 2.0 * h for gi, h in zip(g, hv)), loss


def _closure_grad(closure, params) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Call the closure and return (loss, ∇loss); accepts torch-style closures."""
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = closure()
    if any(p.grad is not None for p in params):  # the closure called backward()
        grads = tuple(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params)
    else:
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError("the closure must return the scalar loss")
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if x is None else x for p, x in zip(params, gs))
    for p in params:
        p.grad = None
    return loss, grads


def _rng_state(devices) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state, devices) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in zip(devices, cuda):
        torch.cuda.set_rng_state(s, d)
