"""``torch.optim`` optimizers that isolate implicit-regularization mechanisms.

- :class:`GD`: plain (full-batch) gradient descent, θ ← θ − h∇L.
- :class:`SGD`: SGD with heavy-ball/Nesterov momentum and weight decay,
  identical step for step to ``torch.optim.SGD``.
- :class:`EGR`: GD on the explicitly regularized loss L + μ‖∇L‖²
  (Barrett & Dherin, ICLR 2021), with μ = h/4 by default; with heavy-ball
  ``momentum`` β, GD+momentum on it with μ = h(1+β)/(4(1−β)²), heavy ball's own
  implicit coefficient (Ghosh et al., ICLR 2023).
- :class:`Adam`: ``torch.optim.Adam``'s step, with bias correction optional and
  ε inside or outside the root (Cattaneo, Klusowski & Shigida, ICML 2024).

The classes only gather tensors and hyperparameters; the math lives in
:mod:`implicit_reg.core.modified_gradient` and :mod:`implicit_reg.core.hvp`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .hvp import check_scalar_loss, hvp_of_graph
from .modified_gradient import (
    EGR_METHODS,
    EGR_PENALTIES,
    check_chunks,
    default_fd_radius,
    egr_direction_chunked,
    egr_direction_exact,
    finite_difference_hvp,
    heavy_ball_coeff,
)
from .objective import summed_loss_and_grad
from .updates import (
    EPS_PLACEMENTS,
    adam_update,
    egr_update,
    gd_update,
    sgd_update,
    sgd_update_fused,
)

__all__ = ["GD", "SGD", "EGR", "Adam", "gd_update", "sgd_update"]


_LABELS = {
    "lr": "learning rate",
    "momentum": "momentum value",
    "weight_decay": "weight_decay value",
}


def _check_nonneg(name: str, value, *, tensor: bool = False):
    """``value`` if it is a finite number ≥ 0 (or, with ``tensor``, a one-element
    tensor holding one), else ``ValueError``; messages carry torch's wording."""
    label = _LABELS.get(name, f"{name} value")
    if tensor and isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        number = value.detach().reshape(()).item()
        if isinstance(number, complex) or not math.isfinite(number) or number < 0:
            raise ValueError(f"Invalid {label}: {value} ({name} must be a finite number >= 0)")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Invalid {label}: {value} ({name} must be a finite number >= 0, got {value!r})"
        )
    return value if tensor else float(value)


def _check_lr(lr, *, tensor: bool = False):
    return _check_nonneg("lr", lr, tensor=tensor)


def _add_checked_group(opt: Optimizer, group: dict, check: Callable[[dict], None]) -> None:
    """``Optimizer.add_param_group`` followed by ``check`` on the completed group.

    Runs for the groups given to ``__init__`` and for later
    ``add_param_group`` calls alike; a group that fails is not kept.
    """
    Optimizer.add_param_group(opt, group)
    try:
        check(opt.param_groups[-1])
    except ValueError:
        opt.param_groups.pop()
        raise


_FLAGS = {"maximize": False, "foreach": None, "differentiable": False, "fused": None}


class _FirstOrder(Optimizer):
    """What GD and SGD share with ``torch.optim.SGD``: the flags, the closure, the
    fused check and the step loop; subclasses name their update in ``_update``."""

    def _check_flags(self) -> None:
        fused, foreach, differentiable = (
            self.defaults[k] for k in ("fused", "foreach", "differentiable")
        )
        if fused and differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict) -> None:  # checkpoints saved before a flag existed
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _FLAGS.items():
                group.setdefault(key, False if key == "fused" else value)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step. ``closure`` (optional) follows torch's contract: it may call
        ``backward()`` and returns the loss."""
        differentiable = any(g["differentiable"] for g in self.param_groups)
        with torch.set_grad_enabled(differentiable):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                ps = [p for p in group["params"] if p.grad is not None]
                if group["fused"]:
                    for p in ps:
                        _check_fused(p)
                self._update(group, ps, [p.grad for p in ps])
        return loss

    def _update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError


def _check_fused(p: Tensor) -> None:
    devices = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia")
    if p.device.type not in devices or not torch.is_floating_point(p):
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of supported "
            f"devices ({', '.join(devices)}), got {p.dtype} on {p.device.type}; "
            "use fused=None/False"
        )


class GD(_FirstOrder):
    """Full-batch gradient descent: θ_{t+1} = θ_t − h·∇L(θ_t) (θ_t + h·∇L with ``maximize``).

    The optimizer does not know whether ``.grad`` holds a full-batch
    gradient; "full batch" is the caller's contract: the loss that the caller
    (or the closure) differentiates is the mean over the whole data set.
    The step is :func:`implicit_reg.core.updates.gd_update`; it equals
    ``torch.optim.SGD(params, lr)`` with momentum 0 bit for bit.

    Args (those of ``torch.optim.SGD`` that apply to GD, same meaning):
        params: parameters or param groups.
        lr: step size h ≥ 0, a float or a one-element tensor (default 1e-3).
        maximize: ascend instead of descend.
        foreach, differentiable, fused: as in ``torch.optim.SGD``; ``fused``
            runs ATen's fused SGD kernel (rounding as torch's fused path does).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": _check_lr(lr, tensor=True),
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)
        self._check_flags()

    def add_param_group(self, param_group: dict) -> None:
        _add_checked_group(self, param_group, lambda g: _check_lr(g["lr"], tensor=True))

    def _update(self, group, params, grads):
        if group["fused"]:
            sgd_update_fused(
                params,
                grads,
                [],
                lr=group["lr"],
                momentum=0.0,
                dampening=0.0,
                nesterov=False,
                weight_decay=0.0,
                maximize=group["maximize"],
            )
        else:
            gd_update(params, grads, lr=group["lr"], maximize=group["maximize"])


class SGD(_FirstOrder):
    """Stochastic gradient descent with momentum; a drop-in for ``torch.optim.SGD``.

    Same signature, positional order, defaults, state and step as torch 2.13's
    ``torch.optim.SGD``: ``SGD(params, lr=1e-3, momentum=0, dampening=0,
    weight_decay=0, nesterov=False, *, maximize=False, foreach=None,
    differentiable=False, fused=None)``. Update
    (:func:`implicit_reg.core.updates.sgd_update`): d = ±g + λθ; b ← β·b +
    (1 − τ)·d (b = d at the first step); d = d + β·b with Nesterov, else
    d = b; θ ← θ − h·d. ``state[p]`` holds ``momentum_buffer`` only when
    β ≠ 0.

    Smith, Dherin, Barrett & De (ICLR 2021) show that one epoch of m
    minibatch steps follows, on average, the modified loss
    L + (h/4m)·Σ_k‖∇L_k‖²; see
    :func:`implicit_reg.core.regularizers.sgd_implicit_regularizer`. With
    momentum β the implicit term is (1+β)/(1−β) times that of GD at the
    effective step h/(1−β) (Ghosh, Lyu, Zhang & Wang, ICLR 2023); see
    :func:`implicit_reg.core.regularizers.momentum_implicit_factor`.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": _check_lr(lr, tensor=True),
            "momentum": _check_nonneg("momentum", momentum, tensor=True),
            "dampening": dampening,
            "weight_decay": _check_nonneg("weight_decay", weight_decay, tensor=True),
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        _check_nesterov(defaults)
        super().__init__(params, defaults)
        self._check_flags()

    def add_param_group(self, param_group: dict) -> None:
        _add_checked_group(self, param_group, _check_sgd_group)

    def _update(self, group, params, grads):
        momentum = group["momentum"]
        bufs = [self.state[p].get("momentum_buffer") for p in params] if momentum != 0 else []
        kw = dict(
            lr=group["lr"],
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
        if group["fused"]:
            sgd_update_fused(params, grads, bufs, **kw)
        else:
            sgd_update(params, grads, bufs if momentum != 0 else [None] * len(params), **kw)
        if momentum != 0:
            for p, b in zip(params, bufs):
                self.state[p]["momentum_buffer"] = b


def _check_sgd_group(group: dict) -> None:
    """Signs of a group's lr, momentum and weight decay. The Nesterov condition is
    checked on the constructor's arguments only, as torch does: a group with
    ``nesterov=True`` and β = 0 takes plain steps there and here."""
    _check_lr(group["lr"], tensor=True)
    for name in ("momentum", "weight_decay"):
        _check_nonneg(name, group[name], tensor=True)


def _check_nesterov(defaults: dict) -> None:
    if defaults["nesterov"] and (defaults["momentum"] <= 0 or defaults["dampening"] != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum and zero dampening: nesterov=True needs "
            f"momentum > 0 and dampening = 0, got momentum={defaults['momentum']!r}, "
            f"dampening={defaults['dampening']!r}"
        )


class Adam(Optimizer):
    """Adam (Kingma & Ba, ICLR 2015), full batch or minibatch; ``torch.optim.Adam``'s step.

    Update (:func:`implicit_reg.core.updates.adam_update`), t the update's index:

        d = ±g + λθ,   m ← β₁m + (1−β₁)d,   v ← β₂v + (1−β₂)d²,
        θ ← θ − h·(m/b₁)/ψ(v/b₂),   b_i = 1 − β_i^t (``bias_correction``) or 1,

    ψ(v) = √v + ε (``eps_placement="outside"``, torch's) or √(v + ε)
    ("inside", the Adam whose modified equation Cattaneo, Klusowski &
    Shigida (ICML 2024) derive: :mod:`implicit_reg.core.modified_equations`).
    With the defaults the step is ``torch.optim.Adam``'s (CPU, no amsgrad) bit
    for bit, and ``state[p]`` holds torch's ``step``, ``exp_avg`` and
    ``exp_avg_sq``, so :class:`~implicit_reg.probes.preconditioned` reads
    P = ψ(v̂) from it. β₁ = 0 without bias correction is ``torch.optim.RMSprop``
    (α = β₂). Every setting is read from the param groups at each step, so
    ``load_state_dict`` restores them.

    Args:
        params: parameters or param groups.
        lr: step size h ≥ 0.
        betas: (β₁, β₂), each in [0, 1).
        eps: ε ≥ 0.
        weight_decay: λ ≥ 0, torch's L2 term (added to the gradient).
        bias_correction: divide the moments by 1 − β_i^t (torch always does).
        eps_placement: "outside" (torch) or "inside".
        maximize: ascend instead of descend.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        *,
        bias_correction: bool = True,
        eps_placement: str = "outside",
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "eps_placement": eps_placement,
            "maximize": maximize,
        }
        _check_adam_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        _add_checked_group(self, param_group, _check_adam_group)

    def __setstate__(self, state: dict) -> None:  # a torch.optim.Adam state dict loads too
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("bias_correction", True)
            group.setdefault("eps_placement", "outside")
            group.setdefault("maximize", False)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step. ``closure`` (optional) follows torch's contract: it may call
        ``backward()`` and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                _check_adam_group(group)
                params = [p for p in group["params"] if p.grad is not None]
                for p in params:
                    if p.grad.is_sparse:
                        raise RuntimeError("Adam does not support sparse gradients")
                    state = self.state[p]
                    if not state:  # torch's layout: step is a 0-dim float32 tensor on the CPU
                        state["step"] = torch.tensor(0.0, dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format
                        )
                # params of one group may have taken different numbers of steps (a
                # parameter without .grad skips one), so each gets its own t
                for p in params:
                    state = self.state[p]
                    state["step"] += 1
                    beta1, beta2 = group["betas"]
                    adam_update(
                        [p], [p.grad], [state["exp_avg"]], [state["exp_avg_sq"]],
                        step=state["step"].item(), lr=group["lr"], beta1=beta1, beta2=beta2,
                        eps=group["eps"], weight_decay=group["weight_decay"],
                        bias_correction=group["bias_correction"],
                        eps_placement=group["eps_placement"], maximize=group["maximize"],
                    )  # fmt: skip
        return loss


def _check_adam_group(group: dict) -> None:
    """lr, betas, eps, weight decay and the ε placement of one group (``ValueError``)."""
    _check_lr(group["lr"])
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
            raise ValueError(f"Invalid beta parameter at index {i}: {b!r} (must be in [0, 1))")
    _check_nonneg("eps", group["eps"])
    _check_nonneg("weight_decay", group["weight_decay"])
    if group["eps_placement"] not in EPS_PLACEMENTS:
        raise ValueError(
            f"unknown eps_placement {group['eps_placement']!r}; choose one of "
            f"{', '.join(EPS_PLACEMENTS)}"
        )
    if not isinstance(group["bias_correction"], bool):
        raise ValueError(f"bias_correction must be True or False, got {group['bias_correction']!r}")
    for flag, what in (
        ("amsgrad", "amsgrad"),
        ("decoupled_weight_decay", "AdamW's decoupled decay"),
    ):
        if group.get(flag, False):  # keys of a loaded torch.optim.Adam/AdamW state
            raise ValueError(f"implicit_reg.Adam has no {what}; use torch.optim's optimizer")


_WAYS = (
    "EGR(method='exact') needs the gradient's graph to form H(μ⊙g); give it one of three ways: "
    "(1) step(closure) with a closure that returns the loss WITHOUT calling backward(); "
    "(2) step(closure) with a torch-style closure that calls loss.backward(create_graph=True); "
    "(3) loss.backward(create_graph=True) before step() with no closure. "
    "In Lightning (automatic optimization) override LightningModule.backward: "
    "def backward(self, loss, *args, **kwargs): loss.backward(create_graph=True)"
)


class EGR(Optimizer):
    r"""Explicit gradient regularization: GD (or heavy ball) on L̃ = L + μ‖∇L‖².

    Update (Barrett & Dherin, "Implicit Gradient Regularization", ICLR 2021,
    arXiv 2009.11162):

        θ ← θ − h·(∇L + 2μ·H∇L),       μ = h/4 when ``coeff=None``,

    and with heavy-ball ``momentum`` β > 0 (``torch.optim.SGD``'s form, through
    :func:`implicit_reg.core.updates.sgd_update`; Ghosh, Lyu, Zhang & Wang, ICLR 2023,
    arXiv 2302.00849):

        d = ∇L + 2μ·H∇L,   b ← β·b + d (b = d at the first step),   θ ← θ − h·b,
        μ = h(1+β)/(4(1−β)²) when ``coeff=None``
        (:func:`implicit_reg.core.modified_equations.heavy_ball_coeff`),

    the coefficient of heavy ball's own implicit modified loss: GD+momentum follows
    the flow of L + μ‖∇L‖² at the effective step h/(1−β), so this default makes that
    implicit term explicit once more, as μ = h/4 does for GD (β = 0 gives h/4).

    so with the default the step is GD on the IGR modified loss
    L + (h/4)‖∇L‖², whose gradient is ∇L + (h/2)·H∇L. With several param
    groups the regularizer is Σ_j μ_j‖∇_{θ_j}L‖² and the gradient is
    ∇L + 2H(μ ⊙ ∇L), where μ ⊙ g scales group j's block of g by μ_j. A
    group with ``coeff=None`` reads its *current* lr at every step, so an lr
    scheduler changes μ = h/4 with h. μ multiplies the unnormalised ‖∇L‖²;
    the paper's rate is λ = μ·m over m parameters (see
    :func:`implicit_reg.core.modified_gradient.paper_rate_from_coeff`). The
    step itself is :func:`implicit_reg.core.updates.egr_update`.

    Methods:
        ``"exact"``: H(μ⊙g) by double backward through
            :func:`implicit_reg.core.hvp.grad_and_hvp`: one forward, one backward
            that records its graph, one backward through that graph.
        ``"finite_difference"``: H v ≈ ‖v‖·[∇L(θ + r·v/‖v‖) − ∇L(θ)]/r with
            v = μ⊙g: two plain gradient evaluations, no second-order graph.
            ε = r/‖v‖ is scaled so that the perturbation has length r
            (``fd_radius``; default √ε of the dtype,
            :func:`implicit_reg.core.modified_gradient.default_fd_radius`). θ is
            restored bit for bit (copied back, not θ + δ − δ). Meant for
            smooth activations: on ReLU networks the perturbation crosses
            activation kinks and no radius is safe (measured errors in
            ``docs/optimizers.md``); use ``"exact"`` there.

    Ways to call ``step`` (all give the same step; see ``docs/optimizers.md``):

    1. ``step(closure)``, the closure returning the loss **without**
       ``backward()``; EGR differentiates it itself.
    2. ``step(closure)`` with a torch-style closure that calls
       ``loss.backward(create_graph=True)`` (what Lightning's automatic
       optimization runs once ``LightningModule.backward`` is overridden to
       pass ``create_graph=True``); ``.grad`` then carries the graph.
    3. ``loss.backward(create_graph=True)`` first, then ``step()`` with no
       closure (the convention of AdaHessian-style optimizers).
    4. ``step(chunks=[(w_c, closure_c), ...])``: the loss split into chunks,
       each closure returning its chunk's *mean* loss without backward,
       weights w_c = n_c/N summing to 1. ``penalty="full"`` (default) gives
       the same step as the unchunked loss (two passes,
       :func:`implicit_reg.core.modified_gradient.egr_direction_chunked`);
       ``penalty="per_chunk"`` the micro-batch penalty Σ_c w_c μ‖∇L_c‖² of
       Smith et al. (ICLR 2021).

    A gradient without its graph (a closure or a prior ``backward()``
    without ``create_graph=True``) is a ``ValueError`` with ``"exact"``,
    never a silent first-order step. (A loss linear in every parameter has
    no graph either; EGR is then GD, use :class:`GD`.) Whatever the form,
    ``p.grad`` holds the plain, detached gradient ∇L(θ) at the pre-step θ
    after the step (the graph a ``create_graph`` backward left in ``.grad``
    is released), and ``step`` returns the loss at that θ (detached; None in
    form 3).

    ``"finite_difference"`` takes forms 1, 2 (with or without
    ``create_graph``) and 4 with ``penalty="full"``; it calls the closure
    twice: both calls see the same global RNG state (same dropout masks),
    the RNG state afterwards is the one after the first call, and when
    ``module`` is given its buffers (BatchNorm running statistics) are
    restored after the second call, so one step updates them once, as one
    torch step would. Without ``module`` such buffers are updated twice.

    Every setting (``lr``, ``coeff``, ``momentum``, ``method``, ``fd_radius``) is
    read from the param groups at each step, so ``load_state_dict`` restores them
    (and ``state[p]["momentum_buffer"]``, with β > 0); ``method`` and ``fd_radius``
    must agree across groups.

    Args:
        params: parameters or param groups; a group may set its own ``lr``
            and ``coeff``.
        lr: step size h ≥ 0.
        coeff: μ ≥ 0, or None for μ = h(1+β)/(4(1−β)²): h/4 (the IGR
            coefficient) without momentum.
        method: ``"exact"`` or ``"finite_difference"`` (shared by all groups).
        fd_radius: perturbation length r > 0 for finite differences, or None
            for the dtype's default (shared by all groups).
        module: the model the closure evaluates; its buffers are protected
            during the second finite-difference evaluation.
        momentum: heavy-ball β in [0, 1) (per group).

    Example::

        opt = EGR(model.parameters(), lr=0.1)            # μ = h/4
        for _ in range(steps):
            opt.step(lambda: loss_fn(model(x), y))       # no backward()

        hb = EGR(model.parameters(), lr=0.1, momentum=0.9)   # μ = 0.1·1.9/(4·0.01)
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        coeff: float | None = None,
        method: str = "exact",
        fd_radius: float | None = None,
        module: nn.Module | None = None,
        momentum: float = 0.0,
    ) -> None:
        if coeff is not None:
            _check_nonneg("coeff", coeff)
        _check_momentum(momentum)
        _check_egr_method(method)
        _check_fd_radius(fd_radius)
        if module is not None and not isinstance(module, nn.Module):
            raise ValueError(f"module must be an nn.Module or None, got {type(module).__name__}")
        defaults = {
            "lr": _check_lr(lr),
            "coeff": coeff,
            "method": method,
            "fd_radius": fd_radius,
            "momentum": float(momentum),
        }
        super().__init__(params, defaults)
        self._module = module

    def add_param_group(self, param_group: dict) -> None:
        _add_checked_group(self, param_group, self._check_group)

    def _check_group(self, group: dict) -> None:
        _check_lr(group["lr"])
        if group["coeff"] is not None:
            _check_nonneg("coeff", group["coeff"])
        _check_egr_method(group["method"])
        _check_fd_radius(group["fd_radius"])
        _check_momentum(group["momentum"])
        first = self.param_groups[0]
        for key in ("method", "fd_radius"):
            if group[key] != first[key]:
                raise ValueError(
                    f"all param groups of one EGR share {key}={first[key]!r}; "
                    f"a group set {key}={group[key]!r} (use a second optimizer instead)"
                )

    def _shared(self, key: str):
        """``method`` or ``fd_radius``, read from the groups (as loaded), which must agree."""
        values = {repr(g[key]) for g in self.param_groups}
        if len(values) > 1:
            raise ValueError(f"all param groups of one EGR share {key}; got {sorted(values)}")
        return self.param_groups[0][key]

    @staticmethod
    def _coeff(group: dict) -> float:
        """μ of a group: its ``coeff``, or h(1+β)/(4(1−β)²) at its current lr (h/4 at β = 0)."""
        if group["coeff"] is not None:
            return group["coeff"]
        lr = group["lr"]
        return heavy_ball_coeff(lr, group.get("momentum", 0.0)) if lr > 0 else 0.0

    def _gather(self) -> tuple[list[Tensor], list[float]]:
        params, coeffs = [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    coeffs.append(self._coeff(group))
        return params, coeffs

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        *,
        chunks: Sequence[tuple[float, Callable[[], Tensor]]] | None = None,
        penalty: str = "full",
    ) -> Tensor | None:
        """One EGR step, θ ← θ − h·(g + 2H(μ⊙g)); the ways to call it are in the class doc."""
        if penalty not in EGR_PENALTIES:
            raise ValueError(
                f"unknown EGR penalty {penalty!r}; choose one of {', '.join(EGR_PENALTIES)}"
            )
        if chunks is not None and closure is not None:
            raise ValueError("give EGR.step a closure or chunks, not both")
        if penalty != "full" and chunks is None:
            raise ValueError(f"penalty={penalty!r} needs chunks=[(weight, closure), ...]")
        method = self._shared("method")
        params, coeffs = self._gather()
        if not params:
            if closure is None:
                return None
            with torch.no_grad():
                return closure()
        if chunks is not None:
            chunks = list(chunks)
            if method == "exact":
                loss, g, hv = egr_direction_chunked(
                    [(w, lambda _, fn=fn: fn()) for w, fn in chunks],
                    params,
                    coeffs,
                    penalty=penalty,
                )
            elif penalty == "full":
                loss, g, hv = self._finite_difference(
                    lambda: _chunks_grad(chunks, params), params, coeffs
                )
            else:
                raise ValueError(
                    "penalty='per_chunk' needs method='exact' (one HVP per chunk and gradient)"
                )
        elif method == "exact":
            loss, g, hv = self._exact(closure, params, coeffs)
        else:
            if closure is None:
                raise ValueError(
                    "EGR(method='finite_difference') needs a closure: it evaluates the "
                    "gradient a second time at θ + r·v/‖v‖"
                )
            loss, g, hv = self._finite_difference(
                lambda: _closure_grad(closure, params), params, coeffs
            )
        with torch.no_grad():
            index = {id(p): i for i, p in enumerate(params)}
            for group in self.param_groups:
                ids = [index[id(p)] for p in group["params"] if id(p) in index]
                beta = group.get("momentum", 0.0)  # absent in states saved before it existed
                if beta == 0:
                    egr_update(
                        [params[i] for i in ids],
                        [g[i] for i in ids],
                        [hv[i] for i in ids],
                        lr=group["lr"],
                    )
                    continue
                ps = [params[i] for i in ids]
                bufs = [self.state[p].get("momentum_buffer") for p in ps]
                sgd_update(
                    ps,
                    [g[i] + 2.0 * hv[i] for i in ids],
                    bufs,
                    lr=group["lr"],
                    momentum=beta,
                    dampening=0.0,
                    nesterov=False,
                    weight_decay=0.0,
                )  # heavy ball on the EGR direction, in torch's SGD form
                for p, b in zip(ps, bufs):
                    self.state[p]["momentum_buffer"] = b
            for p, gi in zip(params, g):
                p.grad = gi  # the plain gradient, detached: releases any create_graph graph
        return None if loss is None else loss.detach()

    def _exact(self, closure, params, coeffs):
        mus = coeffs
        if closure is None:  # form 3: the caller ran backward(create_graph=True)
            grads = [p.grad for p in params]
            if all(x is None for x in grads):
                raise ValueError(f"EGR.step() without a closure found no .grad. {_WAYS}")
            return None, *self._from_graph(grads, params, mus)
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        grads = [p.grad for p in params]
        if any(x is not None for x in grads):  # form 2: torch-style closure
            return loss, *self._from_graph(grads, params, mus)
        _check_loss(loss)  # form 1: EGR differentiates the loss
        g, hv = egr_direction_exact(lambda _: loss, params, mus)
        return loss, g, hv

    @staticmethod
    def _from_graph(grads, params, mus):
        if not any(x is not None and x.requires_grad for x in grads):
            raise ValueError(
                f"EGR(method='exact'): .grad has no graph (backward() ran without "
                f"create_graph=True), so H(μ⊙g) cannot be formed. {_WAYS}"
            )
        grads = [torch.zeros_like(p) if x is None else x for p, x in zip(params, grads)]
        v = [m * x.detach() for m, x in zip(mus, grads)]
        hv = hvp_of_graph(grads, params, v)
        for p in params:
            p.grad = None  # drop the graph before the update
        return tuple(x.detach() for x in grads), hv

    def _finite_difference(self, evaluate, params, coeffs):
        """(L, g, H(μ⊙g)) by a forward difference; ``evaluate()`` returns (L, ∇L) at the current θ."""
        devices = sorted({p.device for p in params if p.device.type == "cuda"}, key=str)
        rng_before = _rng_state(devices)
        loss, g = evaluate()
        rng_after = _rng_state(devices)
        v = tuple(m * x for m, x in zip(coeffs, g))
        radius = self._shared("fd_radius") or default_fd_radius(params[0].dtype)
        saved = [p.detach().clone() for p in params]
        module = self._module
        buffers = [b.detach().clone() for b in module.buffers()] if module is not None else []

        def grad_at(shifted):
            with torch.no_grad():
                for p, s in zip(params, shifted):
                    p.copy_(s)
            _set_rng_state(rng_before, devices)  # same dropout masks as the first call
            return evaluate()[1]

        try:
            hv = finite_difference_hvp(grad_at, params, g, v, radius=radius)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)  # exact restore, not θ + δ − δ
                if module is not None:  # undo the second call's running-statistics update
                    for b, s in zip(module.buffers(), buffers):
                        b.copy_(s)
            _set_rng_state(rng_after, devices)
        return loss, g, hv


def _chunks_grad(chunks, params) -> tuple[Tensor, tuple[Tensor, ...]]:
    """(Σ_c w_c L_c, Σ_c w_c ∇L_c) from (weight, closure) chunks returning mean losses."""
    check_chunks(chunks)
    return summed_loss_and_grad(((lambda w=w, fn=fn: w * fn()) for w, fn in chunks), params)


def _check_momentum(momentum) -> None:
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0 <= momentum < 1
    ):
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")


def _check_egr_method(method: str) -> None:
    if method not in EGR_METHODS:
        raise ValueError(f"unknown EGR method {method!r}; choose one of {', '.join(EGR_METHODS)}")


def _check_fd_radius(fd_radius: float | None) -> None:
    if fd_radius is not None and (
        isinstance(fd_radius, bool)
        or not isinstance(fd_radius, (int, float))
        or not math.isfinite(fd_radius)
        or fd_radius <= 0
    ):
        raise ValueError(f"fd_radius must be a finite number > 0, or None, got {fd_radius!r}")


def _check_loss(loss) -> None:
    check_scalar_loss(loss, "the closure's loss")


def _closure_grad(closure, params) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Call the closure and return (loss, ∇loss); accepts torch-style closures."""
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = closure()
    if any(p.grad is not None for p in params):  # the closure called backward()
        grads = tuple(torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params)
    else:
        _check_loss(loss)
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
