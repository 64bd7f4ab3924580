"""Explicit forms of the implicit regularizers against independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from implicit_reg.core.objective import trainable_named_params
from implicit_reg.core.optim import SGD
from implicit_reg.core.regularizers import (
    gradient_norm_penalty,
    momentum_implicit_factor,
    sgd_implicit_regularizer,
)

F64 = torch.float64


def _problem(seed=0, n=24):
    """3→8→2 tanh MLP (50 parameters), float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    y = torch.randn(n, 2, generator=gen, dtype=F64)
    return model, x, y


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _flat_fns(model, x, y):
    """Oracle: gradient and Hessian of L on the flattened parameters."""
    named = trainable_named_params(model)
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]

    def flat_loss(t):
        ps = {k: c.reshape(s) for k, c, s in zip(names, t.split(sizes), shapes)}
        return _mse(functional_call(model, ps, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return torch.func.grad(flat_loss)(theta), hessian(flat_loss)(theta)


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_gradient_norm_penalty_value_and_gradient():
    """μ‖∇L‖², and its gradient 2μH∇L (H from torch.func.hessian)."""
    model, x, y = _problem()
    g, H = _flat_fns(model, x, y)
    mu = 0.3
    params = list(model.parameters())
    pen = gradient_norm_penalty(_mse(model(x), y), params, coeff=mu)
    assert float(pen.detach()) == pytest.approx(mu * float(g @ g), rel=1e-13)
    grad_pen = torch.autograd.grad(pen, params)
    torch.testing.assert_close(_flat(grad_pen), 2 * mu * H @ g, rtol=0, atol=1e-13)


def test_gradient_norm_penalty_with_adam_gives_the_egr_gradient():
    """loss + penalty, backward, Adam: ``.grad`` holds g + 2μHg before the step."""
    model, x, y = _problem(seed=1)
    g, H = _flat_fns(model, x, y)
    mu = 0.05
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    loss = _mse(model(x), y)
    (loss + gradient_norm_penalty(loss, model.parameters(), coeff=mu)).backward()
    torch.testing.assert_close(
        _flat([p.grad for p in model.parameters()]), g + 2 * mu * H @ g, rtol=0, atol=1e-13
    )
    before = _flat(model.parameters()).detach().clone()
    opt.step()
    assert not torch.equal(before, _flat(model.parameters()).detach())


def test_sgd_implicit_regularizer_is_smith_et_al_identity():
    """(h/4m)Σ‖∇L_k‖² = (h/4)‖∇L‖² + (h/4m)Σ‖∇L_k − ∇L‖² when L is the mean of
    the L_k (equal-size minibatches), and its gradient is (h/2m)Σ H_k∇L_k."""
    model, x, y = _problem(seed=2, n=24)
    m, h = 4, 0.2
    xs, ys = x.chunk(m), y.chunk(m)
    oracles = [_flat_fns(model, xk, yk) for xk, yk in zip(xs, ys)]
    g_full, _ = _flat_fns(model, x, y)
    torch.testing.assert_close(sum(gk for gk, _ in oracles) / m, g_full, rtol=0, atol=1e-14)

    params = list(model.parameters())
    reg = sgd_implicit_regularizer([_mse(model(xk), yk) for xk, yk in zip(xs, ys)], params, lr=h)
    identity = (h / 4) * float(g_full @ g_full) + (h / (4 * m)) * sum(
        float((gk - g_full) @ (gk - g_full)) for gk, _ in oracles
    )
    assert float(reg.detach()) == pytest.approx(identity, rel=1e-12)
    assert float(reg.detach()) == pytest.approx(
        (h / (4 * m)) * sum(float(gk @ gk) for gk, _ in oracles), rel=1e-12
    )
    grad_reg = torch.autograd.grad(reg, params)
    expected = (h / (2 * m)) * sum(Hk @ gk for gk, Hk in oracles)
    torch.testing.assert_close(_flat(grad_reg), expected, rtol=0, atol=1e-13)


def _slow_root(h: float, lam: float, beta: float) -> float:
    """Slow eigenvalue of heavy ball on L = ½λθ²: the root of
    r² − (1 + β − hλ)r + β = 0 closest to 1 (the exact per-step factor once
    the fast mode has died out)."""
    b = 1 + beta - h * lam
    return (b + math.sqrt(b * b - 4 * beta)) / 2


def test_momentum_factor_from_the_exact_heavy_ball_iteration():
    """Heavy ball moves per step like GD with h_eff = h/(1−β) on
    L + c·(h_eff/4)‖∇L‖², c = (1+β)/(1−β) (Ghosh et al. 2023): on a quadratic
    the per-step log factor is −h_eff(λ + 2μλ²), μ = c·h_eff/4, up to O(h³).
    With GD's c = 1 instead the error is O(h²)."""
    beta, lam = 0.7, 1.3
    c = momentum_implicit_factor(beta)
    assert c == pytest.approx(17 / 3)
    steps = np.geomspace(1e-3, 1e-2, 5)
    err_ghosh, err_gd = [], []
    for h in steps:
        h_eff = h / (1 - beta)
        exact = math.log(_slow_root(h, lam, beta))
        for factor, errs in ((c, err_ghosh), (1.0, err_gd)):
            mu = factor * h_eff / 4
            errs.append(abs(exact + h_eff * (lam + 2 * mu * lam**2)))
    slope_ghosh = np.polyfit(np.log(steps), np.log(err_ghosh), 1)[0]
    slope_gd = np.polyfit(np.log(steps), np.log(err_gd), 1)[0]
    assert abs(slope_ghosh - 3) < 0.25, (slope_ghosh, err_ghosh)
    assert abs(slope_gd - 2) < 0.25, (slope_gd, err_gd)


def test_sgd_with_momentum_follows_the_slow_root():
    """The package's SGD(momentum=β) is the heavy-ball iteration above: after
    the fast mode decays, θ_{n+1}/θ_n is the slow root."""
    beta, lam, h = 0.7, 1.3, 0.01  # real roots need hλ < (1 − √β)²
    p = nn.Parameter(torch.tensor([1.0], dtype=F64))
    opt = SGD([p], lr=h, momentum=beta)
    ratios = []
    for _ in range(120):
        opt.zero_grad()
        (0.5 * lam * p**2).sum().backward()
        before = float(p)
        opt.step()
        ratios.append(float(p) / before)
    assert ratios[-1] == pytest.approx(_slow_root(h, lam, beta), rel=1e-9)


def test_bad_input_raises_value_error():
    model, x, y = _problem()
    params = list(model.parameters())
    loss = _mse(model(x), y)
    with pytest.raises(ValueError, match=r"loss must be a scalar tensor, got shape \(24, 2\)"):
        gradient_norm_penalty((model(x) - y) ** 2, params)
    with pytest.raises(ValueError, match="coeff must be a finite number >= 0, got -1.0"):
        gradient_norm_penalty(loss, params, coeff=-1.0)
    with pytest.raises(ValueError, match="coeff must be a finite number >= 0, got inf"):
        gradient_norm_penalty(loss, params, coeff=float("inf"))
    with pytest.raises(ValueError, match="params has no tensor with requires_grad=True"):
        gradient_norm_penalty(loss, [p.detach() for p in params])
    with pytest.raises(ValueError, match="batch_losses is empty"):
        sgd_implicit_regularizer([], params, lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -0.1"):
        sgd_implicit_regularizer([loss], params, lr=-0.1)
    for beta in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"momentum beta must be a number in \[0, 1\)"):
            momentum_implicit_factor(beta)
