"""Preconditioned sharpness λ_max(P⁻¹H) against explicit float64 matrices (torch.func.hessian),
P against the Adam/RMSprop recursions written out by hand and against torch.optim's own
update, and the adaptive edge-of-stability threshold against torch.optim on a quadratic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from implicit_reg.probes import (
    HessianOperator,
    MatrixOperator,
    PreconditionedOperator,
    adaptive_eos_threshold,
    adaptive_preconditioner,
    lanczos,
    preconditioned_sharpness,
)

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def build(seed=0, n=24):
    """A float64 tanh MLP 4-5-3 (43 parameters) with squared loss on seeded data."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(n, 4, generator=g, dtype=F64)
    y = torch.randn(n, 3, generator=g, dtype=F64)
    return model, nn.MSELoss(), X, y


def explicit_hessian(model, loss_fn, X, y, names=None):
    named = dict(model.named_parameters())
    names = list(named) if names is None else names
    shapes = [named[k].shape for k in names]
    numels = [named[k].numel() for k in names]
    fixed = {k: p.detach() for k, p in named.items()}

    def loss(flat):
        ps = [c.view(s) for c, s in zip(flat.split(numels), shapes)]
        return loss_fn(functional_call(model, {**fixed, **dict(zip(names, ps))}, (X,)), y)

    theta = torch.cat([named[k].detach().reshape(-1) for k in names])
    return hessian(loss)(theta)


def train(model, loss_fn, X, y, opt, steps):
    """``steps`` full-batch steps; returns the flat gradient of each step."""
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        opt.step()
    return grads


def spectra(H, P):
    """(eigvalsh of P^{-1/2} H P^{-1/2}, real eigenvalues of P⁻¹H), both ascending."""
    d = P.rsqrt()
    A = d[:, None] * H * d[None, :]
    sym = torch.linalg.eigvalsh(A)
    ev = torch.linalg.eigvals(H / P[:, None])
    assert float(ev.imag.abs().max()) <= 1e-9 * float(ev.abs().max())
    return sym, ev.real.sort().values


def snapshot(model, opt):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [p.grad for p in model.parameters()],
        copy.deepcopy(opt.state_dict()),
    )


def assert_unchanged(before, model, opt):
    params, grads, grad_objs, state = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    for p, g, obj in zip(model.parameters(), grads, grad_objs):
        assert p.grad is obj and (g is None or torch.equal(p.grad, g))
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    for i, s in state["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(now["state"][i][key]), torch.as_tensor(v)), key


# ------------------------------------------------------------------ Adam
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioner_is_the_hand_written_recursion(cls, amsgrad):
    model, loss_fn, X, y = build()
    b1, b2, eps = 0.9, 0.95, 1e-4
    opt = cls(model.parameters(), lr=3e-2, betas=(b1, b2), eps=eps, amsgrad=amsgrad)
    grads = train(model, loss_fn, X, y, opt, steps=6)
    v = torch.zeros_like(grads[0])
    vmax = torch.zeros_like(grads[0])
    for g in grads:  # v_t = β₂ v + (1 − β₂) g², v̂ = v_t / (1 − β₂^t)
        v = b2 * v + (1 - b2) * g**2
        vmax = torch.maximum(vmax, v)
    t = len(grads)
    expected = ((vmax if amsgrad else v) / (1 - b2**t)).sqrt() + eps
    P = adaptive_preconditioner(opt, list(model.parameters()))
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in P]), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_preconditioner_is_the_denominator_of_torchs_update(amsgrad):
    """After step t: θ_t − θ_{t−1} = −lr/(1 − β₁^t) · m_t / P_t, with P_t read from the state."""
    model, loss_fn, X, y = build(seed=1)
    b1 = 0.8
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(b1, 0.99), eps=1e-6, amsgrad=amsgrad)
    train(model, loss_fn, X, y, opt, steps=4)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, loss_fn, X, y, opt, steps=1)
    P = adaptive_preconditioner(opt, list(model.parameters()))
    for p, p0, pc in zip(model.parameters(), before, P):
        m = opt.state[p]["exp_avg"]
        t = float(opt.state[p]["step"])
        torch.testing.assert_close(p.detach() - p0, -1e-2 / (1 - b1**t) * m / pc, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "kw",
    [
        {"bias_correction": True, "eps_placement": "outside"},
        {"bias_correction": False, "eps_placement": "outside"},
        {"bias_correction": True, "eps_placement": "inside"},
        {"bias_correction": False, "eps_placement": "inside"},
    ],
)
def test_implicit_reg_adam_preconditioner_is_the_denominator_of_its_update(kw):
    """implicit_reg.Adam: θ_t − θ_{t−1} = −lr/b₁ · m_t / P_t, b₁ = 1 − β₁^t or 1, with
    P_t = ψ(v_t/b₂) read from its state (ε inside or outside the root); with torch's
    settings P is torch.optim.Adam's, and the threshold is the same."""
    from implicit_reg import Adam

    model, loss_fn, X, y = build(seed=2)
    b1, eps = 0.8, 1e-3
    opt = Adam(model.parameters(), lr=1e-2, betas=(b1, 0.99), eps=eps, **kw)
    train(model, loss_fn, X, y, opt, steps=4)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, loss_fn, X, y, opt, steps=1)
    P = adaptive_preconditioner(opt, list(model.parameters()))
    for p, p0, pc in zip(model.parameters(), before, P):
        t = float(opt.state[p]["step"])
        c1 = 1 - b1**t if kw["bias_correction"] else 1.0
        step = -1e-2 / c1 * opt.state[p]["exp_avg"] / pc
        torch.testing.assert_close(p.detach() - p0, step, rtol=1e-9, atol=0)
    assert adaptive_eos_threshold(opt) == pytest.approx((2 + 2 * b1) / ((1 - b1) * 1e-2))
    if kw == {"bias_correction": True, "eps_placement": "outside"}:
        twin, *_ = build(seed=2)
        ref = torch.optim.Adam(twin.parameters(), lr=1e-2, betas=(b1, 0.99), eps=eps)
        train(twin, loss_fn, X, y, ref, steps=5)
        for a, b in zip(P, adaptive_preconditioner(ref, list(twin.parameters()))):
            assert torch.equal(a, b)


@pytest.mark.parametrize("block_size", [1, 3])
def test_preconditioned_sharpness_from_adam_matches_explicit_matrix(block_size):
    model, loss_fn, X, y = build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2, betas=(0.9, 0.99), eps=1e-5)
    train(model, loss_fn, X, y, opt, steps=5)
    H = explicit_hessian(model, loss_fn, X, y)
    P = torch.cat([p.reshape(-1) for p in adaptive_preconditioner(opt, list(model.parameters()))])
    sym, nonsym = spectra(H, P)
    torch.testing.assert_close(sym, nonsym, rtol=1e-8, atol=1e-8 * float(sym.abs().max()))
    # P⁻¹H is far from H: the preconditioned sharpness is a different number
    assert float(sym[-1]) > 5 * float(torch.linalg.eigvalsh(H)[-1])

    before = snapshot(model, opt)
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=10)
    res = preconditioned_sharpness(op, opt, k=3, block_size=block_size)
    assert res.converged
    top = sym.flip(0)[:3]
    torch.testing.assert_close(res.eigenvalues, top, rtol=1e-9, atol=0)
    assert float(res.residuals.max()) <= 1e-7 * float(top[0])
    assert_unchanged(before, model, opt)

    # the mapped eigenvectors are right eigenvectors of P⁻¹H
    pre = PreconditionedOperator.from_optimizer(op, opt)
    W = pre.parameter_directions(res.eigenvectors)
    torch.testing.assert_close(
        (H / P[:, None]) @ W, W * res.eigenvalues[None, :], rtol=0, atol=1e-7 * float(top[0])
    )
    torch.testing.assert_close(W.norm(dim=0), torch.ones(3, dtype=F64))
    # and the operator itself is the dense P^{-1/2} H P^{-1/2}
    A = pre.matmat(torch.eye(op.dim, dtype=F64))
    d = P.rsqrt()
    torch.testing.assert_close(A, d[:, None] * H * d[None, :], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pre.matvec(A[:, 0]), A @ A[:, 0], rtol=1e-10, atol=1e-12)


def test_parameter_subset_uses_the_subsets_preconditioner():
    model, loss_fn, X, y = build(seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)
    train(model, loss_fn, X, y, opt, steps=3)
    names = ["2.weight", "2.bias"]
    op = HessianOperator(model, loss_fn, (X, y), params="2.*")
    assert op.names == names
    H = explicit_hessian(model, loss_fn, X, y, names=names)
    named = dict(model.named_parameters())
    P = torch.cat([p.reshape(-1) for p in adaptive_preconditioner(opt, [named[n] for n in names])])
    sym, _ = spectra(H, P)
    res = preconditioned_sharpness(op, opt)
    torch.testing.assert_close(res.eigenvalues[0], sym[-1], rtol=1e-9, atol=0)


# --------------------------------------------------------------- RMSprop
@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_preconditioner_and_sharpness(centered):
    model, loss_fn, X, y = build(seed=3)
    alpha, eps, lr = 0.9, 1e-4, 1e-2
    opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=alpha, eps=eps, centered=centered)
    grads = train(model, loss_fn, X, y, opt, steps=5)
    sq = torch.zeros_like(grads[0])
    ga = torch.zeros_like(grads[0])
    for g in grads:  # no bias correction in RMSprop
        sq = alpha * sq + (1 - alpha) * g**2
        ga = alpha * ga + (1 - alpha) * g
    expected = ((sq - ga**2) if centered else sq).sqrt() + eps
    plist = adaptive_preconditioner(opt, list(model.parameters()))
    P = torch.cat([p.reshape(-1) for p in plist])
    torch.testing.assert_close(P, expected, rtol=1e-12, atol=0)

    # P is the denominator of torch's next update (momentum 0): Δθ = −lr·g/P
    before_theta = [p.detach().clone() for p in model.parameters()]
    g = train(model, loss_fn, X, y, opt, steps=1)[0]
    P1 = torch.cat([p.reshape(-1) for p in adaptive_preconditioner(opt, list(model.parameters()))])
    delta = torch.cat(
        [(p.detach() - q).reshape(-1) for p, q in zip(model.parameters(), before_theta)]
    )
    torch.testing.assert_close(delta, -lr * g / P1, rtol=1e-9, atol=0)

    H = explicit_hessian(model, loss_fn, X, y)
    sym, nonsym = spectra(H, P1)
    torch.testing.assert_close(sym, nonsym, rtol=1e-8, atol=1e-8 * float(sym.abs().max()))
    before = snapshot(model, opt)
    res = preconditioned_sharpness(HessianOperator(model, loss_fn, (X, y)), opt, k=2)
    torch.testing.assert_close(res.eigenvalues, sym.flip(0)[:2], rtol=1e-9, atol=0)
    assert_unchanged(before, model, opt)


def test_centered_reads_grad_avg():
    """The same centered state read as uncentered gives √v + ε > √(v − g̅²) + ε."""
    model, loss_fn, X, y = build(seed=4)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, centered=True)
    train(model, loss_fn, X, y, opt, steps=3)
    params = list(model.parameters())
    centered = torch.cat([p.reshape(-1) for p in adaptive_preconditioner(opt, params)])
    opt.param_groups[0]["centered"] = False
    plain = torch.cat([p.reshape(-1) for p in adaptive_preconditioner(opt, params)])
    assert bool((centered < plain).all())


# ------------------------------------------------------------ user-given P
def test_user_given_preconditioner_flat_and_list():
    model, loss_fn, X, y = build(seed=5)
    op = HessianOperator(model, loss_fn, (X, y))
    H = explicit_hessian(model, loss_fn, X, y)
    g = torch.Generator().manual_seed(0)
    P = torch.rand(op.dim, generator=g, dtype=F64) * 10 + 0.1
    sym, nonsym = spectra(H, P)
    torch.testing.assert_close(sym, nonsym, rtol=1e-8, atol=1e-8 * float(sym.abs().max()))
    flat = preconditioned_sharpness(op, precond=P, k=2)
    lst = preconditioned_sharpness(op, precond=list(op.unflatten(P)), k=2)
    torch.testing.assert_close(flat.eigenvalues, sym.flip(0)[:2], rtol=1e-9, atol=0)
    torch.testing.assert_close(lst.eigenvalues, flat.eigenvalues, rtol=1e-12, atol=0)
    # smallest too (P⁻¹H is indefinite here as H is)
    low = preconditioned_sharpness(op, precond=P, which="SA")
    torch.testing.assert_close(low.eigenvalues[0], sym[0], rtol=1e-8, atol=1e-9)
    # P = I gives λ_max(H); P = c·I scales it by 1/c
    ones = preconditioned_sharpness(op, precond=torch.ones(op.dim, dtype=F64))
    lam = torch.linalg.eigvalsh(H)[-1]
    torch.testing.assert_close(ones.eigenvalues[0], lam, rtol=1e-9, atol=0)
    four = preconditioned_sharpness(op, precond=torch.full((op.dim,), 4.0, dtype=F64))
    torch.testing.assert_close(four.eigenvalues[0], lam / 4, rtol=1e-9, atol=0)


def test_wraps_any_operator_and_counts_hvps():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(12, 12, generator=g, dtype=F64)
    H = B @ B.T
    P = torch.rand(12, generator=g, dtype=F64) + 0.5
    base = MatrixOperator(H)
    pre = PreconditionedOperator(base, P)
    res = lanczos(pre, k=1)
    assert pre.n_hvp == base.n_hvp == res.n_hvp > 0
    torch.testing.assert_close(res.eigenvalues[0], spectra(H, P)[0][-1], rtol=1e-10, atol=0)


# ------------------------------------------------------------- bad inputs
def test_bad_inputs():
    model, loss_fn, X, y = build(seed=6)
    op = HessianOperator(model, loss_fn, (X, y))
    ones = torch.ones(op.dim, dtype=F64)
    for bad in (
        ones * 0,
        -ones,
        torch.where(torch.arange(op.dim) == 3, torch.nan, 1.0).double(),
        torch.where(torch.arange(op.dim) == 3, torch.inf, 1.0).double(),
    ):
        with pytest.raises(ValueError, match="finite and positive"):
            PreconditionedOperator(op, bad)
    with pytest.raises(ValueError, match="shape"):
        PreconditionedOperator(op, ones[:-1])
    with pytest.raises(ValueError, match="shape"):
        PreconditionedOperator(op, ones[:, None])
    with pytest.raises(ValueError, match="one tensor per measured parameter"):
        PreconditionedOperator(op, [torch.ones(3, dtype=F64)])
    with pytest.raises(ValueError, match="precond must be"):
        PreconditionedOperator(op, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        preconditioned_sharpness(op)
    pre = PreconditionedOperator(op, ones)
    with pytest.raises(ValueError, match="expected shape"):
        pre.matvec(ones[:-1])
    with pytest.raises(ValueError, match="expected shape"):
        pre.matmat(ones)

    # an optimizer before its first step has no preconditioner yet
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="no state .* first optimizer.step"):
        preconditioned_sharpness(op, adam)
    with pytest.raises(ValueError, match="exactly one"):
        preconditioned_sharpness(op, adam, precond=ones)
    # unsupported optimizers
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Adam, AdamW .* RMSprop"):
        preconditioned_sharpness(op, sgd)
    with pytest.raises(ValueError, match="Adam, AdamW .* RMSprop"):
        adaptive_eos_threshold(sgd)
    # an optimizer of another model
    other = build(seed=7)[0]
    foreign = torch.optim.Adam(other.parameters())
    train(other, loss_fn, X, y, foreign, steps=1)
    with pytest.raises(ValueError, match="not in the optimizer's param_groups"):
        preconditioned_sharpness(op, foreign)
    # eps = 0 and a zero second moment: P = 0
    zero = torch.optim.Adam(model.parameters(), eps=0.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    zero.step()
    with pytest.raises(ValueError, match="not finite and positive"):
        preconditioned_sharpness(op, zero)
    # a plain operator has no model to read an optimizer against
    with pytest.raises(ValueError, match="CurvatureOperator"):
        preconditioned_sharpness(MatrixOperator(torch.eye(3, dtype=F64)), zero)
    with pytest.raises(ValueError, match="group must be"):
        adaptive_eos_threshold(zero, group=1)


# -------------------------------------------------------------- threshold
def test_threshold_formula():
    model = build()[0]
    adam = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    assert adaptive_eos_threshold(adam) == pytest.approx(38 / 2e-3, rel=1e-14)
    adamw = torch.optim.AdamW(
        [
            {"params": [model[0].weight]},
            {"params": [model[0].bias], "lr": 1e-2, "betas": (0.5, 0.9)},
        ],
        lr=1e-3,
    )
    assert adaptive_eos_threshold(adamw, group=1) == pytest.approx(3 / 0.5 / 1e-2 * 1.0, rel=1e-14)
    rms = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    assert adaptive_eos_threshold(rms) == pytest.approx(200.0, rel=1e-14)
    rms_m = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.5)
    assert adaptive_eos_threshold(rms_m) == pytest.approx(300.0, rel=1e-14)


def _grows(opt_cls, a, steps=600, window=200, **kw):
    """|θ_T| / |θ_{T−window}| of torch.optim on L = a·θ²/2 with eps = 1, after the
    start-up transient (Adam's bias correction). From θ₀ = 1e-200 the squared
    gradients stay below 1e-24, so P = eps = 1 and λ(P⁻¹H) = a to 1e-12 (a larger θ₀
    lets P grow with |g| and self-stabilize: the adaptive edge of stability itself)."""
    theta = torch.tensor([1e-200], dtype=F64, requires_grad=True)
    opt = opt_cls([theta], eps=1.0, **kw)
    for i in range(steps):
        if i == steps - window:
            start = float(theta.detach().abs())
        opt.zero_grad()
        (0.5 * a * theta**2).sum().backward()
        opt.step()
    v = opt.state[theta]["square_avg" if "alpha" in opt.defaults else "exp_avg_sq"]
    assert float(v) < 1e-24  # √v̂ < 1e-12 · eps: P = 1 to 1e-12
    return float(theta.detach().abs()) / start


@pytest.mark.parametrize(
    "opt_cls,kw",
    [
        (torch.optim.Adam, dict(lr=0.01, betas=(0.9, 0.999))),
        (torch.optim.Adam, dict(lr=0.05, betas=(0.5, 0.999))),
        (torch.optim.RMSprop, dict(lr=0.1)),
        (torch.optim.RMSprop, dict(lr=0.1, momentum=0.6)),
    ],
)
def test_threshold_is_where_torchs_optimizer_turns_unstable(opt_cls, kw):
    """On a quadratic with λ(P⁻¹H) = a (P ≈ 1), torch's own optimizer converges at
    a = 0.97·threshold and diverges at 1.03·threshold."""
    thr = adaptive_eos_threshold(opt_cls([torch.zeros(1, requires_grad=True)], **kw))
    assert _grows(opt_cls, 0.97 * thr, **kw) < 1e-3
    assert _grows(opt_cls, 1.03 * thr, **kw) > 1e3
