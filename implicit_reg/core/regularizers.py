"""Implicit regularizers written as explicit, differentiable loss terms.

Add them to any loss and train with any torch optimizer (Adam included):

    loss = loss_fn(model(x), y)
    total = loss + gradient_norm_penalty(loss, model.parameters(), coeff=lr / 4)
    total.backward()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .hvp import check_scalar_loss
from .optim import _check_nonneg

__all__ = ["gradient_norm_penalty", "sgd_implicit_regularizer", "momentum_implicit_factor"]


def _trainable(params: Iterable[Tensor]) -> list[Tensor]:
    ps = [p for p in params if p.requires_grad]
    if not ps:
        raise ValueError(
            "params has no tensor with requires_grad=True; pass the trainable parameters"
        )
    return ps


def gradient_norm_penalty(loss: Tensor, params: Iterable[Tensor], coeff: float = 1.0) -> Tensor:
    """μ‖∇_θ L‖², differentiable in θ (built with ``create_graph=True``).

    With μ = h/4 this is the implicit gradient regularizer of GD
    (Barrett & Dherin, ICLR 2021); its gradient is 2μ·H∇L, so
    ``(loss + gradient_norm_penalty(loss, ps, μ)).backward()`` leaves
    g + 2μHg in ``.grad``, the EGR gradient, for any optimizer (Adam
    included). Costs one backward with graph; the final ``backward()`` is
    the double backward.
    """
    check_scalar_loss(loss, "loss")
    coeff = _check_nonneg("coeff", coeff)
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
        raise ValueError("batch_losses is empty; need the loss of at least one minibatch")
    lr = _check_nonneg("lr", lr)
    ps = _trainable(params)
    m = len(batch_losses)
    total = sum(gradient_norm_penalty(lk, ps, 1.0) for lk in batch_losses)
    return (lr / (4.0 * m)) * total


def momentum_implicit_factor(beta: float) -> float:
    """(1+β)/(1−β): how much heavy-ball momentum β strengthens the implicit term.

    Ghosh, Lyu, Zhang & Wang, "Implicit regularization in Heavy-ball momentum
    accelerated stochastic gradient descent", ICLR 2023 (arXiv 2302.00849):
    the implicit regularizer of GD with heavy-ball momentum (GD+M) is
    stronger than that of GD by the factor (1+β)/(1−β).

    Precisely (backward error analysis, checked in
    ``tests/test_regularizers.py`` against the exact iteration on a
    quadratic): GD+M, θ_{n+1} = θ_n − h∇L(θ_n) + β(θ_n − θ_{n−1}) (which is
    ``torch.optim.SGD(lr=h, momentum=β)``), moves per step like GD with the
    effective step h_eff = h/(1−β) on

        L + (1+β)/(1−β) · (h_eff/4)·‖∇L‖² = L + h(1+β)/(4(1−β)²)·‖∇L‖²,

    with a local error O(h³). So the factor compares GD+M with GD at the same
    effective step h/(1−β); at the same raw h the coefficient is
    (1+β)/(1−β)² times GD's h/4.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"momentum beta must be a number in [0, 1), got {beta!r}")
    return (1 + beta) / (1 - beta)
