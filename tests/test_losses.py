"""Losses: each against an explicit float64 formula."""

from __future__ import annotations

import pytest
import torch

from implicit_reg.workloads.losses import LOSSES, make_loss


def test_mse_sum_is_the_per_sample_squared_distance_to_the_one_hot_target():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    expected = 0.0
    for i in range(6):  # (1/n) Σ_i Σ_c (f_c(x_i) − [y_i = c])²
        for c in range(4):
            expected += (float(out[i, c]) - (1.0 if int(y[i]) == c else 0.0)) ** 2
    expected /= 6
    loss = make_loss("mse_sum", num_classes=4)
    assert float(loss(out, y)) == pytest.approx(expected, rel=1e-12)
    # k times the mean-over-outputs squared loss
    assert float(loss(out, y)) == pytest.approx(4 * float(make_loss("mse", num_classes=4)(out, y)))
    # float targets are used as they are
    t = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    assert float(loss(out, t)) == pytest.approx(float(((out - t) ** 2).sum() / 6), rel=1e-12)


def test_mse_sum_gradient_is_2_residual_over_n():
    out = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 0])
    make_loss("mse_sum", num_classes=2)(out, y).backward()
    residual = out.detach() - torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(out.grad, 2 * residual / 2)


def test_losses_registry_and_unknown_name():
    assert set(LOSSES) == {"cross_entropy", "mse", "mse_sum"}
    for name in LOSSES:
        make_loss(name, num_classes=3)
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*mse_sum"):
        make_loss("hinge", num_classes=3)
