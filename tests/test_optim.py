"""GD, SGD and EGR as torch optimizers: math, equivalences, training-loop plumbing, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.core.modified_gradient import default_fd_radius, modified_gradient_fd
from implicit_reg.core.objective import chunk_loss_fns, trainable_named_params
from implicit_reg.core.optim import EGR, GD, SGD

F64 = torch.float64
METHODS = ("exact", "finite_difference")
FD_TOL = 1e-6  # relative error of the FD modified gradient in float64 (measured ~1e-8)


def _mlp(seed=0, d_in=4, width=8, d_out=3, act=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, width), act(), nn.Linear(width, width), act(), nn.Linear(width, d_out)
    ).double()


def _data(seed=0, n=32, d_in=4, d_out=3):
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(n, d_in, generator=gen, dtype=F64)
    return x, torch.randn(n, d_out, generator=gen, dtype=F64)


def _mse(out, y):
    return ((out - y) ** 2).mean()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _assert_equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y), float((x - y).abs().max())


def _oracle(model, x, y, loss_fn=_mse):
    """(θ, ∇L, H) on the flattened trainable parameters, H by torch.func.hessian."""
    named = trainable_named_params(model)
    names, shapes = list(named), [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]

    def flat_loss(t):
        ps = {n: c.reshape(s) for n, c, s in zip(names, t.split(sizes), shapes)}
        return loss_fn(functional_call(model, ps, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return theta, torch.func.grad(flat_loss)(theta), hessian(flat_loss)(theta), sizes


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _egr_closure(model, x, y, loss_fn=_mse):
    return lambda: loss_fn(model(x), y)


# ---------------------------------------------------------------- the math
@pytest.mark.parametrize("method", METHODS)
def test_egr_step_on_a_quadratic_is_the_closed_form(method):
    """L = ½θᵀAθ: one EGR step with μ = h/4 is θ − h(Aθ + (h/2)A²θ)."""
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(5, 5, generator=gen, dtype=F64)
    a = (b + b.T) / 2
    theta0 = torch.randn(5, generator=gen, dtype=F64)
    p = nn.Parameter(theta0.clone())
    h = 0.2
    opt = EGR([p], lr=h, method=method)
    loss = opt.step(lambda: 0.5 * p @ a @ p)
    expected = theta0 - h * (a @ theta0 + (h / 2) * a @ a @ theta0)
    tol = 1e-12 if method == "exact" else FD_TOL * float(torch.linalg.norm(theta0 - expected))
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=tol)
    torch.testing.assert_close(p.grad, a @ theta0, rtol=0, atol=1e-13)  # .grad holds ∇L
    assert float(loss) == pytest.approx(float(0.5 * theta0 @ a @ theta0), rel=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_egr_step_matches_explicit_hessian(method):
    """On a 4→8→8→3 tanh net (139 parameters): θ₁ = θ₀ − h(g + 2μHg)."""
    model = _mlp()
    x, y = _data()
    theta, g, H, sizes = _oracle(model, x, y)
    assert sum(sizes) == 139
    h, mu = 0.1, 0.3
    opt = EGR(model.parameters(), lr=h, coeff=mu, method=method)
    opt.step(_egr_closure(model, x, y))
    g_mod = g + 2 * mu * H @ g
    tol = 1e-12 if method == "exact" else FD_TOL * float(torch.linalg.norm(h * g_mod))
    torch.testing.assert_close(
        _flat(model.parameters()).detach(), theta - h * g_mod, rtol=0, atol=tol
    )
    torch.testing.assert_close(_flat([p.grad for p in model.parameters()]), g, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_param_groups_have_their_own_lr_and_coeff(method):
    """Groups (lr_j, μ_j): θ ← θ − lr⊙(g + 2H(μ⊙g)); a coeff=None group uses μ = lr/4."""
    model = _mlp(seed=1)
    x, y = _data(seed=1)
    theta, g, H, sizes = _oracle(model, x, y)
    first, rest = list(model[0].parameters()), list(model[2:].parameters())
    opt = EGR(
        [{"params": first, "lr": 0.05, "coeff": 0.4}, {"params": rest, "lr": 0.2}],
        lr=0.2,
        method=method,
    )
    opt.step(_egr_closure(model, x, y))
    n_first = sum(p.numel() for p in first)
    n_rest = len(theta) - n_first
    lr = torch.cat([torch.full((n_first,), 0.05, dtype=F64), torch.full((n_rest,), 0.2, dtype=F64)])
    mu = torch.cat([torch.full((n_first,), 0.4, dtype=F64), torch.full((n_rest,), 0.05, dtype=F64)])
    step = lr * (g + 2 * H @ (mu * g))
    tol = 1e-12 if method == "exact" else FD_TOL * float(torch.linalg.norm(step))
    torch.testing.assert_close(_flat(model.parameters()).detach(), theta - step, rtol=0, atol=tol)


def test_lr_scheduler_changes_the_step_and_mu_follows_lr():
    """With coeff=None the scheduler's new lr h' gives μ = h'/4; a fixed coeff stays."""
    for coeff in (None, 0.3):
        model = _mlp(seed=2)
        x, y = _data(seed=2)
        opt = EGR(model.parameters(), lr=0.4, coeff=coeff)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.25)
        opt.step(_egr_closure(model, x, y))
        sched.step()
        h = opt.param_groups[0]["lr"]
        assert h == pytest.approx(0.1)
        theta, g, H, _ = _oracle(model, x, y)
        opt.step(_egr_closure(model, x, y))
        mu = h / 4 if coeff is None else coeff
        expected = theta - h * (g + 2 * mu * H @ g)
        torch.testing.assert_close(_flat(model.parameters()).detach(), expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------- equivalences
@pytest.mark.parametrize("method", METHODS)
def test_egr_with_zero_coeff_is_gd(method):
    model_a, model_b = _mlp(seed=3), _mlp(seed=3)
    x, y = _data(seed=3)
    egr = EGR(model_a.parameters(), lr=0.3, coeff=0.0, method=method)
    gd = GD(model_b.parameters(), lr=0.3)

    def gd_closure():
        gd.zero_grad()
        loss = _mse(model_b(x), y)
        loss.backward()
        return loss

    for _ in range(5):
        loss_a = egr.step(_egr_closure(model_a, x, y))
        loss_b = gd.step(gd_closure)
        assert torch.equal(loss_a, loss_b.detach())
    _assert_equal(model_a.parameters(), model_b.parameters())


SGD_CONFIGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.5, "weight_decay": 0.01},
    {"momentum": 0.8, "dampening": 0.1, "weight_decay": 0.05},
    {"momentum": 0.7, "nesterov": True, "weight_decay": 0.02},
    {"weight_decay": 0.1},
]


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: ",".join(c) or "plain")
def test_sgd_matches_torch_sgd_for_20_steps(config):
    model_a, model_b = _mlp(seed=4), _mlp(seed=4)
    ours = SGD(model_a.parameters(), lr=0.05, **config)
    ref = torch.optim.SGD(model_b.parameters(), lr=0.05, **config)
    for step in range(20):
        x, y = _data(seed=step, n=8)  # a new minibatch each step
        for model, opt in ((model_a, ours), (model_b, ref)):
            opt.zero_grad()
            _mse(model(x), y).backward()
            opt.step()
    _assert_equal(model_a.parameters(), model_b.parameters())
    if config.get("momentum"):
        for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
            assert torch.equal(
                ours.state[p_a]["momentum_buffer"], ref.state[p_b]["momentum_buffer"]
            )


# ----------------------------------------------------- training-loop plumbing
@pytest.mark.parametrize(
    "make",
    [
        lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
        lambda ps: EGR(ps, lr=0.2),
        lambda ps: EGR(ps, lr=0.2, coeff=0.1, method="finite_difference"),
    ],
    ids=["SGD", "EGR-exact", "EGR-fd"],
)
def test_state_dict_round_trip(make):
    """Save mid-training, load into a fresh optimizer (built with other
    hyperparameters), then step both side by side: the weights stay equal."""
    x, y = _data(seed=5)
    model = _mlp(seed=5)
    opt = make(model.parameters())
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)

    def step(m, o):
        if isinstance(o, EGR):
            return o.step(_egr_closure(m, x, y))
        o.zero_grad()
        _mse(m(x), y).backward()
        return o.step()

    for _ in range(3):
        step(model, opt)
        sched.step()
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    twin = copy.deepcopy(model)
    fresh = make(twin.parameters())
    for group in fresh.param_groups:  # make sure load_state_dict is what restores them
        group["lr"] = 99.0
    fresh_sched = torch.optim.lr_scheduler.ExponentialLR(fresh, gamma=0.9)
    fresh.load_state_dict(saved_opt)
    fresh_sched.load_state_dict(saved_sched)
    assert fresh.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(4):
        step(model, opt)
        sched.step()
        step(twin, fresh)
        fresh_sched.step()
    _assert_equal(model.parameters(), twin.parameters())


def test_egr_in_a_dataloader_loop():
    """Stock minibatch loop: DataLoader, scheduler, EGR. Each update is the
    modified gradient of that batch's loss, and training makes progress."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(96, 4, generator=gen, dtype=F64)
    y = torch.sin(x[:, :3])
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=gen)
    model = _mlp(seed=6)
    opt = EGR(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    start = float(_mse(model(x), y).detach())
    for epoch in range(6):
        for i, (xb, yb) in enumerate(loader):
            if epoch == 0 and i == 0:  # check one update against the explicit Hessian
                theta, g, H, _ = _oracle(model, xb, yb)
            opt.step(lambda xb=xb, yb=yb: _mse(model(xb), yb))
            if epoch == 0 and i == 0:
                expected = theta - 0.5 * (g + 2 * (0.5 / 4) * H @ g)
                torch.testing.assert_close(
                    _flat(model.parameters()).detach(), expected, rtol=0, atol=1e-12
                )
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5**2)
    assert float(_mse(model(x), y).detach()) < 0.6 * start


# ------------------------------------------------ finite-difference contract
def test_fd_restores_theta_bit_for_bit_and_equals_the_formula():
    model = _mlp(seed=7)
    x, y = _data(seed=7)
    before = _params(model)
    EGR(model.parameters(), lr=0.0, coeff=0.5, method="finite_difference").step(
        _egr_closure(model, x, y)
    )
    _assert_equal(model.parameters(), before)  # lr = 0: θ is exactly θ again

    h, mu = 0.1, 0.5
    (f,) = chunk_loss_fns(model, _mse, (x, y))

    def grad_at(ps):
        ps = tuple(p.detach().requires_grad_(True) for p in ps)
        return torch.autograd.grad(f(ps), ps)

    _, g_mod = modified_gradient_fd(grad_at, before, mu, radius=default_fd_radius(F64))
    expected = [p.clone().add_(gm, alpha=-h) for p, gm in zip(before, g_mod)]
    EGR(model.parameters(), lr=h, coeff=mu, method="finite_difference").step(
        _egr_closure(model, x, y)
    )
    _assert_equal(model.parameters(), expected)


def test_fd_accepts_a_torch_style_closure():
    model_a, model_b = _mlp(seed=8), _mlp(seed=8)
    x, y = _data(seed=8)
    opt_a = EGR(model_a.parameters(), lr=0.1, coeff=0.2, method="finite_difference")
    opt_b = EGR(model_b.parameters(), lr=0.1, coeff=0.2, method="finite_difference")

    def torch_style():
        opt_b.zero_grad()
        loss = _mse(model_b(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt_a.step(_egr_closure(model_a, x, y))
        opt_b.step(torch_style)
    _assert_equal(model_a.parameters(), model_b.parameters())


def _bn_model(seed=9):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("method", METHODS)
def test_batchnorm_statistics_updated_once_per_step(method):
    x, y = _data(seed=9)
    model, ref = _bn_model(), _bn_model()
    ref(x)  # what one forward pass in train mode does to the buffers
    opt = EGR(model.parameters(), lr=0.1, method=method, module=model)
    opt.step(_egr_closure(model, x, y))
    for (name, b), (_, b_ref) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(b, b_ref), name
    assert int(model[1].num_batches_tracked) == 1


def test_fd_without_module_updates_batchnorm_twice():
    """Documented behaviour: the buffers are only protected when ``module`` is given."""
    x, y = _data(seed=9)
    model = _bn_model()
    EGR(model.parameters(), lr=0.1, method="finite_difference").step(_egr_closure(model, x, y))
    assert int(model[1].num_batches_tracked) == 2


def test_dropout_sees_the_same_mask_in_both_fd_evaluations():
    """FD and exact EGR steps from the same RNG state agree to FD accuracy: a
    different mask in the second evaluation would make ∇L(θ+δ) − ∇L(θ) O(1),
    an error of O(1/r). Afterwards the RNG is where one evaluation leaves it."""
    x, y = _data(seed=10)
    torch.manual_seed(10)
    base = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3)).double()
    start = _params(base)
    results, rng_after = {}, {}
    for method in METHODS:
        model = copy.deepcopy(base)
        opt = EGR(model.parameters(), lr=0.1, coeff=0.5, method=method)
        torch.manual_seed(123)
        opt.step(_egr_closure(model, x, y))
        rng_after[method] = torch.get_rng_state()
        results[method] = _params(model)
    step = torch.linalg.norm(_flat(results["exact"]) - _flat(start))
    err = torch.linalg.norm(_flat(results["finite_difference"]) - _flat(results["exact"]))
    assert float(err) < FD_TOL * float(step)
    assert torch.equal(rng_after["exact"], rng_after["finite_difference"])


def test_egr_skips_frozen_parameters_and_returns_the_loss():
    model = _mlp(seed=11)
    x, y = _data(seed=11)
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = EGR(model.parameters(), lr=0.1)
    loss = opt.step(_egr_closure(model, x, y))
    assert torch.equal(model[0].weight, frozen) and model[0].weight.grad is None
    assert not loss.requires_grad and math.isfinite(float(loss))


# ----------------------------------------------------------------- bad input
BAD_INIT = [
    (lambda ps: GD(ps, lr=-0.1), "lr must be a finite number >= 0, got -0.1"),
    (lambda ps: GD(ps, lr=float("nan")), "lr must be a finite number >= 0, got nan"),
    (lambda ps: SGD(ps, lr=float("inf")), "lr must be a finite number >= 0, got inf"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.9), "momentum must be a finite number >= 0, got -0.9"),
    (
        lambda ps: SGD(ps, lr=0.1, nesterov=True),
        "nesterov=True needs momentum > 0 and dampening = 0",
    ),
    (
        lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        "nesterov=True needs momentum > 0 and dampening = 0",
    ),
    (lambda ps: EGR(ps, lr=-1.0), "lr must be a finite number >= 0, got -1.0"),
    (lambda ps: EGR(ps, lr=float("inf")), "lr must be a finite number >= 0, got inf"),
    (lambda ps: EGR(ps, lr=0.1, coeff=-0.5), "coeff must be a finite number >= 0, got -0.5"),
    (lambda ps: EGR(ps, lr=0.1, coeff=float("nan")), "coeff must be a finite number >= 0, got nan"),
    (
        lambda ps: EGR(ps, lr=0.1, method="fd"),
        "unknown EGR method 'fd'; choose one of exact, finite_difference",
    ),
    (lambda ps: EGR(ps, lr=0.1, fd_radius=0.0), "fd_radius must be a finite number > 0, or None"),
    (
        lambda ps: EGR([{"params": ps, "lr": -2.0}], lr=0.1),
        "lr must be a finite number >= 0, got -2.0",
    ),
    (
        lambda ps: EGR([{"params": ps, "coeff": -1.0}], lr=0.1),
        "coeff must be a finite number >= 0, got -1.0",
    ),
    (
        lambda ps: EGR(
            [{"params": ps[:2]}, {"params": ps[2:], "method": "finite_difference"}], lr=0.1
        ),
        "all param groups of one EGR share method='exact'",
    ),
]


@pytest.mark.parametrize("make, message", BAD_INIT)
def test_bad_hyperparameters_raise_value_error(make, message):
    with pytest.raises(ValueError, match=_escape(message)):
        make(list(_mlp().parameters()))


def test_add_param_group_is_checked_too():
    model = _mlp()
    opt = EGR(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="coeff must be a finite number >= 0, got -3"):
        opt.add_param_group({"params": model[2].parameters(), "coeff": -3})
    assert len(opt.param_groups) == 1  # the rejected group was not kept
    sgd = SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -1"):
        sgd.add_param_group({"params": model[2].parameters(), "lr": -1})


@pytest.mark.parametrize("method", METHODS)
def test_bad_closures_raise_value_error(method):
    model = _mlp()
    x, y = _data()
    opt = EGR(model.parameters(), lr=0.1, method=method)
    message = "found no .grad" if method == "exact" else "needs a closure"
    with pytest.raises(ValueError, match=message):
        opt.step()
    with pytest.raises(
        ValueError, match=r"the closure's loss must be a scalar tensor, got shape \(32, 3\)"
    ):
        opt.step(lambda: (model(x) - y) ** 2)
    with pytest.raises(ValueError, match="the closure's loss must be a scalar tensor, got float"):
        opt.step(lambda: 1.0)


def test_exact_rejects_a_closure_that_calls_backward_without_create_graph():
    model = _mlp()
    x, y = _data()
    opt = EGR(model.parameters(), lr=0.1)

    def torch_style():
        loss = _mse(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"backward\(\) ran without create_graph=True") as err:
        opt.step(torch_style)
    for way in (
        "WITHOUT calling backward",
        "closure that calls loss.backward(create_graph=True)",
        "before step() with no closure",
        "LightningModule.backward",
    ):
        assert way in str(err.value)


def _escape(message: str) -> str:
    import re

    return re.escape(message)
