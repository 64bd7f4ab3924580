"""Backward error analysis (Barrett & Dherin, ICLR 2021), checked numerically.

One GD step θ₁ = θ₀ − h∇L(θ₀) against the exact time-h solution of two
gradient flows, integrated by SciPy (DOP853, rtol = atol = 1e-13):

    flow of L:   θ' = −∇L(θ)                    local error O(h²)
    flow of L̃:   θ' = −∇L̃(θ) = −(∇L + (h/2)H∇L)   local error O(h³)

with L̃ = L + (h/4)‖∇L‖², the IGR modified loss. ∇L̃ comes from the
package's own :func:`implicit_reg.core.modified_gradient.modified_gradient_exact`
(μ = ``igr_coeff(h)``), and the GD step from :class:`implicit_reg.core.optim.GD`.
The fitted log–log slopes of local error against h, over h spanning a decade,
must be 2 and 3 (± 0.25).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from implicit_reg.core.modified_gradient import igr_coeff, modified_gradient_exact
from implicit_reg.core.objective import chunk_loss_fns, trainable_named_params
from implicit_reg.core.optim import GD

F64 = torch.float64
STEPS = np.geomspace(0.01, 0.12, 5)  # h over more than a decade


def _two_param_problem():
    """E(a, b) = ½(y − a·b·x)², the toy model of Barrett & Dherin (Sec. 2)."""
    x, y = 1.5, 2.0

    def loss_fn(ps):
        (theta,) = ps
        return 0.5 * (y - theta[0] * theta[1] * x) ** 2

    return loss_fn, np.array([0.4, 1.2])


def _tanh_problem():
    """2→6→1 tanh MLP (25 parameters), MSE on 16 rows."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x = torch.randn(16, 2, generator=gen, dtype=F64)
    y = torch.sin(2 * x[:, :1]) + 0.5 * x[:, 1:]
    (f,) = chunk_loss_fns(model, nn.MSELoss(), (x, y))
    named = trainable_named_params(model)
    shapes, sizes = [p.shape for p in named.values()], [p.numel() for p in named.values()]

    def loss_fn(ps):
        (theta,) = ps
        return f(tuple(c.reshape(s) for c, s in zip(theta.split(sizes), shapes)))

    theta0 = torch.cat([p.detach().reshape(-1) for p in named.values()]).numpy()
    return loss_fn, theta0


def _flow_end(loss_fn, theta0: np.ndarray, h: float, coeff: float) -> np.ndarray:
    """θ(h) for θ' = −∇(L + μ‖∇L‖²), the gradient from the package."""

    def rhs(_t, theta):
        p = torch.tensor(theta, dtype=F64, requires_grad=True)
        _, g_mod = modified_gradient_exact(loss_fn, (p,), coeff)
        return -g_mod[0].numpy()

    sol = solve_ivp(rhs, (0.0, h), theta0, method="DOP853", rtol=1e-13, atol=1e-13)
    assert sol.success, sol.message
    return sol.y[:, -1]


def _gd_step(loss_fn, theta0: np.ndarray, h: float) -> np.ndarray:
    p = torch.tensor(theta0, dtype=F64, requires_grad=True)
    opt = GD([p], lr=h)

    def closure():
        opt.zero_grad()
        loss = loss_fn((p,))
        loss.backward()
        return loss

    opt.step(closure)
    return p.detach().numpy()


@pytest.mark.parametrize("problem", [_two_param_problem, _tanh_problem], ids=["E(a,b)", "tanh-net"])
def test_gd_step_follows_modified_flow_to_third_order(problem):
    loss_fn, theta0 = problem()
    err_plain, err_modified = [], []
    for h in STEPS:
        step = _gd_step(loss_fn, theta0, h)
        err_plain.append(np.linalg.norm(step - _flow_end(loss_fn, theta0, h, 0.0)))
        err_modified.append(np.linalg.norm(step - _flow_end(loss_fn, theta0, h, igr_coeff(h))))
    log_h = np.log(STEPS)
    slope_plain = np.polyfit(log_h, np.log(err_plain), 1)[0]
    slope_modified = np.polyfit(log_h, np.log(err_modified), 1)[0]
    assert abs(slope_plain - 2) < 0.25, (slope_plain, err_plain)
    assert abs(slope_modified - 3) < 0.25, (slope_modified, err_modified)
    # the modified flow is the closer one at every h, by a factor that grows as h shrinks
    ratios = np.array(err_plain) / np.array(err_modified)
    assert np.all(ratios > 1) and ratios[0] > ratios[-1]
