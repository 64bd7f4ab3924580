"""The one place that turns a :class:`~implicit_reg.engine.config.RunConfig` into an optimizer.

``optimizer`` names a torch-style optimizer of :mod:`implicit_reg.core.optim`:

- ``"gd"``: :class:`~implicit_reg.core.optim.GD`, θ ← θ − h∇L, when there is
  no momentum and no weight decay; otherwise :class:`~implicit_reg.core.optim.SGD`
  on the full batch (``torch.optim.SGD``'s update).
- ``"sgd"``: :class:`~implicit_reg.core.optim.SGD` on minibatches.
- ``"egr"``: :class:`~implicit_reg.core.optim.EGR`, GD on L + μ‖∇L‖² with
  μ = ``egr_coeff`` (None: h/4, Barrett & Dherin 2021).

:func:`update_rule` names the same choice for the vectorized ensemble, which
applies the update functions of :mod:`implicit_reg.core.optim` to stacked tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..core.optim import EGR, GD, SGD

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

__all__ = ["OPTIMIZERS", "build_optimizer", "update_rule"]

#: the optimizer names a config may use
OPTIMIZERS = ("gd", "sgd", "egr")


def update_rule(config: RunConfig) -> str:
    """``"gd"``, ``"sgd"`` or ``"egr"``: the update :func:`build_optimizer` applies."""
    if config.optimizer == "egr":
        return "egr"
    if config.optimizer == "gd" and config.momentum == 0 and config.weight_decay == 0:
        return "gd"
    return "sgd"  # SGD's update; full batch when batch_size is None


def build_optimizer(config: RunConfig, params: list[Tensor], model: nn.Module | None = None):
    """The torch optimizer for ``config.optimizer`` over ``params`` (``model``: EGR's module,
    whose train/eval state and RNG its closure evaluations respect)."""
    rule = update_rule(config)
    if rule == "egr":
        return EGR(
            params, lr=config.lr, coeff=config.egr_coeff, method=config.egr_method, module=model
        )
    if rule == "gd":
        return GD(params, lr=config.lr)
    return SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
