"""``EGR(momentum=β)``: heavy ball on L + μ‖∇L‖² with μ = h(1+β)/(4(1−β)²) by default.

Oracles: ``torch.optim.SGD(momentum=β)`` (μ = 0); the heavy-ball recursion written out
with an explicit float64 Hessian from ``torch.func.hessian``; heavy_ball_coeff's closed
form; exact against finite difference on a smooth model; a state_dict round trip.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from implicit_reg import EGR
from implicit_reg.core.modified_equations import heavy_ball_coeff

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, generator=g, dtype=F64), torch.randn(12, 2, generator=g, dtype=F64)


def _loss(model):
    x, y = _data()
    return lambda: nn.functional.mse_loss(model(x), y)


def test_default_coeff_is_heavy_ball_s_and_gd_s_without_momentum():
    assert heavy_ball_coeff(0.1, 0.9) == pytest.approx(0.1 * 1.9 / (4 * 0.01))
    m = _model()
    assert EGR._coeff(EGR(m.parameters(), lr=0.1).param_groups[0]) == 0.1 / 4
    hb = EGR(m.parameters(), lr=0.1, momentum=0.9)
    assert EGR._coeff(hb.param_groups[0]) == heavy_ball_coeff(0.1, 0.9)


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_zero_coeff_is_torch_sgd_with_momentum(beta):
    a, b = _model(), _model()
    ours = EGR(a.parameters(), lr=0.05, coeff=0.0, momentum=beta)
    theirs = torch.optim.SGD(b.parameters(), lr=0.05, momentum=beta)
    for _ in range(6):
        ours.step(_loss(a))
        theirs.zero_grad()
        _loss(b)().backward()
        theirs.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)


def test_heavy_ball_on_the_modified_loss_with_an_explicit_hessian():
    """b ← β·b + (g + 2μHg), θ ← θ − h·b, H from torch.func.hessian of the flat loss."""
    h, beta = 0.05, 0.8
    mu = h * (1 + beta) / (4 * (1 - beta) ** 2)
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    x, y = _data()

    def flat_loss(z):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = z[i : i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.mse_loss(functional_call(model, ps, (x,)), y)

    z = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buf = None
    for _ in range(4):
        g = torch.func.grad(flat_loss)(z)
        d = g + 2 * mu * hessian(flat_loss)(z) @ g
        buf = d if buf is None else beta * buf + d
        z = z - h * buf
    opt = EGR(model.parameters(), lr=h, momentum=beta)
    for _ in range(4):
        opt.step(_loss(model))
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, z, rtol=1e-12, atol=1e-14)


def test_finite_difference_follows_exact_on_a_smooth_model():
    a, b = _model(), _model()
    exact = EGR(a.parameters(), lr=0.05, momentum=0.9)
    fd = EGR(b.parameters(), lr=0.05, momentum=0.9, method="finite_difference")
    for _ in range(5):
        exact.step(_loss(a))
        fd.step(_loss(b))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    assert "momentum_buffer" in fd.state[next(b.parameters())]


def test_state_dict_round_trip_restores_momentum_buffers_and_settings():
    a = _model()
    opt = EGR(a.parameters(), lr=0.05, momentum=0.7)
    for _ in range(3):
        opt.step(_loss(a))
    b = copy.deepcopy(a)
    other = EGR(b.parameters(), lr=1.0)  # settings come from the loaded groups
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert other.param_groups[0]["momentum"] == 0.7 and other.param_groups[0]["lr"] == 0.05
    for _ in range(3):
        opt.step(_loss(a))
        other.step(_loss(b))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_state_saved_before_momentum_existed_loads_as_beta_zero():
    a = _model()
    opt = EGR(a.parameters(), lr=0.05)
    state = opt.state_dict()
    for g in state["param_groups"]:
        del g["momentum"]
    b = copy.deepcopy(a)
    again = EGR(b.parameters(), lr=0.05)
    again.load_state_dict(state)
    opt.step(_loss(a))
    again.step(_loss(b))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("beta", [-0.1, 1.0, float("nan"), True])
def test_bad_momentum_raises(beta):
    with pytest.raises(ValueError, match="momentum"):
        EGR(_model().parameters(), momentum=beta)
    opt = EGR(_model().parameters())
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "momentum": beta})
