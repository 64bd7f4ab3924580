"""The modified (IGR/EGR) gradient g + 2H(μ⊙g): closed form, explicit Hessian, FD error."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from implicit_reg.core.hvp import HVP_METHODS, grad_and_hvp
from implicit_reg.core.modified_gradient import (
    coeff_from_paper_rate,
    default_fd_radius,
    finite_difference_hvp,
    flat_norm,
    igr_coeff,
    modified_gradient_exact,
    modified_gradient_fd,
    paper_rate_from_coeff,
)
from implicit_reg.core.objective import chunk_loss_fns, trainable_named_params

F64 = torch.float64


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _rel(a, b) -> float:
    return float(flat_norm([x.double() - y.double() for x, y in zip(a, b)]) / flat_norm(b))


# --------------------------------------------------------------- closed form
def _quadratic(seed=0, d=6):
    """L(θ) = ½θᵀAθ with A symmetric (indefinite): ∇L = Aθ, H = A."""
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(d, d, generator=gen, dtype=F64)
    a = (b + b.T) / 2
    theta = torch.randn(d, generator=gen, dtype=F64)
    return a, theta


def test_closed_form_quadratic_exact_and_finite_difference():
    """Both methods give ∇L̃ = Aθ + (h/2)A²θ for μ = h/4."""
    a, theta = _quadratic()
    h = 0.3
    expected = a @ theta + (h / 2) * a @ a @ theta
    p = theta.clone().requires_grad_(True)

    def loss_fn(ps):
        return 0.5 * ps[0] @ a @ ps[0]

    for method in HVP_METHODS:
        g, g_mod = modified_gradient_exact(loss_fn, (p,), igr_coeff(h), method=method)
        torch.testing.assert_close(g[0], a @ theta, rtol=0, atol=1e-12)
        torch.testing.assert_close(g_mod[0], expected, rtol=0, atol=1e-10)

    # FD on a quadratic has no truncation error, only round-off: the two
    # gradients carry ~ε‖A‖‖θ‖ each, divided by ε' = r/‖v‖ and scaled by 2μ.
    def grad_at(ps):
        return (a @ ps[0],)

    r = default_fd_radius(F64)
    v_norm = igr_coeff(h) * float(torch.linalg.norm(a @ theta))
    bound = (
        2
        * igr_coeff(h)
        * 4
        * torch.finfo(F64).eps
        * float(torch.linalg.matrix_norm(a, 2) * torch.linalg.norm(theta))
        * v_norm
        / r
        * math.sqrt(len(theta))
    )
    _, g_mod = modified_gradient_fd(grad_at, (theta,), igr_coeff(h))
    err = float(torch.linalg.norm(g_mod[0] - expected))
    assert err <= bound, (err, bound)
    assert bound < 1e-6 * float(torch.linalg.norm(expected))


# ------------------------------------------------------- explicit Hessian
def _tanh_problem(seed=0):
    """3→12→8→2 tanh MLP (170 parameters), 32 rows, float64, MSE written out."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2))
    model = model.double()
    x = torch.randn(32, 3, generator=gen, dtype=F64)
    y = torch.randn(32, 2, generator=gen, dtype=F64)
    return model, lambda out, t: ((out - t) ** 2).mean(), x, y


def _oracle(model, loss_fn, x, y):
    named = trainable_named_params(model)
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]

    def flat_loss(t):
        ps = {n: c.reshape(s) for n, c, s in zip(names, t.split(sizes), shapes)}
        return loss_fn(functional_call(model, ps, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return torch.func.grad(flat_loss)(theta), hessian(flat_loss)(theta), sizes


@pytest.mark.parametrize("method", HVP_METHODS)
def test_exact_modified_gradient_matches_explicit_hessian(method):
    model, loss_fn, x, y = _tanh_problem()
    g, H, sizes = _oracle(model, loss_fn, x, y)
    assert sum(sizes) == 170
    (f,) = chunk_loss_fns(model, loss_fn, (x, y))
    params = tuple(trainable_named_params(model).values())

    mu = 0.07  # one μ for all tensors
    _, g_mod = modified_gradient_exact(f, params, mu, method=method)
    torch.testing.assert_close(_flat(g_mod), g + 2 * mu * H @ g, rtol=0, atol=1e-12)

    mus = [0.01, 0.02, 0.05, 0.0, 0.3, 0.1]  # one μ per tensor: g + 2H(μ⊙g)
    _, g_mod = modified_gradient_exact(f, params, mus, method=method)
    mu_vec = torch.cat([torch.full((n,), m, dtype=F64) for m, n in zip(mus, sizes)])
    torch.testing.assert_close(_flat(g_mod), g + 2 * H @ (mu_vec * g), rtol=0, atol=1e-12)


# ------------------------------------------------------------ FD error
def _fd_problem(act, seed=0, width=64, n=512, d=20, k=5):
    """20→64→64→5 MLP (6.0k parameters), cross-entropy on 512 random rows."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(d, width), act(), nn.Linear(width, width), act(), nn.Linear(width, k)
    ).double()
    x = torch.randn(n, d, generator=gen, dtype=F64)
    y = torch.randint(0, k, (n,), generator=gen)
    return model, x, y


def _fd_errors(model, x, y, radii_by_dtype):
    """Relative error of the FD product H g (v = g) against the exact float64
    product, for each (dtype, radius)."""
    loss_fn = nn.CrossEntropyLoss()
    (f64,) = chunk_loss_fns(model, loss_fn, (x, y))
    _, hv_ref = grad_and_hvp(f64, tuple(trainable_named_params(model).values()))
    errors = []
    for dtype, r in radii_by_dtype:
        m = copy.deepcopy(model).to(dtype)
        (f,) = chunk_loss_fns(m, loss_fn, (x.to(dtype), y))
        params = tuple(trainable_named_params(m).values())

        def grad_at(ps, f=f):
            ps = tuple(p.detach().requires_grad_(True) for p in ps)
            return torch.autograd.grad(f(ps), ps)

        g = grad_at(params)
        errors.append(_rel(finite_difference_hvp(grad_at, params, g, g, radius=r), hv_ref))
    return errors


def test_fd_error_is_first_order_on_a_smooth_model():
    """Forward difference on a C³ loss: error = O(r), fitted slope ≈ 1 over a
    range where round-off (∝ ε/r, below 1e-7 here) does not dominate."""
    model, x, y = _fd_problem(nn.Tanh, width=32, n=256)
    radii = np.logspace(-5, -2, 7)
    errs = _fd_errors(model, x, y, [(F64, r) for r in radii])
    slope = np.polyfit(np.log(radii), np.log(errs), 1)[0]
    assert abs(slope - 1) < 0.1, (slope, errs)
    assert 1e-6 < errs[0] < errs[-1] < 1e-1


def test_fd_error_at_the_default_radius_smooth_and_relu():
    """The measured errors behind ``default_fd_radius`` (docs/optimizers.md),
    on a 6.0k-parameter MLP.

    Smooth (tanh): r = √ε is accurate in both dtypes (~4e-8 in float64,
    ~6e-4 in float32), and a smaller float32 radius is worse (round-off).
    ReLU: accurate in float64 at √ε = 1.5e-8 (no kink crossed), but at
    r = 1e-2 in float64, and at float32's √ε = 3.5e-4, the perturbation
    crosses activation kinks and the error is O(1): no float32 radius is safe.
    """
    r64, r32 = default_fd_radius(F64), default_fd_radius(torch.float32)
    f32 = torch.float32
    tanh, tx, ty = _fd_problem(nn.Tanh)
    relu, rx, ry = _fd_problem(nn.ReLU)
    t64_default, t64_big, t32_default, t32_small = _fd_errors(
        tanh, tx, ty, [(F64, r64), (F64, 1e-2), (f32, r32), (f32, 1e-7)]
    )
    r64_default, r64_big, r32_default = _fd_errors(
        relu, rx, ry, [(F64, r64), (F64, 1e-2), (f32, r32)]
    )
    assert t64_default < 1e-6 and r64_default < 1e-6
    assert t64_big < 1e-2  # smooth: O(r), harmless
    assert r64_big > 0.3  # ReLU: kinks crossed
    assert t32_default < 2e-3  # √ε: the best float32 radius for a smooth loss ...
    assert t32_small > 0.3  # ... a smaller one drowns in round-off
    assert r32_default > 1.0  # ReLU in float32: kinks crossed, O(1) error


def test_fd_hvp_direction_scaling_and_bad_input():
    """ε = r/‖v‖: the result is linear in v (for a quadratic, exactly so up to
    round-off), a zero direction gives zeros, a bad radius raises."""
    a, theta = _quadratic(seed=2)

    def grad_at(ps):
        return (a @ ps[0],)

    g = grad_at((theta,))
    for scale in (1e-6, 1.0, 1e6):
        v = (scale * g[0],)
        (hv,) = finite_difference_hvp(grad_at, (theta,), g, v, radius=1e-6)
        torch.testing.assert_close(hv, a @ v[0], rtol=1e-7, atol=0)
    (zero,) = finite_difference_hvp(grad_at, (theta,), g, (torch.zeros_like(theta),), radius=1e-6)
    assert torch.equal(zero, torch.zeros_like(theta))
    for bad in (0.0, -1e-3, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="radius must be positive and finite"):
            finite_difference_hvp(grad_at, (theta,), g, g, radius=bad)
    with pytest.raises(ValueError, match=r"need one coefficient per tensor \(1\), got 2"):
        modified_gradient_fd(grad_at, (theta,), [0.1, 0.2])


def test_paper_rate_conversion():
    """Barrett & Dherin write λ·R_IG with R_IG = ‖∇L‖²/m; μ‖∇L‖² is the same
    term for λ = μ·m, so μ = h/4 is λ = h·m/4."""
    h, m = 0.2, 1000
    assert paper_rate_from_coeff(igr_coeff(h), m) == pytest.approx(h * m / 4)
    assert coeff_from_paper_rate(paper_rate_from_coeff(0.013, m), m) == pytest.approx(0.013)
    g = torch.randn(m, dtype=F64)
    lam = paper_rate_from_coeff(0.013, m)
    assert float(lam * (g @ g) / m) == pytest.approx(float(0.013 * (g @ g)))
    for fn in (coeff_from_paper_rate, paper_rate_from_coeff):
        with pytest.raises(ValueError, match="num_params must be >= 1, got 0"):
            fn(1.0, 0)
