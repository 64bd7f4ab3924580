"""GD's central flow (Cohen et al., ICLR 2025) against independent oracles.

∇S against the explicit third-derivative tensor ``jacfwd(hessian(L))`` and
against finite differences of ``eigvalsh``; the flow against gradient flow
below the edge (exactly Euler's, and SciPy's solution as dt → 0); at the
edge, its sharpness held at 2/η while gradient flow's passes it and GD's
hovers there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch.func import hessian, jacfwd

from implicit_reg.core.central_flow import (
    ParamsHessian,
    central_flow,
    central_flow_sigma2,
    central_flow_velocity,
    rmsprop_central_flow,
    rmsprop_sharpness_gradients,
    sharpness_gradient,
)
from implicit_reg.probes.eigen import lanczos

F64 = torch.float64


def _mlp(seed=2, d=2, width=8, n=6):
    """2→8→1 tanh MLP (32 parameters), mean squared error on 6 random points. From
    this seed gradient flow sharpens progressively: λ_max rises from 2.4 to ≈ 10."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randn(n, generator=gen, dtype=F64)
    w1 = torch.randn(width, d, generator=gen, dtype=F64) / math.sqrt(d)
    b1 = torch.zeros(width, dtype=F64)
    w2 = torch.randn(width, generator=gen, dtype=F64) / math.sqrt(width)

    def loss(p):
        w1, b1, w2 = p
        return 0.5 * ((torch.tanh(x @ w1.T + b1) @ w2 - y) ** 2).mean()

    return loss, (w1, b1, w2)


def _flat(ps) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in ps])


def _unflat(z, like):
    out, i = [], 0
    for p in like:
        out.append(torch.as_tensor(z[i : i + p.numel()], dtype=F64).reshape(p.shape))
        i += p.numel()
    return tuple(out)


def _flat_loss(loss, like):
    return lambda z: loss(_unflat(z, like))


def _grad(loss, ps):
    ps = tuple(p.detach().requires_grad_(True) for p in ps)
    return torch.autograd.grad(loss(ps), ps)


def _top(loss, theta):
    """Oracle: λ_max and its unit eigenvector from an explicit float64 Hessian."""
    evals, evecs = torch.linalg.eigh(hessian(_flat_loss(loss, theta))(_flat(theta)))
    return float(evals[-1]), evecs[:, -1]


def _lanczos_solver(op, v0):
    res = lanczos(op, 1, v0=v0)
    assert res.converged
    return float(res.eigenvalues[0]), res.eigenvectors[:, 0]


def _gradient_flow(loss, theta, t_end, lr=1.0, rtol=1e-10):
    """θ(t_end) of θ̇ = −η∇L by SciPy (DOP853), flat."""
    sol = solve_ivp(
        lambda _t, z: -lr * _flat(_grad(loss, _unflat(z, theta))).numpy(),
        (0.0, t_end),
        _flat(theta).numpy(),
        method="DOP853",
        rtol=rtol,
        atol=1e-12,
    )
    assert sol.success, sol.message
    return torch.as_tensor(sol.y[:, -1])


def test_sharpness_gradient_is_the_third_derivative_contraction():
    """∇S_k = Σ_ij ∂³L/∂θ_i∂θ_j∂θ_k u_i u_j with T = jacfwd(hessian(L)), and it is the
    gradient of λ_max (central differences of eigvalsh along random directions)."""
    loss, theta = _mlp(width=4)  # 16 parameters
    f = _flat_loss(loss, theta)
    z = _flat(theta)
    lam, u = _top(loss, theta)
    S, dS = sharpness_gradient(loss, theta, _unflat(u, theta))
    assert S == pytest.approx(lam, rel=1e-12)
    T = jacfwd(hessian(f))(z)  # (16, 16, 16)
    torch.testing.assert_close(_flat(dS), torch.einsum("ijk,i,j->k", T, u, u), rtol=1e-10, atol=1e-12)  # fmt: skip
    delta = 1e-5
    for e in torch.randn(4, z.numel(), generator=torch.Generator().manual_seed(1), dtype=F64):
        fd = (torch.linalg.eigvalsh(hessian(f)(z + delta * e))[-1]
              - torch.linalg.eigvalsh(hessian(f)(z - delta * e))[-1]) / (2 * delta)  # fmt: skip
        assert float(_flat(dS) @ e) == pytest.approx(float(fd), rel=1e-6)


def _mse_mlp(kind: str, seed=3, n=6, width=3, k=2):
    """2→3→k tanh MLP (9 + 3k parameters) under a squared loss built on ``F.mse_loss``:
    the functional form, or the package's ``make_loss("mse")`` on real targets
    (``RegressionMSELoss``) or on class labels (``OneHotMSELoss``)."""
    import torch.nn.functional as F

    from implicit_reg.workloads.losses import make_loss

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen, dtype=F64)
    theta = (torch.randn(width, 2, generator=gen, dtype=F64), torch.zeros(width, dtype=F64),
             torch.randn(k, width, generator=gen, dtype=F64) / math.sqrt(width))  # fmt: skip
    if kind == "onehot":
        y, crit = torch.arange(n) % k, make_loss("mse", num_classes=k)
    else:
        y = torch.randn(n, k, generator=gen, dtype=F64)
        crit = F.mse_loss if kind == "functional" else make_loss("mse", num_classes=None)

    def loss(p):
        w1, b1, w2 = p
        return crit(torch.tanh(x @ w1.T + b1) @ w2.T, y)

    return loss, theta


@pytest.mark.parametrize("kind", ["functional", "regression", "onehot"])
def test_sharpness_gradient_works_for_losses_built_on_mse_loss(kind):
    """``F.mse_loss`` (alone or in ``make_loss("mse")``) made the forward-over-reverse
    HVP raise "ZeroTensors are immutable" on torch 2.13; ∇S must be the contraction of
    jacfwd(hessian(L)) for it too, and the velocity must be finite."""
    loss, theta = _mse_mlp(kind)
    f, z = _flat_loss(loss, theta), _flat(theta)
    lam, u = _top(loss, theta)
    S, dS = sharpness_gradient(loss, theta, _unflat(u, theta))
    assert S == pytest.approx(lam, rel=1e-12)
    T = jacfwd(hessian(f))(z)
    torch.testing.assert_close(_flat(dS), torch.einsum("ijk,i,j->k", T, u, u), rtol=1e-10, atol=1e-12)  # fmt: skip
    assert float(_flat(dS).norm()) > 1e-3  # not a vanishing (e.g. zero-tensor) gradient
    # a non-eigenvector direction too: uᵀHu and Σ T_ijk u_i u_j for any fixed u
    v = torch.randn(z.numel(), generator=torch.Generator().manual_seed(4), dtype=F64)
    S_v, dS_v = sharpness_gradient(loss, theta, _unflat(v, theta))
    assert S_v == pytest.approx(float(v @ hessian(f)(z) @ v), rel=1e-12)
    torch.testing.assert_close(_flat(dS_v), torch.einsum("ijk,i,j->k", T, v, v), rtol=1e-10, atol=1e-12)  # fmt: skip
    vel, info = central_flow_velocity(loss, theta, _unflat(u, theta), lr=2 / (0.5 * lam), dt=0.25)
    assert info["sigma2"] > 0 and all(torch.isfinite(a).all() for a in vel)


def test_params_hessian_operator_and_lanczos_against_the_explicit_hessian():
    loss, theta = _mlp()
    H = hessian(_flat_loss(loss, theta))(_flat(theta))
    op = ParamsHessian(loss, theta)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-12, atol=1e-14)
    assert op.n_hvp == 1 and (op.dim, op.dtype) == (32, F64)
    lam, u = _lanczos_solver(ParamsHessian(loss, theta), None)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-10)
    with pytest.raises(ValueError, match=r"expected a flat vector of shape \(32,\)"):
        op.matvec(torch.zeros(3, dtype=F64))


def test_sigma2_solves_the_linearized_complementarity():
    lr, dt = 0.4, 0.25  # 2/η = 5
    # below the edge, and not reaching it within the step: gradient flow
    assert central_flow_sigma2(4.0, -1.0, 2.0, lr=lr, dt=dt) == 0.0
    # on the edge with ∇L lowering S (⟨∇S, ∇L⟩ > 0): nothing to hold back
    assert central_flow_sigma2(5.0, 0.3, 2.0, lr=lr, dt=dt) == 0.0
    # on the edge with gradient flow raising S: σ² = −2⟨∇S,∇L⟩/‖∇S‖², so dS/dt = 0
    dot, sq = -0.3, 2.0
    s2 = central_flow_sigma2(5.0, dot, sq, lr=lr, dt=dt)
    assert s2 == pytest.approx(-2 * dot / sq, rel=1e-14)
    assert -lr * (dot + 0.5 * s2 * sq) == pytest.approx(0.0, abs=1e-15)
    # above the edge: the step's linearized S lands back on 2/η
    S = 5.1
    s2 = central_flow_sigma2(S, dot, sq, lr=lr, dt=dt)
    assert S + dt * (-lr * (dot + 0.5 * s2 * sq)) == pytest.approx(2 / lr, rel=1e-14)
    # no direction lowers S
    assert central_flow_sigma2(5.1, 0.0, 0.0, lr=lr, dt=dt) == 0.0


def test_below_the_edge_it_is_gradient_flow():
    """With 2/η far above λ_max, σ² = 0: each step is exactly an Euler step of
    θ̇ = −η∇L, and the endpoint converges to SciPy's gradient flow at first order."""
    loss, theta = _mlp()
    lr, t_end = 0.05, 4.0  # 2/η = 40, λ_max ≈ 2.4
    vel, info = central_flow_velocity(loss, theta, _unflat(_top(loss, theta)[1], theta), lr=lr, dt=0.5)  # fmt: skip
    assert info["sigma2"] == 0.0
    torch.testing.assert_close(_flat(vel), -lr * _flat(_grad(loss, theta)), rtol=0, atol=0)
    exact = _gradient_flow(loss, theta, t_end, lr=lr)
    errors = []
    for dt in (0.5, 0.25):
        res = central_flow(loss, theta, lr=lr, t_end=t_end, dt=dt, eig_solver=_lanczos_solver)
        assert not res.diverged and np.all(res.sigma2 == 0.0)
        np.testing.assert_allclose(res.loss_predicted, res.loss, rtol=0, atol=0)
        z = _flat(theta)
        for _ in range(round(t_end / dt)):  # Euler on −η∇L, written out
            z = z - dt * lr * _flat(_grad(loss, _unflat(z, theta)))
        np.testing.assert_allclose(res.theta[-1], z.numpy(), rtol=1e-13, atol=1e-15)
        assert res.t[-1] == pytest.approx(t_end)
        errors.append(float(np.linalg.norm(res.theta[-1] - exact.numpy())))
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.05), errors


def test_at_the_edge_the_central_flow_holds_sharpness_at_2_over_lr():
    """From a point of gradient flow below the edge (λ_max ≈ 4.5 < 2/η = 5): gradient
    flow sharpens past 2/η, GD enters the edge of stability, and the central flow
    follows gradient flow until S = 2/η, then keeps S there with σ² > 0."""
    loss, theta = _mlp()
    theta = _unflat(_gradient_flow(loss, theta, 90.0, rtol=1e-8), theta)
    lr, t_end = 0.4, 50.0
    edge = 2 / lr
    lam0 = _top(loss, theta)[0]
    assert 4.0 < lam0 < 0.95 * edge
    res = central_flow(loss, theta, lr=lr, t_end=t_end, dt=0.5, eig_solver=_lanczos_solver)
    assert not res.diverged
    hit = int(np.argmax(res.sharpness >= edge - 1e-3))
    assert 0 < hit < len(res.sharpness) // 2, res.sharpness
    assert np.all(res.sigma2[: hit - 1] == 0.0)
    after = res.sharpness[hit + 1 :]
    assert np.max(np.abs(after - edge)) < 2e-3, after
    assert np.all(res.sigma2[hit + 1 :] > 0)
    assert np.all(np.diff(res.loss) < 0)  # the central flow still descends
    # the same span of gradient flow sharpens past 2/η
    gf_end = _unflat(_gradient_flow(loss, theta, lr * t_end), theta)
    assert _top(loss, gf_end)[0] > 1.1 * edge
    # GD itself from the same point enters the edge of stability: once its oscillation
    # has grown (~100 steps here) its loss goes up and down and λ_max hovers near 2/η
    z, losses = _flat(theta), []
    for _ in range(200):
        ps = _unflat(z, theta)
        losses.append(float(loss(ps)))
        z = z - lr * _flat(_grad(loss, ps))
    assert np.any(np.diff(losses[100:]) > 0)
    assert abs(_top(loss, _unflat(z, theta))[0] - edge) < 0.1 * edge


def test_bad_input_raises_value_error():
    loss, theta = _mlp()
    kw = dict(lr=0.4, t_end=1.0, eig_solver=_lanczos_solver)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        central_flow(loss, theta, **{**kw, "lr": -0.1})
    with pytest.raises(ValueError, match="dt must be <= 1 GD step"):
        central_flow(loss, theta, dt=1.5, **kw)
    with pytest.raises(ValueError, match="t_end must be a finite number > 0"):
        central_flow(loss, theta, **{**kw, "t_end": 0.0})
    with pytest.raises(ValueError, match="eig_solver must be callable"):
        central_flow(loss, theta, **{**kw, "eig_solver": None})
    with pytest.raises(ValueError, match="vec must have one tensor per parameter"):
        sharpness_gradient(loss, theta, theta[:2])


# ---------------------------------------------------------------- RMSProp


def _rmsprop_start(eps=1e-3):
    loss, theta = _mlp()
    g = _flat(_grad(loss, theta))
    return loss, theta, g * g + 1e-4, eps


def test_rmsprop_sharpness_gradients_against_explicit_derivatives():
    """S_P = λ_max(D H D), D = (√ν + ε)^{-1/2}: ∇_θS_P against jacfwd(hessian) contracted
    with v = D w, ∂S_P/∂ν against autograd through eigvalsh, Hv against H @ v."""
    loss, theta, nu, eps = _rmsprop_start()
    nu = nu * torch.linspace(0.5, 2.0, nu.numel(), dtype=F64)  # uneven, positive
    z = _flat(theta)
    H = hessian(_flat_loss(loss, theta))(z)
    T = jacfwd(hessian(_flat_loss(loss, theta)))(z)

    def top(nu_):
        d = (nu_.sqrt() + eps).rsqrt()
        return torch.linalg.eigh(d[:, None] * H * d[None, :])

    evals, evecs = top(nu)
    w = evecs[:, -1]
    S, dS, dS_dnu, hv = rmsprop_sharpness_gradients(loss, theta, nu, w, eps=eps)
    v = w * (nu.sqrt() + eps).rsqrt()
    assert S == pytest.approx(float(evals[-1]), rel=1e-12)
    torch.testing.assert_close(dS, torch.einsum("ijk,i,j->k", T, v, v), rtol=1e-10, atol=1e-12)
    nu_leaf = nu.clone().requires_grad_(True)
    (oracle,) = torch.autograd.grad(top(nu_leaf)[0][-1], nu_leaf)
    torch.testing.assert_close(dS_dnu, oracle, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)


def test_rmsprop_below_the_edge_it_is_preconditioned_gradient_flow():
    """2/η far above λ_max(P⁻¹H): σ² = 0, each step is exactly an Euler step of
    θ̇ = −η∇L/(√ν + ε), ν̇ = (1−β₂)(∇L² − ν), converging to SciPy's solution at first order."""
    loss, theta, nu0, eps = _rmsprop_start()
    lr, beta2, t_end = 1e-4, 0.9, 8.0
    n = _flat(theta).numel()

    def rhs(_t, y):
        z, nu = torch.as_tensor(y[:n]), torch.as_tensor(y[n:])
        g = _flat(_grad(loss, _unflat(z, theta)))
        return torch.cat([-lr * g / (nu.sqrt() + eps), (1 - beta2) * (g * g - nu)]).numpy()

    y0 = torch.cat([_flat(theta), nu0]).numpy()
    exact = solve_ivp(rhs, (0, t_end), y0, method="DOP853", rtol=1e-11, atol=1e-13).y[:, -1]
    errors = []
    for dt in (0.5, 0.25):
        res = rmsprop_central_flow(
            loss, theta, nu0, lr=lr, beta2=beta2, eps=eps, t_end=t_end, dt=dt,
            eig_solver=_lanczos_solver,
        )  # fmt: skip
        assert not res.diverged and np.all(res.sigma2 == 0.0)
        assert np.all(res.sharpness * lr / 2 < 0.01)
        y = torch.as_tensor(y0)
        for _ in range(round(t_end / dt)):  # Euler, written out
            y = y + dt * torch.as_tensor(rhs(0, y.numpy()))
        np.testing.assert_allclose(res.theta[-1], y[:n].numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(res.nu[-1], y[n:].numpy(), rtol=1e-12, atol=1e-15)
        got = np.concatenate([res.theta[-1], res.nu[-1]])
        errors.append(float(np.linalg.norm(got - exact)))
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.05), errors


def test_rmsprop_at_the_edge_holds_preconditioned_sharpness_at_2_over_lr():
    """From λ_max(P⁻¹H) = 0.12·2/η the flow sharpens to the edge and stays there with
    σ² > 0; the overshoot of the linearized constraint is first order in dt."""
    loss, theta, nu0, eps = _rmsprop_start()
    lr = 1e-2
    excess = []
    for dt in (0.5, 0.25):
        res = rmsprop_central_flow(
            loss, theta, nu0, lr=lr, beta2=0.9, eps=eps, t_end=100.0, dt=dt,
            eig_solver=_lanczos_solver,
        )  # fmt: skip
        ratio = res.sharpness * lr / 2
        assert not res.diverged and ratio[0] < 0.2
        hit = int(np.argmax(ratio >= 1.0))
        assert 0 < hit < 0.8 * len(ratio)
        assert np.all(res.sigma2[: hit - 1] == 0.0) and np.all(res.sigma2[hit + 1 :] > 0)
        assert np.all(np.abs(ratio[hit:] - 1) < 0.02), ratio[hit:]
        assert np.all(np.diff(res.loss) < 0)
        excess.append(float(np.max(ratio[hit:]) - 1))
    assert 1.5 < excess[0] / excess[1] < 2.5, excess
