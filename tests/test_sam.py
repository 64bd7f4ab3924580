"""SAM, ASAM and the gradient-norm penalty against hand-computed updates.

Oracles: closed forms on a quadratic L = ½θᵀAθ − bᵀθ (∇L = Aθ − b), and on a
small network the formulas of the papers written out with ``torch.func.grad``
on the functional loss (independent of the optimizer's code path).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from implicit_reg.core.optim import GD, SGD
from implicit_reg.core.sam import ASAM, SAM, GradNormPenalty
from implicit_reg.core.sharpness import penalty_gradient, sam_perturbation

F64 = torch.float64


def _quadratic():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=g, dtype=F64)
    A = m @ m.T + torch.eye(4, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    theta0 = torch.randn(4, generator=g, dtype=F64)
    return A, b, theta0


def _hand(A, b, theta, rho, *, alpha=1.0, eta=None):
    """g̃ by hand: e = ρ T²g/‖Tg‖ (T = 1 for SAM), g̃ = (1−α)g + α∇L(θ+e)."""
    g = A @ theta - b
    T = torch.ones_like(theta) if eta is None else theta.abs() + eta
    e = rho * T * T * g / torch.linalg.norm(T * g)
    return (1 - alpha) * g + alpha * (A @ (theta + e) - b)


@pytest.mark.parametrize(
    "make, hand",
    [
        (lambda p: SAM([p], GD, rho=0.1, lr=0.05), dict(rho=0.1)),
        (lambda p: ASAM([p], GD, rho=0.3, eta=0.01, lr=0.05), dict(rho=0.3, eta=0.01)),
        (lambda p: GradNormPenalty([p], GD, rho=0.2, alpha=0.6, lr=0.05), dict(rho=0.2, alpha=0.6)),
    ],
    ids=["sam", "asam", "penalty"],
)
def test_two_steps_on_a_quadratic_equal_the_hand_computed_update(make, hand):
    A, b, theta0 = _quadratic()
    p = theta0.clone().requires_grad_(True)
    opt = make(p)

    def closure():
        opt.zero_grad()
        loss = 0.5 * p @ A @ p - b @ p
        loss.backward()
        return loss

    expected = theta0.clone()
    for _ in range(2):
        expected = expected - 0.05 * _hand(A, b, expected, **hand)
        loss = opt.step(closure)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-13, atol=1e-14)
    assert loss.grad_fn is None


def test_two_steps_with_a_momentum_base_on_a_quadratic():
    """SAM around torch.optim.SGD(momentum=β): b₁ = g̃₀, b₂ = βb₁ + g̃₁, θ ← θ − h·b."""
    A, b, theta0 = _quadratic()
    p = theta0.clone().requires_grad_(True)
    opt = SAM([p], torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9)
    t1 = theta0 - 0.05 * _hand(A, b, theta0, 0.1)
    buf = _hand(A, b, theta0, 0.1)
    buf = 0.9 * buf + _hand(A, b, t1, 0.1)
    t2 = t1 - 0.05 * buf
    for _ in range(2):
        opt.zero_grad()
        (0.5 * p @ A @ p - b @ p).backward()
        opt.first_step(zero_grad=True)
        (0.5 * p @ A @ p - b @ p).backward()
        opt.second_step(zero_grad=True)
    torch.testing.assert_close(p.detach(), t2, rtol=1e-13, atol=1e-14)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)


def _data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(12, 3, generator=g, dtype=F64), torch.randn(12, 2, generator=g, dtype=F64)


@pytest.mark.parametrize("alpha", [1.0, 0.7], ids=["sam", "penalty"])
def test_two_steps_on_a_small_net_equal_the_papers_formulas_in_both_apis(alpha):
    x, y = _data()
    model = _net()
    names = [k for k, _ in model.named_parameters()]

    def f(ps):
        return ((functional_call(model, dict(zip(names, ps)), (x,)) - y) ** 2).mean()

    theta = [p.detach().clone() for p in model.parameters()]
    h, rho = 0.1, 0.05
    for _ in range(2):  # penalty (SAM at α = 1): g̃ = (1−α)g + α∇L(θ + ρ g/‖g‖), θ ← θ − h g̃
        g = grad(f)(theta)
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        ge = grad(f)([t + rho * gi / norm for t, gi in zip(theta, g)])
        theta = [t - h * ((1 - alpha) * gi + alpha * gei) for t, gi, gei in zip(theta, g, ge)]

    a = _net()
    opt = GradNormPenalty(a.parameters(), GD, rho=rho, alpha=alpha, lr=h)

    def closure():
        opt.zero_grad()
        loss = ((a(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    b = _net()
    opt_b = GradNormPenalty(b.parameters(), GD, rho=rho, alpha=alpha, lr=h)
    for _ in range(2):
        ((b(x) - y) ** 2).mean().backward()
        opt_b.first_step(zero_grad=True)
        ((b(x) - y) ** 2).mean().backward()
        opt_b.second_step(zero_grad=True)
    for p, q, t in zip(a.parameters(), b.parameters(), theta):
        torch.testing.assert_close(p.detach(), t, rtol=1e-12, atol=1e-13)
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", [SAM, ASAM, GradNormPenalty])
def test_rho_zero_is_the_base_optimizer_exactly(cls):
    x, y = _data()
    a, b = _net(), _net()
    opt_a = cls(a.parameters(), SGD, rho=0.0, lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_b = SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):

        def closure():
            opt_a.zero_grad()
            loss = ((a(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt_a.step(closure)
        opt_b.zero_grad()
        ((b(x) - y) ** 2).mean().backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_closure_without_backward_is_accepted_and_gives_the_same_step():
    x, y = _data()
    a, b = _net(), _net()
    opt_a = SAM(a.parameters(), GD, rho=0.05, lr=0.1)
    opt_b = SAM(b.parameters(), GD, rho=0.05, lr=0.1)

    def torch_style():
        opt_a.zero_grad()
        loss = ((a(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(2):
        la = opt_a.step(torch_style)
        lb = opt_b.step(lambda: ((b(x) - y) ** 2).mean())
        assert torch.equal(la, lb)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_same_dropout_mask_in_both_evaluations_and_batchnorm_updated_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    masks = []
    model[2].register_forward_hook(lambda m, i, o: masks.append((o != 0).clone()))
    opt = SAM(model.parameters(), GD, rho=0.05, lr=0.1, module=model)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    torch.manual_seed(5)
    opt.step(closure)
    rng_after_step = torch.get_rng_state()
    torch.manual_seed(5)
    twin(x)  # one train-mode forward at θ: the RNG and statistics one step should leave
    assert len(masks) == 2 and torch.equal(masks[0], masks[1])
    assert torch.equal(rng_after_step, torch.get_rng_state())
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model[1], name), getattr(twin[1], name)), name


@pytest.mark.parametrize("cls", [SAM, ASAM, GradNormPenalty])
def test_state_dict_round_trips_into_defaults(cls):
    x, y = _data()
    a, b = _net(), _net()
    opt_a = cls(a.parameters(), SGD, rho=0.07, lr=0.1, momentum=0.9)

    def step(opt, model):
        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)

    for _ in range(2):
        step(opt_a, a)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(a.state_dict())
    opt_b = cls(b.parameters(), SGD)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    assert opt_b.param_groups[0]["rho"] == 0.07
    for _ in range(3):
        step(opt_a, a)
        step(opt_b, b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_pure_functions_and_errors():
    g = [torch.tensor([3.0, 4.0], dtype=F64)]
    (e,) = sam_perturbation([torch.zeros(2, dtype=F64)], g, [0.5])
    torch.testing.assert_close(e, torch.tensor([0.3, 0.4], dtype=F64))
    (z,) = sam_perturbation([torch.zeros(2)], [torch.zeros(2)], [0.5])
    assert torch.equal(z, torch.zeros(2))
    (m,) = penalty_gradient([torch.ones(2)], [3 * torch.ones(2)], alpha=0.25)
    torch.testing.assert_close(m, 1.5 * torch.ones(2))
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="rho must be a finite number >= 0"):
        SAM([p], GD, rho=-1.0)
    with pytest.raises(ValueError, match="base_optimizer must be an optimizer class"):
        SAM([p], GD([p], lr=0.1))
    opt = SAM([p], GD, lr=0.1)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
    with pytest.raises(ValueError, match="second_step\\(\\) without first_step"):
        opt.second_step()


@pytest.mark.parametrize(
    "optimizer, extra",
    [("sam", {}), ("asam", {"asam_eta": 0.02}), ("penalty", {"sam_alpha": 0.6})],
)
def test_engine_trains_sharpness_optimizers_serially_as_a_plain_loop(optimizer, extra):
    """RunConfig(optimizer='sam', rho=...) through build_optimizer equals the class in a loop."""
    from implicit_reg.engine.config import RunConfig
    from implicit_reg.engine.train import run
    from implicit_reg.engine.vectorized_sweep import group_key
    from implicit_reg.workloads.data import load_dataset
    from implicit_reg.workloads.models import build_model

    torch.set_num_threads(1)
    cfg = RunConfig(
        dataset="teacher", n_train=30, n_test=20, width=3, probes=(), eval_every=1,
        optimizer=optimizer, rho=0.1, lr=0.2, steps=3, dtype="float64", chunk_size=11,
        checkpoint=True, **extra,
    )  # fmt: skip
    assert group_key(cfg) is None  # serial
    spec = cfg.dataset_spec()
    data = load_dataset(spec.pop("name"), **spec).to("cpu", F64)
    mspec = cfg.model_spec(data.input_dim, data.output_dim)
    model = build_model(mspec.pop("name"), **mspec).to(dtype=F64)
    cls, kw = {
        "sam": (SAM, {}),
        "asam": (ASAM, {"eta": 0.02}),
        "penalty": (GradNormPenalty, {"alpha": 0.6}),
    }[optimizer]
    opt = cls(model.parameters(), GD, rho=0.1, lr=0.2, **kw)

    def closure():
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(data.x_train), data.y_train)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    result = run(cfg, raise_errors=True)
    state = torch.load(io.BytesIO(result.checkpoint), weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="optimizer 'sam' needs rho"):
        RunConfig(optimizer="sam")
    with pytest.raises(ValueError, match="rho applies only to optimizers sam, asam, penalty"):
        RunConfig(optimizer="gd", rho=0.1)
    with pytest.raises(ValueError, match="sam_alpha needs optimizer 'penalty'"):
        RunConfig(optimizer="sam", rho=0.1, sam_alpha=0.5)


def test_the_sam_family_is_public_at_the_top_level():
    import implicit_reg

    assert implicit_reg.SAM is SAM and implicit_reg.ASAM is ASAM
    assert implicit_reg.GradNormPenalty is GradNormPenalty
    assert {"SAM", "ASAM", "GradNormPenalty"} <= set(implicit_reg.__all__)
