"""Modified equations of heavy ball, RMSProp and Adam against independent oracles.

The arbiter is the order test (as in ``igr-order``): with the optimizer's
past iterates on a trajectory of a flow and its state (momentum buffer,
moment estimates) built from them, one ``torch.optim`` step lands O(h²) from
the leading-order flow and O(h³) from the modified flow; the flows are solved
by SciPy's DOP853 at rtol 1e-12 in float64. Then closed forms and explicit
``torch.func.hessian`` matrices for the pieces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch.func import hessian

from implicit_reg.core.modified_equations import (
    adam_step,
    adam_velocity,
    ema_lag,
    heavy_ball_coeff,
    heavy_ball_effective_lr,
    heavy_ball_velocity,
    one_norm_coeff,
    perturbed_one_norm,
    rmsprop_velocity,
)
from implicit_reg.core.modified_gradient import igr_coeff
from implicit_reg.core.regularizers import momentum_implicit_factor

F64 = torch.float64
STEPS = np.geomspace(2e-3, 2e-2, 4)  # h for the order fits (heavy ball)
# adaptive methods move each coordinate at speed ≲ 1, so their gradients change faster;
# smaller h keeps the history windows (≤ 18h) clear of g_i = 0, where ψ = |g| + ε has a kink
ADAPTIVE_STEPS = np.geomspace(1e-3, 1e-2, 4)


def _toy():
    """E(a, b) = ½(0.6 − ab)², the two-parameter model of igr-toy/igr-order."""

    def loss(p):
        a, b = p
        return 0.5 * (0.6 - a * b) ** 2

    return loss, (torch.tensor(1.3, dtype=F64), torch.tensor(0.8, dtype=F64))


def _mlp(seed=2, d=3, width=4, n=8):
    """3→4→1 tanh MLP (20 parameters), mean squared error on 8 random points.

    Seed 2: every |∂_iL| ≥ 0.018 at the start (no gradient component near 0)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    w1 = torch.randn(width, d, generator=gen, dtype=F64) / math.sqrt(d)
    b1 = 0.1 * torch.randn(width, generator=gen, dtype=F64)
    w2 = torch.randn(width, generator=gen, dtype=F64) / math.sqrt(width)

    def loss(p):
        w1, b1, w2 = p
        return 0.5 * ((torch.tanh(x @ w1.T + b1) @ w2 - y) ** 2).mean()

    return loss, (w1, b1, w2)


MODELS = {"two-parameter": _toy, "tanh MLP": _mlp}


def _flat(ps) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in ps]).numpy()


def _unflat(z, like):
    out, i = [], 0
    for p in like:
        out.append(torch.as_tensor(z[i : i + p.numel()], dtype=F64).reshape(p.shape))
        i += p.numel()
    return tuple(t.requires_grad_(True) for t in out)


def _grad(loss, ps):
    ps = tuple(p.detach().requires_grad_(True) for p in ps)
    return torch.autograd.grad(loss(ps), ps)


def _flow_points(velocity, loss, theta0, times) -> np.ndarray:
    """θ(t) for the flow θ̇ = velocity(θ) through θ(0) = theta0, at ``times`` (all
    of one sign), DOP853 at rtol 1e-12."""
    end = times[-1]
    sol = solve_ivp(
        lambda _t, z: _flat(velocity(loss, _unflat(z, theta0))),
        (0.0, end),
        _flat(theta0),
        method="DOP853",
        t_eval=times,
        rtol=1e-12,
        atol=1e-13,
    )
    assert sol.success, sol.message
    return sol.y.T


def _heavy_ball_error(loss, theta0, h, order, beta=0.5):
    """‖θ₁ − φ_h(θ₀)‖ for torch's SGD(momentum=β) with θ₋₁ = φ_{−h}(θ₀) on the same flow."""

    def vel(f, p):
        return heavy_ball_velocity(f, p, lr=h, beta=beta, order=order)

    past = _unflat(_flow_points(vel, loss, theta0, [-h])[0], theta0)
    target = _flow_points(vel, loss, theta0, [h])[0]
    ps = [p.detach().clone().requires_grad_(True) for p in theta0]
    opt = torch.optim.SGD(ps, lr=h, momentum=beta)
    for p, q in zip(ps, past):  # buffer b with θ₀ − h·(βb + g) = θ₀ + β(θ₀ − θ₋₁) − h g
        opt.state[p]["momentum_buffer"] = (q.detach() - p.detach()) / h
    opt.zero_grad()
    loss(tuple(ps)).backward()
    opt.step()
    return float(np.linalg.norm(_flat(ps) - target))


def _adaptive_error(loss, theta0, h, order, kind, flow_step=None):
    """‖θ₁ − φ_h(θ₀)‖ for one step of RMSProp/Adam whose moment estimates were built
    from past iterates θ₋ₖ = φ_{−kh}(θ₀) on the same flow.

    kind "rmsprop": torch.optim.RMSprop (ε outside), long history (18 steps, the
    oldest gradient standing in for everything before it: weight α¹⁸ ≈ 3e-13).
    kind "adam": torch.optim.Adam (ε outside), bias correction, update t = 6.
    kind "adam-inside": the paper's Adam (ε inside √·), :func:`adam_step`, t = 6.
    ``flow_step`` gives the flow the lags of another step than the optimizer's.
    """
    if kind == "rmsprop":
        kw = dict(betas=(0.0, 0.2), eps=0.1, eps_placement="outside", bias_correction=False)
        n_past, step = 18, None
    elif kind == "adam":
        kw = dict(betas=(0.5, 0.8), eps=0.1, eps_placement="outside", bias_correction=True)
        n_past, step = 5, 6
    else:
        kw = dict(betas=(0.5, 0.8), eps=0.01, eps_placement="inside", bias_correction=True)
        n_past, step = 5, 6

    def vel(f, p):
        return adam_velocity(f, p, lr=h, step=flow_step or step, order=order, **kw)

    past = _flow_points(vel, loss, theta0, [-k * h for k in range(1, n_past + 1)])
    history = [_unflat(z, theta0) for z in past[::-1]]  # oldest first
    target = _flow_points(vel, loss, theta0, [h])[0]
    b1, b2 = kw["betas"]
    if kw["bias_correction"]:
        m = [torch.zeros_like(p) for p in theta0]
        v = [torch.zeros_like(p) for p in theta0]
    else:
        g = _grad(loss, history.pop(0))
        m, v = [x.clone() for x in g], [x * x for x in g]
    for th in history:
        g = _grad(loss, th)
        m = [b1 * a + (1 - b1) * x for a, x in zip(m, g)]
        v = [b2 * a + (1 - b2) * x * x for a, x in zip(v, g)]
    ps = [p.detach().clone().requires_grad_(True) for p in theta0]
    if kind == "adam-inside":
        new, _, _ = adam_step(
            theta0, _grad(loss, theta0), m, v, step=step, lr=h,
            betas=kw["betas"], eps=kw["eps"], eps_placement="inside",
        )  # fmt: skip
        return float(np.linalg.norm(_flat(new) - target))
    if kind == "rmsprop":
        opt = torch.optim.RMSprop(ps, lr=h, alpha=b2, eps=kw["eps"])
        for p, b in zip(ps, v):
            opt.state[p].update(step=torch.tensor(float(n_past)), square_avg=b.clone())
    else:
        opt = torch.optim.Adam(ps, lr=h, betas=kw["betas"], eps=kw["eps"])
        for p, a, b in zip(ps, m, v):
            opt.state[p].update(
                step=torch.tensor(float(step - 1)), exp_avg=a.clone(), exp_avg_sq=b.clone()
            )
    opt.zero_grad()
    loss(tuple(ps)).backward()
    opt.step()
    return float(np.linalg.norm(_flat(ps) - target))


def _slope(steps, errors) -> float:
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("kind", ["heavy ball", "rmsprop", "adam", "adam-inside"])
def test_one_step_error_is_order_2_against_the_flow_and_3_against_the_modified_flow(
    model, kind, one_thread
):
    loss, theta0 = MODELS[model]()
    errors = {}
    steps = STEPS if kind == "heavy ball" else ADAPTIVE_STEPS
    for order in (1, 2):
        if kind == "heavy ball":
            errors[order] = [_heavy_ball_error(loss, theta0, h, order) for h in steps]
        else:
            errors[order] = [_adaptive_error(loss, theta0, h, order, kind) for h in steps]
    s1, s2 = _slope(steps, errors[1]), _slope(steps, errors[2])
    msg = f"{kind} on {model}: slopes {s1:.3f} (flow), {s2:.3f} (modified), errors {errors}"
    assert abs(s1 - 2) < 0.15, msg
    assert abs(s2 - 3) < 0.25, msg
    assert errors[2][0] < 0.1 * errors[1][0], msg


def test_the_order_test_rejects_a_wrong_coefficient():
    """The modified flow of Adam at t = 6 but with the lags of t = 1 (a₁ = a₂ = 0, as
    if Adam had no memory) is only O(h²) from the step: the fit sees the difference."""
    loss, theta0 = _toy()
    errors = [_adaptive_error(loss, theta0, h, 2, "adam", flow_step=1) for h in ADAPTIVE_STEPS]
    slope = _slope(ADAPTIVE_STEPS, errors)
    assert abs(slope - 2) < 0.15, (slope, errors)


def test_heavy_ball_coefficient_closed_form():
    h, beta = 0.05, 0.7
    assert heavy_ball_effective_lr(h, beta) == pytest.approx(h / 0.3, rel=1e-15)
    mu = heavy_ball_coeff(h, beta)
    assert mu == pytest.approx(h * 1.7 / (4 * 0.3**2), rel=1e-14)
    assert mu == pytest.approx(momentum_implicit_factor(beta) * (h / 0.3) / 4, rel=1e-14)
    assert heavy_ball_coeff(h, 0.0) == igr_coeff(h)  # no momentum: Barrett & Dherin's h/4


def _explicit(loss, theta0):
    """Oracle: flat gradient and explicit float64 Hessian by torch.func.hessian."""
    like = theta0

    def flat_loss(z):
        out, i = [], 0
        for p in like:
            out.append(z[i : i + p.numel()].reshape(p.shape))
            i += p.numel()
        return loss(tuple(out))

    z = torch.as_tensor(_flat(theta0))
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(flat_loss(zz), zz)
    return g, hessian(flat_loss)(z)


def test_heavy_ball_velocity_against_an_explicit_hessian():
    loss, theta0 = _mlp()
    g, H = _explicit(loss, theta0)
    h, beta = 0.03, 0.6
    mu = heavy_ball_coeff(h, beta)
    v2 = torch.as_tensor(_flat(heavy_ball_velocity(loss, theta0, lr=h, beta=beta)))
    v1 = torch.as_tensor(_flat(heavy_ball_velocity(loss, theta0, lr=h, beta=beta, order=1)))
    torch.testing.assert_close(v2, -(g + 2 * mu * H @ g) / (1 - beta), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(v1, -g / (1 - beta), rtol=1e-14, atol=0)


def test_ema_lag_against_the_weighted_sum():
    for beta in (0.0, 0.3, 0.9):
        for t in (1, 2, 7, 50):
            w = np.array([(1 - beta) * beta**k for k in range(t)]) / (1 - beta**t)
            assert ema_lag(beta, t) == pytest.approx(float(np.arange(t) @ w), abs=1e-12)
        long = np.array([(1 - beta) * beta**k for k in range(4000)])
        assert ema_lag(beta) == pytest.approx(float(np.arange(4000) @ long), abs=1e-9)
    assert ema_lag(0.9, 1) == 0.0  # one bias-corrected step: the current gradient only


@pytest.mark.parametrize("eps_placement", ["inside", "outside"])
def test_one_norm_gradient_and_adam_velocity_against_an_explicit_hessian(eps_placement):
    """∇_θ N(∇L(θ)) = H·(g/ψ(g²)) (N by autograd, H by torch.func.hessian), and
    the order-2 velocity equals −ψ⁻¹⊙(g + h·c⊙Hφ(g)) assembled from that H."""
    loss, theta0 = _mlp(seed=1)
    g, H = _explicit(loss, theta0)
    eps = 0.05
    psi = torch.sqrt(g * g + eps) if eps_placement == "inside" else g.abs() + eps
    ps = tuple(p.detach().requires_grad_(True) for p in theta0)
    grads = torch.autograd.grad(loss(ps), ps, create_graph=True)
    dn = torch.autograd.grad(perturbed_one_norm(grads, eps, eps_placement=eps_placement), ps)
    torch.testing.assert_close(torch.as_tensor(_flat(dn)), H @ (g / psi), rtol=1e-12, atol=1e-14)
    if eps_placement == "inside":  # the paper's ‖∇L‖_{1,ε}
        n = perturbed_one_norm(tuple(x.detach() for x in grads), eps)
        assert float(n) == pytest.approx(float(torch.sqrt(g * g + eps).sum()), rel=1e-14)
    h, betas = 0.02, (0.8, 0.95)
    kw = dict(lr=h, betas=betas, eps=eps, eps_placement=eps_placement)
    c = one_norm_coeff(g, betas=betas, eps=eps, eps_placement=eps_placement)
    vel = torch.as_tensor(_flat(adam_velocity(loss, theta0, **kw)))
    torch.testing.assert_close(vel, -(g + h * c * (H @ (g / psi))) / psi, rtol=1e-12, atol=1e-14)
    vel1 = torch.as_tensor(_flat(adam_velocity(loss, theta0, order=1, **kw)))
    torch.testing.assert_close(vel1, -g / psi, rtol=1e-14, atol=0)
    rms = rmsprop_velocity(loss, theta0, lr=h, alpha=0.95, eps=eps, eps_placement=eps_placement)
    adam0 = adam_velocity(loss, theta0, lr=h, betas=(0.0, 0.95), eps=eps, eps_placement=eps_placement)  # fmt: skip
    torch.testing.assert_close(_flat(rms), _flat(adam0), rtol=0, atol=0)


def test_one_norm_coefficient_sign_and_limits():
    """c = (a₁+½) − (a₂+½)r: a₁ − a₂ for √ε ≪ |g| (anti-penalizing when β₂ > β₁),
    (1+β₁)/(2(1−β₁)) for √ε ≫ |g|, and the switch at r = (a₁+½)/(a₂+½)."""
    g = torch.tensor([1e3, 1.0, 1e-3], dtype=F64)
    b1, b2 = 0.9, 0.999
    c = one_norm_coeff(g, betas=(b1, b2), eps=1e-8)
    assert float(c[0]) == pytest.approx(b1 / (1 - b1) - b2 / (1 - b2), rel=1e-9)
    assert float(c[0]) == pytest.approx(-990.0, rel=1e-9)  # Adam's defaults anti-penalize
    assert float(c[1]) < 0 and float(c[2]) < 0
    big = one_norm_coeff(torch.tensor([1e-6], dtype=F64), betas=(b1, b2), eps=1.0)
    assert float(big) == pytest.approx((1 + b1) / (2 * (1 - b1)), rel=1e-9)
    assert float(one_norm_coeff(g, betas=(0.95, 0.5), eps=1e-8).min()) > 0  # β₁ > β₂: penalizes
    rms = one_norm_coeff(g, betas=(0.0, 0.99), eps=1e-8)  # RMSProp: ½ − (α/(1−α) + ½)r
    assert float(rms[0]) == pytest.approx(-99.0, rel=1e-9)
    # ε inside: c = 0 where g² = ε(a₁+½)/(a₂−a₁)
    a1, a2, eps = 9.0, 999.0, 1e-4
    g0 = math.sqrt(eps * (a1 + 0.5) / (a2 - a1))
    around = torch.tensor([0.9 * g0, g0, 1.1 * g0], dtype=F64)
    c = one_norm_coeff(around, betas=(b1, b2), eps=eps)
    assert float(c[0]) > 0 > float(c[2]) and abs(float(c[1])) < 1e-9
    # ε outside: the same switch at |g| = ε(a₁+½)/(a₂−a₁)
    g0 = eps * (a1 + 0.5) / (a2 - a1)
    c = one_norm_coeff(torch.tensor([0.9 * g0, 1.1 * g0], dtype=F64), betas=(b1, b2), eps=eps, eps_placement="outside")  # fmt: skip
    assert float(c[0]) > 0 > float(c[1])
    # bias correction: after one step the lags vanish, c = ½ − ½r
    c = one_norm_coeff(g, betas=(b1, b2), eps=1e-8, bias_correction=True, step=1)
    torch.testing.assert_close(c, 0.5 - 0.5 * g * g / (g * g + 1e-8), rtol=1e-12, atol=1e-15)


def test_adam_with_large_eps_is_heavy_ball():
    """√ε ≫ |g|: Adam (ε inside, long history) is heavy ball with step h(1−β₁)/√ε and
    momentum β₁, and the order-2 flows agree per step: h·θ̇_Adam = h′·θ̇_HB."""
    loss, theta0 = _mlp()
    eps, b1 = 1e8, 0.6
    h = 0.05 * math.sqrt(eps)  # h/√ε = 0.05 keeps the h-term at a few percent
    h_hb = h * (1 - b1) / math.sqrt(eps)
    adam = _flat(adam_velocity(loss, theta0, lr=h, betas=(b1, 0.9), eps=eps)) * h
    hb = _flat(heavy_ball_velocity(loss, theta0, lr=h_hb, beta=b1)) * h_hb
    gd = _flat(heavy_ball_velocity(loss, theta0, lr=h_hb, beta=b1, order=1)) * h_hb
    assert np.linalg.norm(hb - gd) > 1e-2 * np.linalg.norm(hb)  # the h-term is visible
    np.testing.assert_allclose(adam, hb, rtol=1e-6, atol=0)


def test_adam_step_matches_torch_adam_and_rmsprop():
    loss, theta0 = _mlp()
    for kind in ("adam", "rmsprop"):
        ps = [p.detach().clone().requires_grad_(True) for p in theta0]
        if kind == "adam":
            opt = torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), eps=1e-3)
            kw = dict(betas=(0.8, 0.95), bias_correction=True)
        else:
            opt = torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3)
            kw = dict(betas=(0.0, 0.9), bias_correction=False)
        mine = tuple(p.detach().clone() for p in theta0)
        m = tuple(torch.zeros_like(p) for p in mine)
        v = tuple(torch.zeros_like(p) for p in mine)
        for t in range(1, 6):
            opt.zero_grad()
            loss(tuple(ps)).backward()
            opt.step()
            mine, m, v = adam_step(
                mine, _grad(loss, mine), m, v, step=t, lr=0.01, eps=1e-3,
                eps_placement="outside", **kw,
            )  # fmt: skip
            torch.testing.assert_close(_flat(mine), _flat(ps), rtol=1e-13, atol=1e-15)


def test_bad_input_raises_value_error():
    loss, theta0 = _toy()
    with pytest.raises(ValueError, match=r"momentum beta must be a number in \[0, 1\)"):
        heavy_ball_coeff(0.1, 1.0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        heavy_ball_velocity(loss, theta0, lr=0.0, beta=0.5)
    with pytest.raises(ValueError, match="order must be 1"):
        heavy_ball_velocity(loss, theta0, lr=0.1, beta=0.5, order=3)
    with pytest.raises(ValueError, match="unknown eps_placement 'middle'"):
        adam_velocity(loss, theta0, lr=0.1, eps_placement="middle")
    with pytest.raises(ValueError, match="bias_correction=True needs step"):
        adam_velocity(loss, theta0, lr=0.1, bias_correction=True)
    with pytest.raises(ValueError, match="step is only used with bias_correction=True"):
        adam_velocity(loss, theta0, lr=0.1, step=3)
    with pytest.raises(ValueError, match=r"beta2 must be a number in \[0, 1\)"):
        adam_velocity(loss, theta0, lr=0.1, betas=(0.9, 1.0), order=1)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        one_norm_coeff(torch.ones(2), betas=(0.9, 0.99), eps=-1.0)
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        ema_lag(0.9, 0)
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        adam_step(theta0, theta0, theta0, theta0, step=0, lr=0.1)
