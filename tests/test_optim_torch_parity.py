"""``SGD`` and ``GD`` against ``torch.optim.SGD``, driven by torch's own test inputs.

The inputs and error inputs are the ones the wheel ships in
``torch.testing._internal.common_optimizers`` (``optim_inputs_func_sgd``,
``optim_error_inputs_func_sgd``), each crossed with torch's implementation
flags (foreach, fused, differentiable); every one runs through our optimizer
and ``torch.optim.SGD`` side by side. No code of torch's is copied here or in
the package.
"""

from __future__ import annotations

import io
import random
import warnings

import pytest
import torch

from implicit_reg.core.optim import GD, SGD

common = pytest.importorskip("torch.testing._internal.common_optimizers")

IMPLS = [{}, {"foreach": False}, {"foreach": True}, {"fused": True}, {"differentiable": True}]


def _params(dtype=torch.float64, complex_=False, seed=0, differentiable=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    out = []
    for s in shapes:
        t = torch.randn(s, generator=g, dtype=dtype)
        if complex_:
            t = torch.complex(t, torch.randn(s, generator=g, dtype=dtype))
        if differentiable:  # torch's differentiable tests step non-leaf clones
            out.append(t.clone().requires_grad_(True).clone())
        else:
            out.append(torch.nn.Parameter(t))
    return out


def _loss(params, i):
    """A bounded smooth loss (real-valued for complex parameters too)."""
    return sum(((p.abs() ** 2) * 0.5 + (p.real * (1 + 0.1 * i)).sin()).sum() for p in params)


def _grads(params, i):
    """Deterministic bounded pseudo-gradients for step i (used when there is no closure)."""
    out = []
    for p in params:
        q = p.detach()
        g = torch.cos(q.real * (i + 1)) + 0.1 * i
        out.append(torch.complex(g, torch.sin(q.imag * (i + 2))) if q.is_complex() else g)
    return out


def _run(cls, params, kwargs, steps=10, closure=False, groups=None):
    params = [p for p in params]
    spec = params if groups is None else [{"params": params[a:b], **kw} for a, b, kw in groups]
    opt = cls(spec, **kwargs)
    losses = []
    for i in range(steps):
        if closure:

            def c(i=i):
                opt.zero_grad()
                loss = _loss(params, i)
                loss.backward()
                return loss

            losses.append(opt.step(c))
        else:
            for p, g in zip(params, _grads(params, i)):
                p.grad = g
            opt.step()
    return params, opt, losses


def _same(a, b):
    for p, q in zip(a, b):
        assert torch.equal(p.detach(), q.detach())


def _torch_inputs():
    cases = []
    for oi in common.optim_inputs_func_sgd(device="cpu", dtype=torch.float64):
        for impl in IMPLS:
            cases.append(pytest.param(oi.kwargs, impl, id=f"{oi.desc}-{impl or 'default'}"))
    return cases


@pytest.mark.parametrize("kwargs, impl", _torch_inputs())
@pytest.mark.parametrize("complex_", [False, True])
def test_torch_sgd_inputs_give_identical_steps_and_state(kwargs, impl, complex_):
    kw = {**kwargs, **impl}
    if isinstance(kw.get("lr"), torch.Tensor):
        kw["lr"] = kw["lr"].clone()
    diff = bool(impl.get("differentiable"))
    ref_p = _params(complex_=complex_, differentiable=diff)
    our_p = _params(complex_=complex_, differentiable=diff)
    try:
        ref, ref_opt, _ = _run(torch.optim.SGD, ref_p, dict(kw))
    except Exception as err:  # torch refuses (fused complex): so must we, with the same type
        with pytest.raises(type(err)):
            _run(SGD, our_p, dict(kw))
        return
    ours, our_opt, _ = _run(SGD, our_p, dict(kw))
    _same(ref, ours)
    ref_sd, our_sd = ref_opt.state_dict(), our_opt.state_dict()
    assert _groups_equal(our_sd["param_groups"], ref_sd["param_groups"])
    assert ref_sd["state"].keys() == our_sd["state"].keys()
    for k in ref_sd["state"]:
        assert ref_sd["state"][k].keys() == our_sd["state"][k].keys()
        for name in ref_sd["state"][k]:
            assert torch.equal(ref_sd["state"][k][name], our_sd["state"][k][name])


def _groups_equal(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.keys() != y.keys():
            return False
        for k in x:
            u, v = x[k], y[k]
            if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
                if not torch.equal(torch.as_tensor(u), torch.as_tensor(v)):
                    return False
            elif u != v:
                return False
    return True


def _error_inputs():
    return [
        pytest.param(e, id=e.optimizer_error_input.desc)
        for e in common.optim_error_inputs_func_sgd(device="cpu", dtype=torch.float64)
    ]


@pytest.mark.parametrize("error_input", _error_inputs())
def test_torch_sgd_error_inputs_raise_as_torch_does(error_input):
    oi = error_input.optimizer_error_input
    for cls in (torch.optim.SGD, SGD):
        params = oi.params if oi.params is not None else _params()
        if error_input.error_type is UserWarning:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cls(params, **oi.kwargs)
            assert any(
                __import__("re").search(error_input.error_regex, str(w.message)) for w in caught
            ), cls
        else:
            with pytest.raises(error_input.error_type, match=error_input.error_regex):
                cls(params, **oi.kwargs)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"lr": 0.1, "fused": True, "differentiable": True}, RuntimeError),
        ({"lr": 0.1, "fused": True, "foreach": True}, RuntimeError),
        ({"lr": -0.1}, ValueError),
        ({"lr": 0.1, "weight_decay": -1.0}, ValueError),
        ({"lr": 0.1, "nesterov": True}, ValueError),
        ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError),
    ],
)
def test_errors_where_torch_errors(kwargs, error):
    with pytest.raises(error):
        torch.optim.SGD(_params(), **kwargs)
    with pytest.raises(error):
        SGD(_params(), **kwargs)


def test_positional_order_is_torchs():
    """SGD(params, 0.1, 0.9, 0, 5e-4): lr, momentum, dampening, weight_decay (not Nesterov)."""
    a, b = _params(), _params()
    ref_opt = torch.optim.SGD(a, 0.1, 0.9, 0, 5e-4)
    our_opt = SGD(b, 0.1, 0.9, 0, 5e-4)
    assert our_opt.param_groups[0]["nesterov"] is False
    assert our_opt.param_groups[0]["weight_decay"] == 5e-4
    for i in range(3):
        for ps in (a, b):
            for p, g in zip(ps, _grads(ps, i)):
                p.grad = g
        ref_opt.step()
        our_opt.step()
    _same(a, b)


def test_random_configurations_match_torch_over_ten_steps():
    """30 random configurations: kwargs, float/tensor lr, real/complex, groups, closure."""
    rng = random.Random(1234)
    for case in range(30):
        momentum = rng.choice([0.0, 0.5, 0.9])
        nesterov = momentum > 0 and rng.random() < 0.4
        kw = {
            "momentum": momentum,
            "dampening": 0.0 if nesterov else rng.choice([0.0, 0.3]),
            "weight_decay": rng.choice([0.0, 1e-3, 0.1]),
            "nesterov": nesterov,
            "maximize": rng.random() < 0.3,
            "foreach": rng.choice([None, False, True]),
        }
        lr = rng.choice([1e-3, 0.05, 0.2])
        tensor_lr = rng.random() < 0.4
        if rng.random() < 0.2:
            kw["weight_decay"] = torch.tensor(kw["weight_decay"] or 0.01)
        complex_ = rng.random() < 0.3
        closure = rng.random() < 0.5
        groups = None
        if rng.random() < 0.5:
            groups = [(0, 1, {"lr": lr / 2}), (1, 3, {"momentum": 0.0 if nesterov else 0.7})]
        results = []
        for cls in (torch.optim.SGD, SGD):
            kws = dict(kw, lr=torch.tensor(lr) if tensor_lr else lr)
            if isinstance(kws["weight_decay"], torch.Tensor):
                kws["weight_decay"] = kws["weight_decay"].clone()
            ps = _params(complex_=complex_, seed=case)
            results.append(_run(cls, ps, kws, steps=10, closure=closure, groups=groups))
        (ref, _, ref_losses), (ours, _, our_losses) = results
        _same(ref, ours)
        for u, v in zip(ref_losses, our_losses):
            assert torch.equal(u, v)


def test_state_holds_nothing_without_momentum():
    ps = _params()
    _, opt, _ = _run(SGD, ps, {"lr": 0.1})
    assert opt.state_dict()["state"] == {}


def test_torch_checkpoint_loads_into_ours_and_continues_identically():
    """A torch.optim.SGD checkpoint with maximize=True maximizes in ours too."""
    a, b = _params(), _params()
    ref_opt = torch.optim.SGD(a, lr=0.1, momentum=0.9, maximize=True, weight_decay=0.01)
    for i in range(2):
        for p, g in zip(a, _grads(a, i)):
            p.grad = g
        ref_opt.step()
    buf = io.BytesIO()
    torch.save(ref_opt.state_dict(), buf)
    buf.seek(0)
    with torch.no_grad():
        for p, q in zip(a, b):
            q.copy_(p)
    our_opt = SGD(b)
    our_opt.load_state_dict(torch.load(buf, weights_only=True))
    for i in range(2, 5):
        for ps in (a, b):
            for p, g in zip(ps, _grads(ps, i)):
                p.grad = g
        ref_opt.step()
        our_opt.step()
    _same(a, b)


GD_INPUTS = [
    {},
    {"lr": 1e-2},
    {"lr": torch.tensor(0.001)},
    {"lr": 0.1, "maximize": True},
    {"lr": 0.1, "foreach": True},
    {"lr": 0.1, "fused": True},
    {"lr": 0.1, "differentiable": True},
]


@pytest.mark.parametrize("kwargs", GD_INPUTS, ids=str)
@pytest.mark.parametrize("complex_", [False, True])
def test_gd_takes_torch_sgd_arguments_that_apply(kwargs, complex_):
    diff = bool(kwargs.get("differentiable"))
    kw = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if complex_ and kw.get("fused"):
        with pytest.raises(RuntimeError):
            _run(torch.optim.SGD, _params(complex_=True), dict(kw))
        with pytest.raises(RuntimeError):
            _run(GD, _params(complex_=True), dict(kw))
        return
    ref, _, _ = _run(torch.optim.SGD, _params(complex_=complex_, differentiable=diff), dict(kw))
    ours, _, _ = _run(GD, _params(complex_=complex_, differentiable=diff), dict(kw))
    _same(ref, ours)
