"""Mean-reduced losses by name: cross-entropy, and squared loss on one-hot or real targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "OneHotMSELoss", "OneHotSumMSELoss", "RegressionMSELoss", "make_loss"]

#: the loss names a config may use
LOSSES = ("cross_entropy", "mse", "mse_sum")


class OneHotMSELoss(nn.Module):
    """Squared loss on one-hot targets, mean over samples *and* classes:

        L = (1/(n·k)) Σ_i ‖f(x_i) − e_{y_i}‖²,

    i.e. ``F.mse_loss(out, one_hot(y))`` (Belkin et al. 2019 train with the
    squared loss on one-hot targets). Float targets are used as they are.
    """

    #: ∇²_f of n·L is (2/k)·I: the probes' R-operator takes it in closed form
    #: (:func:`implicit_reg.probes.rop.output_hessian_form`)
    rop_output_hessian = ("scaled_mean", 2.0)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        if y.dtype in (torch.long, torch.int32, torch.int64):
            y = F.one_hot(y, self.num_classes).to(out.dtype)
        return F.mse_loss(out, y.reshape(out.shape))


class OneHotSumMSELoss(nn.Module):
    """Squared loss summed over the outputs, mean over samples:

        L = (1/n) Σ_i ‖f(x_i) − y_i‖²,   y_i = e_{y_i} for class labels,

    k times :class:`OneHotMSELoss`. This is the loss of Belkin, Hsu, Ma & Mandal
    (PNAS 2019, Sec. "Neural networks"): each of the k outputs carries a full
    unit of loss, so the step size acts on the sum, not on a 1/k share of it.
    Float targets (one-hot or real) are used as they are.
    """

    #: ∇²_f of n·L is 2·I (see :func:`implicit_reg.probes.rop.output_hessian_form`)
    rop_output_hessian = ("scaled", 2.0)

    def __init__(self, num_classes: int | None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        if y.dtype in (torch.long, torch.int32, torch.int64):
            if self.num_classes is None:
                raise ValueError("class-index targets need num_classes")
            y = F.one_hot(y, self.num_classes).to(out.dtype)
        y = y.reshape(out.shape)
        return (out - y).pow(2).reshape(len(out), -1).sum(1).mean()


class RegressionMSELoss(nn.Module):
    """``F.mse_loss`` with the target reshaped to the output's shape."""

    #: ∇²_f of n·L is (2/k)·I (see :func:`implicit_reg.probes.rop.output_hessian_form`)
    rop_output_hessian = ("scaled_mean", 2.0)

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out, y.reshape(out.shape))


def make_loss(name: str, *, num_classes: int | None) -> nn.Module:
    """The loss ``name`` from :data:`LOSSES` for a data set with ``num_classes``
    classes (None: real-valued targets): "cross_entropy", "mse" (mean over samples
    and outputs) or "mse_sum" (summed over the outputs, mean over samples)."""
    if name == "cross_entropy":
        if num_classes is None:
            raise ValueError("loss 'cross_entropy' needs class labels; use 'mse' for real targets")
        return nn.CrossEntropyLoss()
    if name == "mse":
        return RegressionMSELoss() if num_classes is None else OneHotMSELoss(num_classes)
    if name == "mse_sum":
        return OneHotSumMSELoss(num_classes)
    raise ValueError(f"unknown loss {name!r}; choose one of " + ", ".join(LOSSES))
