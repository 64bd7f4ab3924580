"""Implicit regularizers written as explicit, differentiable loss terms.

Add them to any loss and train with any torch optimizer (Adam included):

    loss = loss_fn(model(x), y)
    total = loss + gradient_norm_penalty(loss, model.parameters(), coeff=lr / 4)
    total.backward()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["gradient_norm_penalty", "sgd_implicit_regularizer", "momentum_implicit_factor"]


def _trainable(params: Iterable[Tensor]) -> list[Tensor]:
    ps = [p for p in params if p.requires_grad]
    if not ps:
        raise ValueError("no parameter requires grad")
    return ps


def gradient_norm_penalty(loss: Tensor, params: Iterable[Tensor], coeff: float = 1.0) -> Tensor:
    """μ‖∇_θ L‖², differentiable in θ (built with ``create_graph=True``).

    With μ = h/4 this is the implicit gradient regularizer of GD
    (Barrett & Dherin, ICLR 2021); its gradient is 2μ·H∇L.
    """
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss must be a scalar tensor")
    if not math.isfinite(coeff) or coeff < 0:
        raise ValueError(f"coeff must be a finite number >= 0, got {coeff!r}")
    ps = _trainable(params)
    grads = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
    sq = sum((g * g).sum() for g in grads if g is not None)
    return coeff * sq if torch.is_tensor(sq) else loss.new_zeros(())


def sgd_implicit_regularizer(
    batch_losses: Sequence[Tensor], params: Iterable[Tensor], lr: float
) -> Tensor:
    """(h/4m)·Σ_k ‖∇L_k‖² over the m minibatch losses L_k of one epoch.

    Smith, Dherin, Barrett & De, "On the Origin of Implicit Regularization in
    Stochastic Gradient Descent", ICLR 2021 (arXiv 2101.12176): the mean SGD
    iterate over an epoch follows the modified loss L + (h/4m)·Σ_k‖∇L_k‖²,
    which equals L + (h/4)‖∇L‖² + (h/4m)·Σ_k‖∇L_k − ∇L‖² when L is the mean of
    the L_k. A training loop that adds it explicitly one minibatch at a time
    adds (h/4)‖∇L_k‖² at step k: the epoch average of those is this term.
    """
    if len(batch_losses) == 0:
        raise ValueError("need at least one minibatch loss")
    ps = _trainable(params)
    m = len(batch_losses)
    total = sum(gradient_norm_penalty(lk, ps, 1.0) for lk in batch_losses)
    return (lr / (4.0 * m)) * total


def momentum_implicit_factor(beta: float) -> float:
    """(1+β)/(1−β): how much heavy-ball momentum β strengthens the implicit term.

    Ghosh, Lyu, Zhang & Lee, "Implicit regularization in Heavy-ball momentum
    accelerated stochastic gradient descent", ICLR 2023 (arXiv 2302.00849):
    the implicit gradient regularizer of GD with momentum β is stronger than
    that of GD by this factor.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"momentum beta must be in [0, 1), got {beta!r}")
    return (1 + beta) / (1 - beta)
