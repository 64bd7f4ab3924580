"""``Adam`` (core.optim) and the engine's ``optimizer="adam"`` against ``torch.optim.Adam``.

Oracles: torch.optim.Adam step for step (bit for bit with torch's defaults, ε outside and
bias correction); torch.optim.RMSprop (β₁ = 0, no bias correction); the hand-written
recursion for ε inside the root; the engine's run against a torch loop on the full batch
and on minibatches; a checkpoint round trip.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from implicit_reg import Adam
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.optimizers import build_optimizer, update_rule
from implicit_reg.engine.plan import group_key
from implicit_reg.engine.train import run
from implicit_reg.workloads.data import load_dataset
from implicit_reg.workloads.models import build_model

TINY = dict(dataset="teacher", n_train=30, n_test=20, width=3, probes=(), eval_every=1)


def final_state(result) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(result.checkpoint), weights_only=True)["state_dict"]


def initial_model_and_data(cfg: RunConfig):
    spec = cfg.dataset_spec()
    data = load_dataset(spec.pop("name"), **spec).to("cpu", getattr(torch, cfg.dtype))
    mspec = cfg.model_spec(data.input_dim, data.output_dim)
    model = build_model(mspec.pop("name"), **mspec).to(dtype=getattr(torch, cfg.dtype))
    return model, data


def assert_states_close(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 5, generator=g, dtype=dtype), torch.randint(0, 3, (20,), generator=g)


def _train(model, opt, steps, closure=False):
    x, y = _data(next(model.parameters()).dtype)
    losses = []
    for _ in range(steps):

        def fn():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if closure:
            losses.append(float(opt.step(fn).detach()))
        else:
            fn()
            opt.step()
    return losses


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"lr": 0.05, "betas": (0.5, 0.9), "eps": 1e-3},
        {"lr": 0.01, "betas": (0.0, 0.99), "weight_decay": 0.1},
        {"lr": 0.02, "maximize": True},
    ],
)
def test_adam_equals_torch_adam_bit_for_bit(kw):
    a, b = _model(), _model()
    ours, theirs = Adam(a.parameters(), **kw), torch.optim.Adam(b.parameters(), **kw)
    la = _train(a, ours, 25, closure=True)
    lb = _train(b, theirs, 25, closure=True)
    assert la == lb
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), (p - q).abs().max()
    for p, q in zip(a.parameters(), b.parameters()):  # torch's state layout, same values
        s, t = ours.state[p], theirs.state[q]
        assert set(s) == set(t) and s["step"].dtype == t["step"].dtype
        for k in s:
            assert torch.equal(s[k], t[k]), k


def test_adam_state_dict_round_trips_into_torch_adam_and_back():
    a, b = _model(), _model()
    ours = Adam(a.parameters(), lr=0.03, betas=(0.8, 0.95))
    _train(a, ours, 5)
    b.load_state_dict(a.state_dict())
    theirs = torch.optim.Adam(b.parameters(), lr=0.03, betas=(0.8, 0.95))
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # state_dict() shares tensors
    c = copy.deepcopy(a)
    again = Adam(c.parameters(), lr=1.0)  # settings come from the loaded groups
    again.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert again.param_groups[0]["lr"] == 0.03 and again.param_groups[0]["betas"] == (0.8, 0.95)
    for m, o in ((a, ours), (b, theirs), (c, again)):
        _train(m, o, 5)
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_a_torch_adam_state_dict_loads_and_continues_bit_for_bit():
    a, b = _model(), _model()
    theirs = torch.optim.Adam(a.parameters(), lr=0.02, betas=(0.8, 0.9))
    _train(a, theirs, 4)
    b.load_state_dict(a.state_dict())
    ours = Adam(b.parameters())
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    _train(a, theirs, 4)
    _train(b, ours, 4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    for other, message in (
        (torch.optim.Adam(_model().parameters(), amsgrad=True), "amsgrad"),
        (torch.optim.AdamW(_model().parameters()), "decoupled"),
    ):  # what implicit_reg.Adam does not do is refused at the step, not ignored
        net = _model()
        opt = Adam(net.parameters())
        opt.load_state_dict(other.state_dict())
        with pytest.raises(ValueError, match=message):
            _train(net, opt, 1)


def test_rmsprop_is_adam_with_beta1_zero_and_no_bias_correction():
    a, b = _model(torch.float64), _model(torch.float64)
    ours = Adam(a.parameters(), lr=0.01, betas=(0.0, 0.9), eps=1e-4, bias_correction=False)
    theirs = torch.optim.RMSprop(b.parameters(), lr=0.01, alpha=0.9, eps=1e-4)
    _train(a, ours, 20)
    _train(b, theirs, 20)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_eps_inside_follows_the_written_out_recursion(bias_correction):
    """θ ← θ − h·(m/b₁)/√(v/b₂ + ε), m and v torch's EMAs (Cattaneo et al. 2024's Adam)."""
    model = _model(torch.float64)
    theta = [p.detach().clone() for p in model.parameters()]
    h, b1, b2, eps = 0.02, 0.8, 0.95, 1e-2
    opt = Adam(model.parameters(), lr=h, betas=(b1, b2), eps=eps, eps_placement="inside",
               bias_correction=bias_correction)  # fmt: skip
    x, y = _data(torch.float64)
    ref = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    for t in range(1, 8):
        with torch.no_grad():
            for p, q in zip(ref.parameters(), theta):
                p.copy_(q)
        g = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
        c1, c2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            theta[i] = theta[i] - h * (m[i] / c1) / torch.sqrt(v[i] / c2 + eps)
    _train(model, opt, 7)
    for p, q in zip(model.parameters(), theta):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"betas": (1.0, 0.9)}, "beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "beta parameter at index 1"),
        ({"betas": (0.9,)}, "pair"),
        ({"eps": -1.0}, "eps"),
        ({"lr": -1.0}, "learning rate"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"eps_placement": "under"}, "eps_placement"),
        ({"bias_correction": 1}, "bias_correction"),
    ],
)
def test_bad_settings_raise_value_error(kw, message):
    with pytest.raises(ValueError, match=message):
        Adam(_model().parameters(), **kw)
    opt = Adam(_model().parameters())
    with pytest.raises(ValueError, match=message):  # a later group is checked too
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], **kw})
    assert len(opt.param_groups) == 1


# ------------------------------------------------------------------ engine


def test_engine_adam_full_batch_matches_torch_adam():
    cfg = RunConfig(
        **TINY, optimizer="adam", lr=0.05, adam_beta1=0.8, adam_beta2=0.99, adam_eps=1e-6,
        weight_decay=1e-3, steps=6, dtype="float64", chunk_size=7, checkpoint=True,
    )  # fmt: skip
    assert update_rule(cfg) == "adam" and group_key(cfg) is None  # serial: checkpoint=True
    model, data = initial_model_and_data(cfg)
    opt = torch.optim.Adam(
        model.parameters(), lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-3
    )
    for _ in range(6):
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(data.x_train), data.y_train).backward()
        opt.step()
    assert_states_close(final_state(run(cfg, raise_errors=True)), model.state_dict(), 1e-12)


def test_engine_adam_minibatches_and_inside_eps_match_the_optimizer_on_the_same_batches():
    from implicit_reg.ensemble.vectorized import MinibatchOrder

    cfg = RunConfig(
        **TINY, optimizer="adam", batch_size=8, lr=0.05, adam_eps=1e-3,
        adam_eps_placement="inside", adam_bias_correction=False, steps=9, dtype="float64",
        checkpoint=True,
    )  # fmt: skip
    model, data = initial_model_and_data(cfg)
    opt = build_optimizer(cfg, list(model.parameters()), model)
    assert isinstance(opt, Adam) and opt.param_groups[0]["eps_placement"] == "inside"
    order = MinibatchOrder(data.n_train, 8, torch.Generator().manual_seed(cfg.seed))
    for _ in range(9):
        idx = next(order)
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    assert_states_close(final_state(run(cfg, raise_errors=True)), model.state_dict(), 1e-12)


def test_adam_config_fields_are_checked_and_leave_other_hashes_alone():
    plain = RunConfig(**TINY)
    # the hashes these configs had before the Adam fields existed (computed at 7d7ee9f)
    assert plain.config_hash() == "5c13cdacdf51"
    sgd = RunConfig(**TINY, optimizer="sgd", batch_size=5, momentum=0.9)
    assert sgd.config_hash() == "9018187d6f0a"
    default_adam = RunConfig(**TINY, optimizer="adam")
    assert default_adam.config_hash() != plain.config_hash()
    for changes, message in [
        ({"adam_beta1": 0.5}, "need optimizer 'adam'"),
        ({"optimizer": "adam", "adam_beta2": 1.0}, "adam_beta2 must be in"),
        ({"optimizer": "adam", "adam_eps": -1.0}, "adam_eps"),
        ({"optimizer": "adam", "adam_eps_placement": "x"}, "adam_eps_placement"),
        ({"optimizer": "adam", "momentum": 0.9}, "no momentum"),
    ]:
        with pytest.raises(ValueError, match=message):
            RunConfig(**TINY, **changes)
