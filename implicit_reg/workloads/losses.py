"""Mean-reduced losses by name: cross-entropy, and squared loss on one-hot or real targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "OneHotMSELoss", "RegressionMSELoss", "make_loss"]

#: the loss names a config may use
LOSSES = ("cross_entropy", "mse")


class OneHotMSELoss(nn.Module):
    """Squared loss on one-hot targets, mean over samples *and* classes:

        L = (1/(n·k)) Σ_i ‖f(x_i) − e_{y_i}‖²,

    i.e. ``F.mse_loss(out, one_hot(y))`` (Belkin et al. 2019 train with the
    squared loss on one-hot targets). Float targets are used as they are.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        if y.dtype in (torch.long, torch.int32, torch.int64):
            y = F.one_hot(y, self.num_classes).to(out.dtype)
        return F.mse_loss(out, y.reshape(out.shape))


class RegressionMSELoss(nn.Module):
    """``F.mse_loss`` with the target reshaped to the output's shape."""

    def forward(self, out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out, y.reshape(out.shape))


def make_loss(name: str, *, num_classes: int | None) -> nn.Module:
    """The mean-reduced loss ``name`` ("cross_entropy" or "mse") for a data set with
    ``num_classes`` classes (None: real-valued targets)."""
    if name == "cross_entropy":
        if num_classes is None:
            raise ValueError("loss 'cross_entropy' needs class labels; use 'mse' for real targets")
        return nn.CrossEntropyLoss()
    if name == "mse":
        return RegressionMSELoss() if num_classes is None else OneHotMSELoss(num_classes)
    raise ValueError(f"unknown loss {name!r}; choose one of " + ", ".join(LOSSES))
