"""The pure update rules of ``implicit_reg.core.updates`` and EGR's chunked forms.

Oracles: the EGR update written out with an explicit float64 Hessian from
``torch.func.hessian`` over the flat parameter vector (independent of the
package's HVP), and today's engine functions for the chunked and micro-batch
steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from implicit_reg.core.modified_gradient import egr_direction_chunked
from implicit_reg.core.optim import EGR
from implicit_reg.core.updates import egr_update, gd_update, sgd_update

F64 = torch.float64


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)


def _data(n=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


def _flat_loss(model, x, y):
    """L(θ) over the flat parameter vector, and θ flat."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(flat):
        parts = torch.split(flat, sizes)
        state = {k: t.reshape(s) for k, t, s in zip(names, parts, shapes)}
        return ((functional_call(model, state, (x,)) - y) ** 2).mean()

    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _explicit_egr(model, x, y, lr, mus):
    """θ − h(g + 2H(μ⊙g)) with H from torch.func.hessian (float64), flat; μ per tensor."""
    f, theta = _flat_loss(model, x, y)
    theta = theta.clone().requires_grad_(True)
    g = torch.autograd.grad(f(theta), theta)[0]
    H = hessian(f)(theta.detach())
    mu = torch.cat(
        [torch.full((p.numel(),), m, dtype=F64) for p, m in zip(model.parameters(), mus)]
    )
    return theta.detach() - lr * (g + 2 * H @ (mu * g)), g, H


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_egr_update_matches_explicit_hessian():
    model = _model()
    x, y = _data()
    lr = 0.3
    expected, g, _ = _explicit_egr(model, x, y, lr, [lr / 4] * 4)
    params = list(model.parameters())
    f_ps = lambda _: ((model(x) - y) ** 2).mean()  # noqa: E731
    from implicit_reg.core.modified_gradient import egr_direction_exact

    gs, hv = egr_direction_exact(f_ps, params, lr / 4)
    with torch.no_grad():
        egr_update(params, gs, hv, lr=lr)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [[13], [5, 8], [4, 4, 4, 1], [1] * 13])
def test_chunked_full_penalty_is_the_unchunked_step(sizes):
    """penalty='full' over any chunking is the explicit-Hessian EGR step on the whole loss."""
    model = _model()
    x, y = _data()
    lr, coeff = 0.2, 0.07
    expected, _, _ = _explicit_egr(model, x, y, lr, [coeff] * 4)
    opt = EGR(model.parameters(), lr=lr, coeff=coeff)
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    chunks = [
        ((b - a) / len(x), lambda a=a, b=b: ((model(x[a:b]) - y[a:b]) ** 2).mean())
        for a, b in zip(bounds, bounds[1:])
    ]
    loss = opt.step(chunks=chunks)
    torch.testing.assert_close(_flat(model), expected, rtol=1e-12, atol=1e-12)
    f, _ = _flat_loss(_model(), x, y)
    torch.testing.assert_close(loss, f(_flat(_model())), rtol=1e-12, atol=1e-12)


def test_per_chunk_penalty_matches_explicit_hessians():
    """penalty='per_chunk': θ − h(g + 2Σ_j w_j H_j(μ g_j)) with H_j explicit (Smith et al. 2021)."""
    model = _model()
    x, y = _data()
    lr, coeff = 0.2, 0.05
    bounds = [0, 4, 9, 13]
    f_all, theta = _flat_loss(model, x, y)
    th = theta.clone().requires_grad_(True)
    g = torch.autograd.grad(f_all(th), th)[0]
    pen = torch.zeros_like(theta)
    for a, b in zip(bounds, bounds[1:]):
        fj, _ = _flat_loss(model, x[a:b], y[a:b])
        tj = theta.clone().requires_grad_(True)
        gj = torch.autograd.grad(fj(tj), tj)[0]
        pen += (b - a) / len(x) * hessian(fj)(theta) @ (coeff * gj)
    expected = theta - lr * (g + 2 * pen)
    opt = EGR(model.parameters(), lr=lr, coeff=coeff)
    chunks = [
        ((b - a) / len(x), lambda a=a, b=b: ((model(x[a:b]) - y[a:b]) ** 2).mean())
        for a, b in zip(bounds, bounds[1:])
    ]
    opt.step(chunks=chunks, penalty="per_chunk")
    torch.testing.assert_close(_flat(model), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.cat([p.grad.reshape(-1) for p in model.parameters()]), g, rtol=1e-12, atol=1e-12
    )


def test_direction_chunked_checks_its_input():
    p = torch.zeros(2, requires_grad=True)
    f = lambda ps: (ps[0] ** 2).sum()  # noqa: E731
    with pytest.raises(ValueError, match="sum to 1"):
        egr_direction_chunked([(0.5, f)], [p], 0.1)
    with pytest.raises(ValueError, match="empty"):
        egr_direction_chunked([], [p], 0.1)
    with pytest.raises(ValueError, match="unknown EGR penalty 'mean'"):
        egr_direction_chunked([(1.0, f)], [p], 0.1, penalty="mean")
    with pytest.raises(ValueError, match=r"\(weight, closure\) pair"):
        egr_direction_chunked([f], [p], 0.1)
    opt = EGR([p], lr=0.1)
    with pytest.raises(ValueError, match="needs chunks"):
        opt.step(lambda: (p**2).sum(), penalty="per_chunk")
    with pytest.raises(ValueError, match="not both"):
        opt.step(lambda: (p**2).sum(), chunks=[(1.0, lambda: (p**2).sum())])


def test_tensor_lr_broadcasts_over_stacked_members():
    """lr of shape [M] moves member m of stacked [M, ...] parameters by h_m (the ensemble form)."""
    torch.manual_seed(0)
    ps = [torch.randn(3, 4, 2, dtype=F64), torch.randn(3, 5, dtype=F64)]
    gs = [torch.randn_like(p) for p in ps]
    hs = [torch.randn_like(p) for p in ps]
    lr = torch.tensor([0.1, 0.0, 2.0], dtype=F64)
    for rule in ("gd", "sgd", "egr"):
        got = [p.clone() for p in ps]
        if rule == "gd":
            gd_update(got, gs, lr=lr)
        elif rule == "sgd":
            sgd_update(
                got,
                gs,
                [None, None],
                lr=lr,
                momentum=0.0,
                dampening=0.0,
                nesterov=False,
                weight_decay=0.0,
            )
        else:
            egr_update(got, gs, hs, lr=lr)
        for p, q, g, h in zip(ps, got, gs, hs):
            d = g + 2.0 * h if rule == "egr" else g
            for m in range(3):
                want = p[m].clone().add_(d[m], alpha=-float(lr[m]))
                torch.testing.assert_close(q[m], want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="does not lead parameter shape"):
        gd_update([torch.zeros(4, 2)], [torch.zeros(4, 2)], lr=torch.ones(3))


def test_scalar_tensor_lr_is_the_float_step():
    torch.manual_seed(0)
    p = torch.randn(7)
    g = torch.randn(7)
    a, b = p.clone(), p.clone()
    gd_update([a], [g], lr=0.37)
    gd_update([b], [g], lr=torch.tensor(0.37))
    assert torch.equal(a, b)


def test_finite_difference_chunks_approximate_the_explicit_step():
    """method='finite_difference' with chunks: the forward difference of the chunked gradient."""
    model = _model()
    x, y = _data()
    lr, coeff = 0.2, 0.07
    expected, _, _ = _explicit_egr(model, x, y, lr, [coeff] * 4)
    before = _flat(model)
    opt = EGR(model.parameters(), lr=lr, coeff=coeff, method="finite_difference", fd_radius=1e-6)
    chunks = [
        (a.numel() / x.numel(), lambda a=a, b=b: ((model(a) - b) ** 2).mean())
        for a, b in zip(x.split(5), y.split(5))
    ]
    opt.step(chunks=chunks)
    step, want = _flat(model) - before, expected - before
    assert float((step - want).norm() / want.norm()) < 1e-5
    with pytest.raises(ValueError, match="penalty='per_chunk' needs method='exact'"):
        opt.step(chunks=chunks, penalty="per_chunk")
