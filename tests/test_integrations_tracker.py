"""CurvatureTracker in a plain loop: its numbers against dense float64 oracles, the model left
exactly as found (a tracked run is bit for bit the untracked one), warm starts, and the
budget rule that spaces the probes (driven by a fake clock, so the schedule is exact)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from implicit_reg.integrations import MEASURES, CurvatureTracker

F64 = torch.float64
GGN_AND_PRECONDITIONED = ("ggn_lambda_max", "preconditioned_lambda_max")


def _mlp(seed=0, bn=False, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 5)]
    if bn:
        layers.append(nn.BatchNorm1d(5))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(5, 2)]
    return nn.Sequential(*layers).to(F64)


def _data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)


def _flat_loss(model, loss_fn, X, y):
    """L as a function of one flat parameter vector (eval mode: BN running stats, no dropout)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(t):
        out, i = {}, 0
        for k, s in zip(names, shapes):
            n = math.prod(s)
            out[k] = t[i : i + n].view(s)
            i += n
        return out

    def outputs(t):
        return functional_call(model, {**unflat(t), **buffers}, (X,))

    return theta, (lambda t: loss_fn(outputs(t), y)), outputs


def test_every_measure_equals_its_dense_float64_oracle():
    model, (X, y), loss_fn = _mlp(bn=True), _data(), nn.MSELoss()
    model.train()
    with torch.no_grad():  # move the BN running statistics off their initial values
        model(X)
    model.eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = CurvatureTracker(
        model, loss_fn, (X, y), every=1, budget=None, top_k=3, trace_hvps=300, chunk_size=7
    )
    loss_fn(model(X), y).backward()
    opt.step()  # θ ≠ θ₀
    row = tracker.measure(1)

    theta, L, f = _flat_loss(model, loss_fn, X, y)
    H = hessian(L)(theta)
    evals = torch.linalg.eigvalsh(H).flip(0)
    g = torch.func.grad(L)(theta)
    J = jacrev(f)(theta).reshape(-1, theta.numel())  # (N·C, P)
    ggn = 2.0 / J.shape[0] * J.T @ J  # MSE mean over N·C entries: ∂²ℓ/∂f² = 2/(N·C)·I
    theta0 = torch.cat([v.reshape(-1) for v in tracker.init_state.values()])

    scale = float(evals.abs().max())
    assert row["lambda_max"] == pytest.approx(float(evals[0]), abs=1e-7 * scale)
    assert row["lambda_2"] == pytest.approx(float(evals[1]), abs=1e-6 * scale)
    assert row["lambda_3"] == pytest.approx(float(evals[2]), abs=1e-6 * scale)
    assert row["lambda_max_converged"] and row["lambda_max_residual"] < 1e-7 * scale
    # Hutch++ with a sketch as wide as the space (300 // 3 >= dim = 32) is exact
    assert row["trace"] == pytest.approx(float(torch.trace(H)), rel=1e-9)
    assert row["ggn_lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(ggn)[-1]), rel=1e-7)
    assert row["grad_norm_sq"] == pytest.approx(float(g @ g), rel=1e-10)
    assert row["loss"] == pytest.approx(float(L(theta)), rel=1e-12)
    assert row["weight_norm"] == pytest.approx(float(theta.norm()), rel=1e-12)
    assert row["dist_from_init"] == pytest.approx(float((theta - theta0).norm()), rel=1e-10)
    assert row["dist_from_init"] > 0


def _snapshot(model):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def _assert_same(model, snap):
    for p, q in zip(model.parameters(), snap["params"]):
        assert torch.equal(p, q)
    for p, (obj, val) in zip(model.parameters(), snap["grads"]):
        assert p.grad is obj and torch.equal(p.grad, val)
    for b, c in zip(model.buffers(), snap["buffers"]):
        assert torch.equal(b, c)
    assert [m.training for m in model.modules()] == snap["modes"]
    assert torch.equal(torch.get_rng_state(), snap["rng"])


def _train(tracked: bool, steps=6):
    """SGD with momentum on an MLP with BatchNorm and dropout (train mode, so every step draws
    dropout masks from the global RNG and updates the running statistics)."""
    model, (X, y), loss_fn = _mlp(bn=True, dropout=0.3), _data(), nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = (
        CurvatureTracker(model, loss_fn, (X[:12], y[:12]), every=2, budget=None)
        if tracked
        else None
    )
    torch.manual_seed(123)
    for t in range(steps):
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        if tracker is not None:  # mid-step: .grad is live, the model in train mode
            snap = _snapshot(model)
            row = tracker.step(t)
            _assert_same(model, snap)
            assert (row is not None) == (t % 2 == 0)
        opt.step()
    return model, tracker


def test_a_tracked_run_is_bit_for_bit_the_untracked_one():
    plain, _ = _train(tracked=False)
    tracked, tracker = _train(tracked=True)
    assert [r["step"] for r in tracker.rows] == [0, 2, 4]
    for p, q in zip(plain.parameters(), tracked.parameters()):
        assert torch.equal(p, q)
    for b, c in zip(plain.buffers(), tracked.buffers()):
        assert torch.equal(b, c)


def test_the_warm_start_spends_fewer_hvps_for_the_same_certified_value():
    model, (X, y), loss_fn = _mlp(), _data(), nn.MSELoss()
    warm = CurvatureTracker(model, loss_fn, (X, y), every=1, budget=None, measures=["lambda_max"])
    first = warm.measure(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.001)  # a small step: the top eigenvector barely moves
    second = warm.measure(1)
    cold = CurvatureTracker(model, loss_fn, (X, y), budget=None, measures=["lambda_max"])
    ref = cold.measure(1)
    assert second["lambda_max_hvps"] < ref["lambda_max_hvps"], (first, second, ref)
    tol = 10 * (second["lambda_max_residual"] + ref["lambda_max_residual"]) + 1e-12
    assert abs(second["lambda_max"] - ref["lambda_max"]) <= tol
    assert set(warm.state) == {"lambda_max.vec"}


class FakeClock:
    """Seconds that pass only when the test says so (dyadic steps: sums are exact)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _schedule(rows, train_step_seconds, every, budget, steps):
    """The probe steps the rule P ≤ b·T allows, replayed from the recorded costs."""
    costs = {r["step"]: r["probe_seconds"] for r in rows}
    probed, spent, last = [], 0.0, None
    for s in range(steps):
        if last is not None and s - last < every:
            continue
        trained = s * train_step_seconds  # the first call starts the clock
        if spent > budget * trained:
            continue
        probed.append(s)
        spent += costs[s]
        last = s
    return probed


def test_the_budget_spaces_the_probes_so_probing_stays_within_it():
    clock = FakeClock()
    model, (X, y), mse = _mlp(), _data(), nn.MSELoss()

    def loss_fn(out, target):  # every pass of a probe over the probe set costs 1/512 s
        clock.now += 1 / 512
        return mse(out, target)

    budget, every, steps, step_s = 0.1, 1, 60, 0.125
    tracker = CurvatureTracker(
        model, loss_fn, (X, y), every=every, budget=budget, clock=clock,
        measures=["loss", "lambda_max", "trace"],
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for t in range(steps):
        tracker.step(t)
        opt.zero_grad()
        mse(model(X), y).backward()
        opt.step()
        clock.now += step_s  # a training step costs 1/8 s
    probed = [r["step"] for r in tracker.rows]
    assert probed == _schedule(tracker.rows, step_s, every, budget, steps)
    assert 3 <= len(probed) < steps // 2, probed  # spaced, not every step, not never
    trained = steps * step_s
    clock.now += 100.0  # after finish() the clock no longer counts as training
    tracker.finish()
    assert tracker.train_seconds() == pytest.approx(trained + 100.0)
    clock.now -= 100.0
    tracker.finish()
    assert tracker.train_seconds() == pytest.approx(trained)
    clock.now += 100.0
    assert tracker.train_seconds() == pytest.approx(trained)
    # within budget up to one probe's cost
    slack = max(r["probe_seconds"] for r in tracker.rows)
    assert tracker.probe_seconds <= budget * trained + slack
    assert tracker.probe_seconds > budget * trained / 2  # and the budget is used
    assert tracker.rows[-1]["overhead"] == pytest.approx(
        tracker.probe_seconds / ((probed[-1]) * step_s)
    )


def test_without_a_budget_it_probes_exactly_every_k_steps():
    model, (X, y), loss_fn = _mlp(), _data(), nn.MSELoss()
    tracker = CurvatureTracker(model, loss_fn, (X, y), every=3, budget=None, measures="loss")
    got = [t for t in range(10) if tracker.step() is not None]
    assert got == [0, 3, 6, 9]
    assert list(tracker.table()["step"]) == got


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"measures": ["lambda_maxx"]}, "unknown or no measure"),
        ({"measures": []}, "unknown or no measure"),
        ({"every": 0}, "every must be an int >= 1"),
        ({"budget": 0.0}, "budget must be a finite number > 0"),
        ({"budget": float("nan")}, "budget must be a finite number > 0"),
        ({"top_k": 0}, "top_k must be an int >= 1"),
        ({"trace_hvps": 3}, "trace_hvps must be >= 4"),
        ({"mode": "test"}, "mode must be one of"),
    ],
)
def test_bad_arguments_fail_with_one_clear_line(kwargs, message):
    model, (X, y) = _mlp(), _data()
    with pytest.raises(ValueError, match=message):
        CurvatureTracker(model, nn.MSELoss(), (X, y), **kwargs)


def test_the_ggn_needs_outputs_and_a_model_needs_parameters():
    model, (X, y) = _mlp(), _data()

    def batch_loss(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1]), len(batch[0])

    with pytest.raises(ValueError, match="ggn_lambda_max"):
        CurvatureTracker(model, None, [(X, y)], batch_loss=batch_loss, measures=MEASURES[:4])
    tracker = CurvatureTracker(model, None, [(X, y)], batch_loss=batch_loss)  # default: no GGN
    assert tracker.measures == [m for m in MEASURES if m not in GGN_AND_PRECONDITIONED]
    assert tracker.measure(0)["lambda_max"] > 0
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        CurvatureTracker(frozen, nn.MSELoss(), (X, y))


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-3),
    lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3, momentum=0.5),
])  # fmt: skip
def test_the_preconditioned_sharpness_equals_the_eigenvalues_of_p_inverse_h(make):
    model, (X, y), loss_fn = _mlp(), _data(), nn.MSELoss()
    opt = make(model.parameters())
    tracker = CurvatureTracker(model, loss_fn, (X, y), budget=None, optimizer=opt)
    assert "preconditioned_lambda_max" in tracker.measures  # by default with an adaptive optimizer
    before = tracker.measure(0)  # no step yet: no P
    assert math.isnan(before["preconditioned_lambda_max"])
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
    row = tracker.measure(3)
    # P by hand from the optimizer's state, as its update divides by it (torch adam.py/rmsprop.py)
    g = opt.param_groups[0]
    if isinstance(opt, torch.optim.Adam):
        t = float(opt.state[next(iter(model.parameters()))]["step"])
        P = [opt.state[p]["exp_avg_sq"].sqrt() / math.sqrt(1 - g["betas"][1] ** t) + g["eps"]
             for p in model.parameters()]  # fmt: skip
        threshold = (2 + 2 * g["betas"][0]) / ((1 - g["betas"][0]) * g["lr"])
    else:
        P = [opt.state[p]["square_avg"].sqrt() + g["eps"] for p in model.parameters()]
        threshold = (2 + 2 * g["momentum"]) / g["lr"]
    P = torch.cat([q.reshape(-1) for q in P])
    theta, L, _ = _flat_loss(model, loss_fn, X, y)
    eig = torch.linalg.eigvals(hessian(L)(theta) / P[:, None])  # P⁻¹H, not symmetric
    top = float(eig.real.max())
    assert float(eig.imag.abs().max()) < 1e-8 * abs(top)  # similar to a symmetric matrix
    assert row["preconditioned_lambda_max"] == pytest.approx(top, rel=1e-7)
    assert row["preconditioned_lambda_max_converged"]
    assert row["preconditioned_threshold"] == pytest.approx(threshold, rel=1e-12)
    assert row["preconditioned_lambda_max"] != pytest.approx(row["lambda_max"], rel=0.1)


def test_the_preconditioned_sharpness_needs_an_adaptive_optimizer():
    model, (X, y) = _mlp(), _data()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert (
        "preconditioned_lambda_max"
        not in CurvatureTracker(model, nn.MSELoss(), (X, y), optimizer=sgd).measures
    )
    with pytest.raises(ValueError, match="Adam, AdamW or RMSprop"):
        CurvatureTracker(
            model, nn.MSELoss(), (X, y), optimizer=sgd, measures=["preconditioned_lambda_max"]
        )
