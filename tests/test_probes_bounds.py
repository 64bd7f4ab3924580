"""Path norm, margins, spectral products and the PAC-Bayes σ search/bound
against closed forms, numpy and hand cases (probes/bounds.py)."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

from implicit_reg.probes import (
    classification_margins,
    margin_quantile,
    pacbayes_bound,
    pacbayes_measures,
    pacbayes_sigma,
    path_norm,
    spectral_complexity,
)

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(sizes=(5, 4, 3), act=nn.ReLU, seed=0, bias=True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i + 2 < len(sizes):
            layers.append(act())
    return nn.Sequential(*layers).double()


def data(n=60, d=5, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randint(0, k, (n,), generator=g)


# ------------------------------------------------------------------ margins
def test_margins_hand_case():
    model = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))  # f(x) = x
    x = torch.tensor(
        [[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.5, 2.0], [1.0, 1.0, 1.0]], dtype=F64
    )
    y = torch.tensor([0, 1, 2, 1])
    got = classification_margins(model, (x, y), chunk_size=3)
    assert got.tolist() == [2.0, -2.0, 1.5, 0.0]
    # one logit per sample: (2y − 1)·f
    lin = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
    xb = torch.tensor([[2.0], [-1.0], [0.5]], dtype=F64)
    assert classification_margins(lin, (xb, torch.tensor([1, 1, 0]))).tolist() == [2.0, -1.0, -0.5]


def test_margin_quantile_hand_case_and_numpy():
    m = torch.tensor([5.0, -1.0, 3.0, 2.0, 4.0, 0.0, 1.0, 7.0, 6.0, 8.0])
    assert margin_quantile(m, 10) == -1.0  # the 1st smallest of 10
    assert margin_quantile(m, 20) == 0.0  # the 2nd
    assert margin_quantile(m, 25) == 1.0  # ⌈2.5⌉ = 3rd
    assert margin_quantile(m, 100) == 8.0
    assert margin_quantile(torch.arange(1000.0), 99.9) == 998.0  # the 999th smallest
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 10, 97, 1000):
        v = torch.randn(n, generator=g, dtype=F64)
        for p in (0.5, 10, 33.3, 50, 99.95):  # (numpy rounds 99.9·1000/100 up to 1000)
            want = np.percentile(v.numpy(), p, method="inverted_cdf")
            assert margin_quantile(v, p) == pytest.approx(float(want), abs=0), (n, p)


# ------------------------------------------------------------------ path norm
def test_path_norm_two_layer_closed_form():
    """Σ over input→hidden→output paths and bias paths, enumerated one by one."""
    model = mlp((4, 3, 2), act=nn.Identity, seed=3)
    W1, b1 = model[0].weight.detach(), model[0].bias.detach()
    W2, b2 = model[2].weight.detach(), model[2].bias.detach()
    total = 0.0
    for o, h, i in itertools.product(range(2), range(3), range(4)):
        total += float(W2[o, h] ** 2 * W1[h, i] ** 2)
    no_bias = total
    for o, h in itertools.product(range(2), range(3)):
        total += float(W2[o, h] ** 2 * b1[h] ** 2)
    total += float(b2.square().sum())
    assert path_norm(model) == pytest.approx(total, rel=1e-13)
    assert path_norm(model, include_bias=False) == pytest.approx(no_bias, rel=1e-13)


def test_path_norm_equals_jiang_recipe_and_is_rescaling_invariant():
    """Jiang et al.'s recipe: square every parameter, feed ones, sum the outputs."""
    model = mlp((6, 5, 4, 3), act=nn.ReLU, seed=1)
    sq = copy.deepcopy(model)
    with torch.no_grad():
        for p in sq.parameters():
            p.square_()
        want = float(sq(torch.ones(1, 6, dtype=F64)).sum())
    assert path_norm(model) == pytest.approx(want, rel=1e-13)
    # rescale hidden unit j of layer 0 by c (weights and bias) and its outgoing weights by 1/c
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        c = torch.tensor([3.0, 0.2, 1.0, 7.0, 0.5], dtype=F64)
        scaled[0].weight.mul_(c[:, None])
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c[None, :])
    x = torch.randn(8, 6, dtype=F64)
    assert torch.allclose(scaled(x), model(x), rtol=1e-12, atol=1e-12)  # same function
    assert path_norm(scaled) == pytest.approx(path_norm(model), rel=1e-12)
    assert path_norm(scaled) != pytest.approx(path_norm(mlp((6, 5, 4, 3), seed=2)), rel=1e-3)


def test_path_norm_accepts_the_package_mlp():
    from implicit_reg.workloads.models import MLP

    torch.manual_seed(0)
    model = MLP(5, 3, width=4, depth=2).double()
    assert path_norm(model) == pytest.approx(path_norm(model.net), rel=1e-15)


class _Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), "positively homogeneous"),
        (nn.Sequential(nn.Conv1d(1, 2, 3)), "positively homogeneous"),
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "positively homogeneous"),
        (_Skip(), "sequential composition"),
        (nn.ReLU(), "no nn.Linear"),
    ],
)
def test_path_norm_rejects_non_mlps(model, match):
    with pytest.raises(ValueError, match=match):
        path_norm(model)
    with pytest.raises(ValueError, match="include_bias"):
        path_norm(mlp(), include_bias=1)


# ------------------------------------------------------------------ spectral product
def _numpy_spectral(model, x, y, form, init=None, p=10):
    Ws = [m.weight.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    W0 = [np.zeros_like(w) for w in Ws] if init is None else init
    spec = [np.linalg.svd(w, compute_uv=False)[0] for w in Ws]
    out = model(x).detach().numpy()
    yy = y.numpy()
    correct = out[np.arange(len(yy)), yy]
    other = out.copy()
    other[np.arange(len(yy)), yy] = -np.inf
    gamma = np.percentile(correct - other.max(1), p, method="inverted_cdf")
    prod = np.prod(np.square(spec))
    if form == "fro":
        s = sum(np.sum((w - w0) ** 2) / sn**2 for w, w0, sn in zip(Ws, W0, spec))
    else:
        s = (
            sum(
                (np.linalg.norm(w - w0, axis=1).sum() / sn) ** (2 / 3)
                for w, w0, sn in zip(Ws, W0, spec)
            )
            ** 3
        )
    return prod * s / gamma**2, gamma, spec


@pytest.mark.parametrize("form", ["fro", "bartlett"])
@pytest.mark.parametrize("with_init", [False, True])
def test_spectral_complexity_against_numpy_svd(form, with_init):
    model = mlp((5, 7, 4, 3), seed=4)
    init = mlp((5, 7, 4, 3), seed=5)
    x, _ = data(n=50)
    with torch.no_grad():
        y = model(x).argmax(1)  # margins mostly positive
        y[:3] = (y[:3] + 1) % 3  # a few negative ones below the 10th percentile
    init_state = init.state_dict() if with_init else None
    init_np = [init[i].weight.detach().numpy() for i in (0, 2, 4)] if with_init else None
    want, gamma, spec = _numpy_spectral(model, x, y, form, init_np, p=20)
    got = spectral_complexity(
        model, (x, y), init_state=init_state, form=form, percentile=20, chunk_size=7
    )
    assert got.margin == pytest.approx(gamma, rel=1e-12) and gamma > 0
    np.testing.assert_allclose(got.spec_norms, spec, rtol=1e-12)
    assert got.value == pytest.approx(want, rel=1e-10)
    assert got.form == form
    shared = spectral_complexity(model, None, init_state=init_state, form=form, margin=gamma)
    assert shared.value == pytest.approx(want, rel=1e-10)


def test_spectral_complexity_nonpositive_margin_is_inf():
    model = mlp(seed=0)
    x, y = data(n=40)  # random labels: far more than 10% misclassified
    res = spectral_complexity(model, (x, y))
    assert res.margin <= 0 and res.value == math.inf and res.prod_spec_sq > 0


def test_spectral_complexity_bad_input():
    model, d = mlp(), data()
    with pytest.raises(ValueError, match="form"):
        spectral_complexity(model, d, form="spectral")
    with pytest.raises(ValueError, match="percentile"):
        spectral_complexity(model, d, percentile=0)
    with pytest.raises(ValueError, match="no entry"):
        spectral_complexity(model, d, init_state={"0.weight": model[0].weight})
    with pytest.raises(ValueError, match="shape"):
        bad = dict(model.state_dict(), **{"2.weight": torch.zeros(2, 2)})
        spectral_complexity(model, d, init_state=bad)
    with pytest.raises(ValueError, match="nn.Linear"):
        spectral_complexity(nn.Sequential(nn.Conv1d(1, 1, 1)), d)
    with pytest.raises(ValueError, match="needs data"):
        spectral_complexity(model, None)
    with pytest.raises(ValueError, match="margin must"):
        spectral_complexity(model, d, margin=math.nan)
    with pytest.raises(ValueError, match="targets"):
        spectral_complexity(model, (d[0], d[1].double()))
    with pytest.raises(ValueError, match="targets must lie"):
        spectral_complexity(model, (d[0], d[1] + 3))


# ------------------------------------------------------------------ PAC-Bayes σ
def linear_sign_problem(d=40, n=400, seed=0):
    """f(x) = w·x, labels sign(w·x): under w + σz, sample i flips with
    probability Φ(−|w·x_i| / (σ‖x_i‖)), so E[err](σ) = mean_i Φ(−a_i/σ)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.randn(d, generator=g, dtype=F64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w[None])
    a = ((x @ w).abs() / x.norm(dim=1)).numpy()
    return model, (x, (x @ w > 0).long()), a


def test_pacbayes_sigma_matches_the_gaussian_closed_form():
    model, d, a = linear_sign_problem()
    sigma_star = brentq(lambda s: norm.cdf(-a / s).mean() - 0.1, 1e-6, 1e3)
    res = pacbayes_sigma(model, d, n_samples=40, seed=3, rtol=1e-3)
    assert res.bracketed and res.base_error == 0.0
    # K = 40 common directions: σ̂ has a relative SD of about 1.4% here (8 seeds)
    assert res.sigma == pytest.approx(sigma_star, rel=0.06), (res.sigma, sigma_star)
    expected_rise = norm.cdf(-a / res.sigma).mean()
    assert abs(expected_rise - 0.1) < 0.02, expected_rise
    # a different target moves σ* the way the closed form says
    sigma_star_2 = brentq(lambda s: norm.cdf(-a / s).mean() - 0.25, 1e-6, 1e3)
    res2 = pacbayes_sigma(model, d, max_increase=0.25, n_samples=40, seed=3, rtol=1e-3)
    assert res2.sigma == pytest.approx(sigma_star_2, rel=0.06), (res2.sigma, sigma_star_2)


def test_pacbayes_sigma_bracket_is_its_own_estimate():
    """The bracket holds for the documented common-random-number estimate ê(σ)."""
    model = mlp((5, 6, 3), seed=2)
    x, _ = data(n=80)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = pacbayes_sigma(model, (x, y), n_samples=5, seed=11, rtol=1e-2, sigma_init=1.0)
    assert res.bracketed
    assert res.rise <= 0.1 < res.rise_upper
    assert res.sigma_upper - res.sigma <= 1e-2 * res.sigma_upper
    params = [p.detach() for p in model.parameters()]

    def rise(sigma):
        gen = torch.Generator().manual_seed(11)
        errs = []
        for _ in range(5):
            z = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
            m = copy.deepcopy(model)
            with torch.no_grad():
                for q, p, zi in zip(m.parameters(), params, z):
                    q.copy_(p + sigma * zi)
                errs.append(float((m(x).argmax(1) != y).double().mean()))
        return float(np.mean(errs))

    assert rise(res.sigma) == pytest.approx(res.rise, abs=1e-12)
    assert rise(res.sigma_upper) == pytest.approx(res.rise_upper, abs=1e-12)
    # same seed: the same search; chunking changes nothing
    again = pacbayes_sigma(model, (x, y), n_samples=5, seed=11, sigma_init=1.0, chunk_size=9)
    assert again == res


def test_pacbayes_sigma_unbracketed_and_ties():
    model, d, _ = linear_sign_problem(d=5, n=30)
    res = pacbayes_sigma(model, d, n_samples=2, sigma_init=1e-9, sigma_max=1e-8)
    assert not res.bracketed and res.sigma == 1e-8 and res.sigma_upper == math.inf
    out = pacbayes_measures(model, d, n_samples=2, sigma_init=1e-9, sigma_max=1e-8)
    assert math.isnan(out["pacbayes_orig"]) and math.isnan(out["pacbayes_sigma"])
    tied = nn.Linear(5, 2, bias=False).double()
    with torch.no_grad():
        tied.weight.zero_()  # every logit 0: argmax 0 is right, any noise flips half
    with pytest.raises(ValueError, match="decision boundary"):
        pacbayes_sigma(tied, (d[0], torch.zeros(30, dtype=torch.long)), n_samples=2)


def test_pacbayes_bound_by_hand():
    # ‖w‖² = 8, σ = 0.5, m = 1000: 8 / (4·0.25) + log(1000 / 0.5) + 10 = 8 + log 2000 + 10
    assert pacbayes_bound(8.0, 0.5, 1000) == pytest.approx(18 + math.log(2000), rel=1e-15)
    model, d, _ = linear_sign_problem(d=10, n=50)
    init = {"weight": torch.zeros(1, 10, dtype=F64)}
    with torch.no_grad():
        init["weight"][0, 0] = model.weight[0, 0]
    out = pacbayes_measures(model, d, init_state=init, n_samples=4, seed=1)
    s = out["pacbayes_sigma"]
    w = model.weight.detach()
    assert out["pacbayes_flatness"] == pytest.approx(1 / s**2, rel=1e-15)
    want_orig = float(w.square().sum()) / (4 * s * s) + math.log(50 / s) + 10
    want_init = float(w[0, 1:].square().sum()) / (4 * s * s) + math.log(50 / s) + 10
    assert out["pacbayes_orig"] == pytest.approx(want_orig, rel=1e-13)
    assert out["pacbayes_init"] == pytest.approx(want_init, rel=1e-13)
    assert s == pacbayes_sigma(model, d, n_samples=4, seed=1).sigma


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_increase": 0}, "max_increase"),
        ({"max_increase": 1.0}, "max_increase"),
        ({"n_samples": 0}, "n_samples"),
        ({"rtol": 1.5}, "rtol"),
        ({"sigma_init": 2.0, "sigma_max": 1.0}, "sigma_init"),
        ({"mode": "test"}, "mode"),
    ],
)
def test_pacbayes_sigma_bad_input(kwargs, match):
    model, d, _ = linear_sign_problem(d=3, n=10)
    with pytest.raises(ValueError, match=match):
        pacbayes_sigma(model, d, **kwargs)


def test_pacbayes_bad_input():
    model, d, _ = linear_sign_problem(d=3, n=10)
    with pytest.raises(ValueError, match="sigma"):
        pacbayes_bound(1.0, 0.0, 10)
    with pytest.raises(ValueError, match="dist_sq"):
        pacbayes_bound(-1.0, 1.0, 10)
    with pytest.raises(ValueError, match="m must"):
        pacbayes_bound(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="no entry"):
        pacbayes_measures(model, d, init_state={})
    with pytest.raises(ValueError, match="unknown search option"):
        pacbayes_measures(model, d, steps=3)
    with pytest.raises(ValueError, match="0/1 targets"):
        pacbayes_sigma(model, (d[0], d[1] + 1))
    with pytest.raises(ValueError, match="outputs must be"):
        three_d = nn.Sequential(nn.Linear(2, 2), nn.Unflatten(1, (1, 2))).double()
        pacbayes_sigma(three_d, (torch.randn(4, 2, dtype=F64), torch.zeros(4).long()))
    with pytest.raises(ValueError, match="empty"):
        pacbayes_sigma(model, (d[0][:0], d[1][:0]))


# ------------------------------------------------------------------ the model is left alone
def _snapshot(model):
    return (
        [p.detach().clone() for p in model.parameters()],
        [(id(p.grad), None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        [b.clone() for b in model.buffers()],
        [m.training for m in model.modules()],
        torch.get_rng_state(),
    )


def _assert_same(a, b):
    for u, v in zip(a[0], b[0]):
        assert torch.equal(u, v)
    for (i, g), (j, h) in zip(a[1], b[1]):
        assert i == j and (g is None and h is None or torch.equal(g, h))
    for u, v in zip(a[2], b[2]):
        assert torch.equal(u, v)
    assert a[3] == b[3] and torch.equal(a[4], b[4])


def test_measures_leave_the_model_alone():
    torch.manual_seed(0)
    bn = nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)
    ).double()
    plain = mlp((5, 8, 3), seed=1)
    x, y = data(n=40)
    for model in (bn, plain):
        model.train()
        model(x).square().sum().backward()
    init = {k: v + 0.1 for k, v in plain.state_dict().items()}
    for model, mode in ((bn, "train"), (bn, "eval"), (plain, "eval")):
        before = _snapshot(model)
        classification_margins(model, (x, y), chunk_size=16, mode=mode)
        pacbayes_measures(model, (x, y), n_samples=2, chunk_size=16, mode=mode, rtol=0.1)
        _assert_same(before, _snapshot(model))
    before = _snapshot(plain)
    path_norm(plain)
    spectral_complexity(plain, (x, y), init_state=init, form="bartlett")
    _assert_same(before, _snapshot(plain))
