"""SAM, ASAM and the gradient-norm penalty as ``torch.optim`` optimizers wrapping a base optimizer.

Each step evaluates the gradient twice, at θ and at θ + e, hands the base
optimizer (any ``torch.optim.Optimizer`` class, e.g. :class:`~implicit_reg.core.optim.SGD`)
the gradient g̃ of :mod:`implicit_reg.core.sharpness`, and lets it step from θ:

- :class:`SAM` (Foret et al., ICLR 2021): e = ρ·g/‖g‖, g̃ = ∇L(θ + e);
  first order: GD on L + ρ‖∇L‖.
- :class:`ASAM` (Kwon et al., ICML 2021): e = ρ·T²g/‖Tg‖, T = |θ| + η.
- :class:`GradNormPenalty` (Zhao, Zhang & Hu, ICML 2022): g̃ = (1 − α)·g +
  α·∇L(θ + r·g/‖g‖), the finite-difference gradient of L + λ‖∇L‖ with λ = α·r.

Relation to EGR (GD on L + μ‖∇L‖², gradient g + 2μHg): all three add the
same direction H g to first order, weighted ρ/‖g‖ (SAM), λ/‖g‖ (penalty)
instead of EGR's 2μ; see ``docs/optimizers.md``.

Two ways to call them, as with davda54/sam:

1. ``opt.step(closure)`` with a torch-style closure (``zero_grad()``,
   ``loss.backward()``, ``return loss``; what Lightning's automatic
   optimization passes). A closure that returns the loss without
   ``backward()`` works too. The closure runs twice per step: both calls
   see the same global RNG state (same dropout masks), the RNG state
   afterwards is the one after the first call, and when ``module`` is given
   its buffers (BatchNorm running statistics) are restored after the second
   call, so they are updated once per step.
2. ``loss.backward(); opt.first_step(zero_grad=True); loss_fn(...).backward();
   opt.second_step(zero_grad=True)``: the caller owns RNG and BatchNorm care.

``step`` returns the loss at θ (the first call's); after the step ``.grad``
holds g̃, the gradient the base optimizer stepped on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .optim import _rng_state, _set_rng_state
from .sharpness import penalty_gradient, sam_perturbation

__all__ = ["SAM", "ASAM", "GradNormPenalty"]


def _check(name: str, value, *, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class SAM(Optimizer):
    r"""Sharpness-aware minimization around a base optimizer.

    Foret, Kleiner, Mobahi & Neyshabur, ICLR 2021 (arXiv 2010.01412):

        e = ρ·g/‖g‖,   g̃ = ∇L(θ + e),   then the base optimizer steps from θ with g̃.

    First order: g̃ = g + ρ·Hg/‖g‖ = ∇(L + ρ‖∇L‖). With ``adaptive=True``
    the ball is ASAM's (Kwon et al. 2021): e = ρ·T²g/‖Tg‖, T = |θ| + η.
    ``alpha`` < 1 mixes in the gradient at θ, g̃ = (1 − α)g + α∇L(θ + e)
    (Zhao, Zhang & Hu 2022; :class:`GradNormPenalty`). ρ = 0 is the base
    optimizer exactly.

    Args:
        params: parameters or param groups; a group may set its own ``rho``,
            ``alpha``, ``adaptive``, ``eta`` and the base optimizer's settings.
        base_optimizer: an optimizer *class* (``torch.optim.SGD``,
            :class:`~implicit_reg.core.optim.SGD`, ...), built on the same
            param groups with ``**kwargs``.
        rho: radius ρ ≥ 0 of the ascent step.
        adaptive: ASAM's scaled ball.
        eta: η ≥ 0 of ASAM's T = |θ| + η.
        alpha: α ≥ 0, the weight of ∇L(θ + e).
        module: the model the closure evaluates; its buffers are restored
            after the second evaluation.
        **kwargs: the base optimizer's arguments (``lr``, ``momentum``, ...).

    ``state_dict`` is the base optimizer's (its groups carry ρ and friends),
    so ``load_state_dict`` restores both.

    Example::

        opt = SAM(model.parameters(), SGD, rho=0.05, lr=0.1, momentum=0.9)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        *,
        adaptive: bool = False,
        eta: float = 0.0,
        alpha: float = 1.0,
        module: nn.Module | None = None,
        **kwargs,
    ) -> None:
        if isinstance(base_optimizer, Optimizer) or not (
            isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)
        ):
            raise ValueError(
                "base_optimizer must be an optimizer class such as torch.optim.SGD (its "
                f"arguments go in **kwargs), got {base_optimizer!r}"
            )
        if module is not None and not isinstance(module, nn.Module):
            raise ValueError(f"module must be an nn.Module or None, got {type(module).__name__}")
        defaults = {
            "rho": _check("rho", rho),
            "adaptive": bool(adaptive),
            "eta": _check("eta", eta),
            "alpha": _check("alpha", alpha),
            **kwargs,
        }
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._module = module

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "base_optimizer"):
            for key in ("rho", "adaptive", "eta", "alpha"):
                param_group.setdefault(key, self.defaults[key])
            self.base_optimizer.add_param_group(param_group)
            return
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in ("rho", "eta", "alpha"):
            _check(key, group[key])

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups

    # ------------------------------------------------------------ two-step API
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """θ ← θ + e from the gradient in ``.grad`` (climb to the worst point in the ball)."""
        params, grads, rhos, etas = [], [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    grads.append(p.grad)
                    rhos.append(group["rho"])
                    etas.append(group["eta"] if group["adaptive"] else None)
        e = sam_perturbation(params, grads, rhos, etas)
        for p, g, ei in zip(params, grads, e):
            state = self.state[p]
            state["theta"] = p.detach().clone()
            state["grad"] = g.detach().clone()
            p.add_(ei)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Back to θ (copied, not θ + e − e) and the base step with g̃ from ``.grad`` at θ + e."""
        if not any("theta" in self.state[p] for g in self.param_groups for p in g["params"]):
            raise ValueError("second_step() without first_step(): call first_step() first")
        self._restore(set_grad=True)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _restore(self, set_grad: bool) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "theta" not in state:
                    continue
                theta, g = state.pop("theta"), state.pop("grad")
                if set_grad:
                    g_e = torch.zeros_like(p) if p.grad is None else p.grad
                    alpha = 1.0 if group["rho"] == 0 else group["alpha"]
                    p.grad = (
                        g if group["rho"] == 0 else penalty_gradient([g], [g_e], alpha=alpha)[0]
                    )
                p.copy_(theta)
                if not state:
                    del self.state[p]

    # ------------------------------------------------------------ closure API
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One step from a closure (torch-style, or returning the loss without backward)."""
        if closure is None:
            raise ValueError(
                f"{type(self).__name__}.step needs a closure (it evaluates the gradient twice, at "
                "θ and at θ + e), or call first_step() and second_step() around two backward()s"
            )
        params = [p for g in self.param_groups for p in g["params"]]
        devices = sorted({p.device for p in params if p.device.type == "cuda"}, key=str)
        rng_before = _rng_state(devices)
        loss = _gradient(closure, params)
        rng_after = _rng_state(devices)
        module = self._module
        buffers = [b.detach().clone() for b in module.buffers()] if module is not None else []
        self.first_step(zero_grad=True)
        try:
            _set_rng_state(rng_before, devices)  # same dropout masks at θ + e
            _gradient(closure, params)
        except BaseException:
            with torch.no_grad():
                self._restore(set_grad=False)
            raise
        finally:
            with torch.no_grad():
                if module is not None:  # BatchNorm statistics: updated once per step
                    for b, s in zip(module.buffers(), buffers):
                        b.copy_(s)
            _set_rng_state(rng_after, devices)
        self.second_step()
        return loss.detach() if isinstance(loss, Tensor) else loss


def _gradient(closure, params) -> Tensor:
    """Run the closure; backward() its loss if the closure did not."""
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = closure()
    if all(p.grad is None for p in params):
        if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.requires_grad:
            raise ValueError(
                "the closure must call loss.backward() or return the scalar loss tensor with "
                f"its graph, got {type(loss).__name__}"
            )
        loss.backward()
    return loss


class ASAM(SAM):
    """Adaptive SAM (Kwon, Kim, Park & Choi, ICML 2021, arXiv 2102.11600).

        e = ρ·T²g/‖Tg‖,  T = |θ| + η,  g̃ = ∇L(θ + e)

    the SAM step in the scale-invariant ball of T⁻¹θ; first order GD on
    L + ρ‖T∇L‖. Defaults ρ = 0.5, η = 0.01 (the paper's CIFAR setting).
    Arguments as :class:`SAM`.
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer: type[Optimizer],
        rho: float = 0.5,
        *,
        eta: float = 0.01,
        module: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            params, base_optimizer, rho, adaptive=True, eta=eta, module=module, **kwargs
        )


class GradNormPenalty(SAM):
    """The gradient-norm penalty of Zhao, Zhang & Hu (ICML 2022, arXiv 2202.03599).

    GD (or any base optimizer) on L + λ‖∇L‖ through the finite-difference
    gradient

        g̃ = (1 − α)·∇L(θ) + α·∇L(θ + r·g/‖g‖),   α = λ/r,

    which is g + λ·Hg/‖g‖ to first order. α = 1 is SAM with ρ = r. ``rho``
    is r; defaults r = 0.05, α = 0.8. Arguments as :class:`SAM`.
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        *,
        alpha: float = 0.8,
        module: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(params, base_optimizer, rho, alpha=alpha, module=module, **kwargs)
