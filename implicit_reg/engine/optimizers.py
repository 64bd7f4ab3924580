"""The one place that turns a :class:`~implicit_reg.engine.config.RunConfig` into an optimizer.

``optimizer`` names a torch-style optimizer of :mod:`implicit_reg.core.optim`:

- ``"gd"``: :class:`~implicit_reg.core.optim.GD`, θ ← θ − h∇L, when there is
  no momentum and no weight decay; otherwise :class:`~implicit_reg.core.optim.SGD`
  on the full batch (``torch.optim.SGD``'s update).
- ``"sgd"``: :class:`~implicit_reg.core.optim.SGD` on minibatches.
- ``"egr"``: :class:`~implicit_reg.core.optim.EGR`, GD on L + μ‖∇L‖² with
  μ = ``egr_coeff`` (None: h/4, Barrett & Dherin 2021).
- ``"sam"``, ``"asam"``, ``"penalty"``: :class:`~implicit_reg.core.sam.SAM`,
  :class:`~implicit_reg.core.sam.ASAM`, :class:`~implicit_reg.core.sam.GradNormPenalty`
  with radius ``rho`` (``asam_eta``, ``sam_alpha``) around GD, or around SGD when
  momentum or weight decay is set; trained serially (the ensemble has no such step).
- ``"adam"``: :class:`~implicit_reg.core.optim.Adam` with β₁ = ``adam_beta1``,
  β₂ = ``adam_beta2``, ε = ``adam_eps`` (``adam_eps_placement``: outside the root as
  torch, or inside), ``adam_bias_correction`` and ``weight_decay`` (L2); full batch,
  or minibatches with ``batch_size``. With the defaults it is ``torch.optim.Adam``'s
  step; trained serially (the ensemble has no Adam step).

:func:`update_rule` names the same choice for the vectorized ensemble, which
applies the update functions of :mod:`implicit_reg.core.updates` to stacked tensors.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..core.optim import EGR, GD, SGD, Adam
from ..core.sam import ASAM, SAM, GradNormPenalty
from .config import OPTIMIZERS, SHARPNESS_OPTIMIZERS, RunConfig

__all__ = ["OPTIMIZERS", "SHARPNESS_OPTIMIZERS", "build_optimizer", "update_rule"]


def update_rule(config: RunConfig) -> str:
    """``"gd"``, ``"sgd"`` or ``"egr"``: the update :func:`build_optimizer` applies
    (a sharpness-aware optimizer's own name or ``"adam"``, which no ensemble step implements)."""
    if config.optimizer in ("egr", "adam", *SHARPNESS_OPTIMIZERS):
        return config.optimizer
    if config.optimizer == "gd" and config.momentum == 0 and config.weight_decay == 0:
        return "gd"
    return "sgd"  # SGD's update; full batch when batch_size is None


def build_optimizer(config: RunConfig, params: list[Tensor], model: nn.Module | None = None):
    """The torch optimizer for ``config.optimizer`` over ``params`` (``model``: EGR's module,
    whose train/eval state and RNG its closure evaluations respect)."""
    rule = update_rule(config)
    if rule in SHARPNESS_OPTIMIZERS:
        return _sharpness_optimizer(config, params, model)
    if rule == "egr":
        return EGR(
            params, lr=config.lr, coeff=config.egr_coeff, method=config.egr_method, module=model
        )
    if rule == "adam":
        return Adam(
            params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps, weight_decay=config.weight_decay,
            bias_correction=config.adam_bias_correction,
            eps_placement=config.adam_eps_placement,
        )  # fmt: skip
    if rule == "gd":
        return GD(params, lr=config.lr)
    return SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def _sharpness_optimizer(config: RunConfig, params: list[Tensor], model: nn.Module | None):
    """SAM/ASAM/penalty around GD (or SGD with its momentum and weight decay)."""
    plain = config.momentum == 0 and config.weight_decay == 0
    base = {"lr": config.lr} if plain else {
        "lr": config.lr, "momentum": config.momentum, "nesterov": config.nesterov,
        "weight_decay": config.weight_decay,
    }  # fmt: skip
    cls, extra = {
        "sam": (SAM, {}),
        "asam": (ASAM, {} if config.asam_eta is None else {"eta": config.asam_eta}),
        "penalty": (GradNormPenalty, {} if config.sam_alpha is None else {"alpha": config.sam_alpha}),
    }[config.optimizer]  # fmt: skip
    return cls(params, GD if plain else SGD, config.rho, module=model, **extra, **base)
