"""Models: registries, closed-form parameter counts, rf kernels, determinism, min-norm fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from implicit_reg.workloads.models import (
    ACTIVATIONS,
    MODELS,
    RandomFeatures,
    build_model,
    count_params,
    fit_readout_min_norm,
    min_norm_fit,
    random_features,
)


def test_unknown_model_and_activation_list_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*cnn1d.*mlp.*rf_fourier.*rf_relu"):
        build_model("resnet", input_dim=4, output_dim=2, width=3)
    with pytest.raises(ValueError, match="unknown activation 'swish2'.*gelu.*relu.*tanh"):
        build_model("mlp", input_dim=4, output_dim=2, width=3, activation="swish2")
    # validated for the rf models too, although they do not use it
    with pytest.raises(ValueError, match="unknown activation"):
        build_model("rf_relu", input_dim=4, output_dim=2, width=3, activation="nope")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 0}, "width"),
        ({"width": 2.5}, "width"),
        ({"input_dim": 0}, "input_dim"),
        ({"output_dim": -1}, "output_dim"),
        ({"depth": -1}, "depth"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_sizes_raise(kwargs, match):
    args = {"input_dim": 4, "output_dim": 2, "width": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        build_model("mlp", **args)


def test_cnn_needs_a_conv_and_rf_rejects_unknown_kwargs():
    with pytest.raises(ValueError, match="depth"):
        build_model("cnn1d", input_dim=40, output_dim=10, width=4, depth=0)
    with pytest.raises(ValueError, match="unknown arguments.*valid.*bandwidth"):
        build_model("rf_relu", input_dim=4, output_dim=2, width=3, gamma=1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        build_model("rf_fourier", input_dim=4, output_dim=2, width=3, bandwidth=-1.0)


@pytest.mark.parametrize(
    "d, h, k, depth", [(40, 16, 10, 2), (40, 7, 10, 1), (5, 3, 2, 3), (6, 9, 4, 0)]
)
def test_mlp_param_count_closed_form(d, h, k, depth):
    model = build_model("mlp", input_dim=d, output_dim=k, width=h, depth=depth)
    if depth == 0:
        expected = d * k + k
    else:
        expected = (d * h + h) + (depth - 1) * (h * h + h) + (h * k + k)
    assert count_params(model) == expected
    assert model(torch.randn(3, d)).shape == (3, k)


def test_mnist1d_paper_mlp_count():
    # 40 -> h -> h -> 10: 40h + h + h^2 + h + 10h + 10
    h = 100
    model = build_model("mlp", input_dim=40, output_dim=10, width=h, depth=2)
    assert count_params(model) == 40 * h + h + h * h + h + 10 * h + 10 == 15210


@pytest.mark.parametrize(
    "length, c, depth, final_len", [(40, 8, 3, 5), (40, 5, 2, 10), (37, 4, 3, 5)]
)
def test_cnn1d_param_count_closed_form(length, c, depth, final_len):
    k = 10
    model = build_model("cnn1d", input_dim=length, output_dim=k, width=c, depth=depth)
    # conv1: 1*5*c + c; conv2..D: 3c^2 + c; readout: c*L_D*k + k
    expected = (5 * c + c) + (depth - 1) * (3 * c * c + c) + (c * final_len * k + k)
    assert count_params(model) == expected
    assert model(torch.randn(2, length)).shape == (2, k)


@pytest.mark.parametrize("name", ["rf_relu", "rf_fourier"])
def test_rf_only_readout_trainable(name):
    n_feat, k, d = 30, 3, 5
    model = build_model(name, input_dim=d, output_dim=k, width=n_feat, seed=1)
    assert count_params(model) == n_feat * k + k
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["readout.weight", "readout.bias"]
    assert {n for n, _ in model.named_buffers()} == {"feature_weight", "feature_bias"}
    no_bias = build_model(name, input_dim=d, output_dim=k, width=n_feat, bias=False)
    assert count_params(no_bias) == n_feat * k
    # the readout starts at zero, so GD on squared loss finds the min-norm fit
    assert torch.count_nonzero(model(torch.randn(4, d))) == 0
    # a gradient step changes only the readout
    x = torch.randn(8, d)
    before = {n: b.clone() for n, b in model.named_buffers()}
    model(x).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n])
    assert torch.count_nonzero(model.readout.weight) > 0


def test_count_params_on_any_module_counts_trainable_only():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)
    assert count_params(net) == 4 + (4 * 2 + 2)


def test_rf_fourier_kernel_matches_gaussian():
    # <phi(x), phi(x')> -> exp(-|x - x'|^2 / (2 s^2)), s = bandwidth (Rahimi & Recht 2007)
    torch.set_default_dtype(torch.float64)
    try:
        d, s = 4, 1.5
        model = build_model("rf_fourier", input_dim=d, output_dim=1, width=40000, bandwidth=s)
        x = torch.randn(6, d, generator=torch.Generator().manual_seed(0)) * 0.8
        phi = random_features(model, x)
        gram = phi @ phi.T
        oracle = torch.exp(-(torch.cdist(x, x) ** 2) / (2 * s * s))
        assert torch.allclose(gram, oracle, atol=0.03)
    finally:
        torch.set_default_dtype(torch.float32)


def test_rf_relu_kernel_matches_arccosine():
    # z = w.x + b with w ~ N(0, I/d), b ~ N(0, 1): (z, z') Gaussian with
    # var |x|^2/d + 1 and cov x.x'/d + 1; E[relu z relu z'] is the order-1
    # arc-cosine kernel (Cho & Saul 2009): s s' (sin t + (pi - t) cos t) / (2 pi).
    torch.set_default_dtype(torch.float64)
    try:
        d = 5
        model = build_model("rf_relu", input_dim=d, output_dim=1, width=40000, seed=3)
        x = torch.randn(5, d, generator=torch.Generator().manual_seed(1))
        phi = random_features(model, x)
        cov = x @ x.T / d + 1
        sd = cov.diag().sqrt()
        cos_t = (cov / torch.outer(sd, sd)).clamp(-1, 1)
        t = torch.arccos(cos_t)
        oracle = 2 * torch.outer(sd, sd) * (torch.sin(t) + (math.pi - t) * cos_t) / (2 * math.pi)
        assert torch.allclose(phi @ phi.T, oracle, rtol=0.05, atol=0.02)
    finally:
        torch.set_default_dtype(torch.float32)


def test_random_features_rejects_other_models():
    with pytest.raises(ValueError, match="rf model"):
        random_features(build_model("mlp", input_dim=3, output_dim=2, width=4), torch.randn(2, 3))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_determinism_by_seed_and_global_rng_untouched(name):
    kw = {"input_dim": 16 if name == "cnn" else 12, "output_dim": 3, "width": 6}  # cnn: 4×4
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model(name, seed=7, **kw)
    assert torch.equal(torch.get_rng_state(), state), "build_model changed the global RNG"
    torch.manual_seed(999)  # a different global state must not matter
    b = build_model(name, seed=7, **kw)
    c = build_model(name, seed=8, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[key], sb[key]) for key in sa)
    assert any(not torch.equal(sa[key], sc[key]) for key in sa)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_follow_dtype(name):
    d = 16 if name == "cnn" else 10  # cnn: square images
    model = build_model(name, input_dim=d, output_dim=4, width=5).to("cpu", torch.float64)
    out = model(torch.randn(3, d, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (3, 4)
    floats = [t for t in model.state_dict().values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats)  # BatchNorm's count: int


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds(activation):
    model = build_model("mlp", input_dim=3, output_dim=2, width=4, activation=activation)
    assert model(torch.randn(2, 3)).shape == (2, 2)


# ---------------------------------------------------------------- min-norm fits


@pytest.mark.parametrize("n, p", [(8, 20), (20, 8), (10, 10)])
@pytest.mark.parametrize("k", [None, 3])
def test_min_norm_fit_equals_pinv(n, p, k):
    rng = np.random.default_rng(n * p)
    phi = rng.standard_normal((n, p))
    y = rng.standard_normal(n if k is None else (n, k))
    coef = min_norm_fit(phi, y)
    assert coef.shape == ((p,) if k is None else (p, k))
    np.testing.assert_allclose(coef, np.linalg.pinv(phi) @ y, rtol=1e-9, atol=1e-10)


def test_min_norm_fit_rank_deficient_matches_pinv():
    rng = np.random.default_rng(0)
    phi = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 9))  # rank 3
    y = rng.standard_normal(12)
    np.testing.assert_allclose(min_norm_fit(phi, y), np.linalg.pinv(phi) @ y, atol=1e-9)


def test_min_norm_fit_interpolates_with_the_smallest_norm():
    rng = np.random.default_rng(1)
    n, p = 6, 15
    phi = rng.standard_normal((n, p))
    y = rng.standard_normal(n)
    beta = min_norm_fit(phi, y)
    np.testing.assert_allclose(phi @ beta, y, atol=1e-10)  # interpolates
    # any other interpolant beta + v (v in the null space of phi) is longer
    null = np.linalg.svd(phi)[2][n:].T  # (p, p - n)
    for _ in range(5):
        other = beta + null @ rng.standard_normal(p - n)
        np.testing.assert_allclose(phi @ other, y, atol=1e-10)
        assert np.linalg.norm(other) > np.linalg.norm(beta)


def test_min_norm_fit_ridge_matches_normal_equations():
    rng = np.random.default_rng(2)
    phi = rng.standard_normal((9, 14))
    y = rng.standard_normal((9, 2))
    lam = 0.3
    oracle = np.linalg.solve(phi.T @ phi + lam * np.eye(14), phi.T @ y)
    np.testing.assert_allclose(min_norm_fit(phi, y, ridge=lam), oracle, rtol=1e-9, atol=1e-11)


def test_min_norm_fit_tensors_in_tensors_out():
    phi = torch.randn(5, 7, dtype=torch.float32)
    y = torch.randn(5)
    coef = min_norm_fit(phi, y)
    assert isinstance(coef, torch.Tensor) and coef.dtype == torch.float32 and coef.shape == (7,)
    oracle = np.linalg.pinv(phi.double().numpy()) @ y.double().numpy()
    np.testing.assert_allclose(coef.numpy(), oracle, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "phi, y, ridge, match",
    [
        (np.ones(3), np.ones(3), 0.0, "2-D"),
        (np.ones((3, 2)), np.ones(4), 0.0, "targets"),
        (np.ones((3, 2)), np.ones(3), -1.0, "ridge"),
        (np.full((3, 2), np.nan), np.ones(3), 0.0, "finite"),
    ],
)
def test_min_norm_fit_bad_input(phi, y, ridge, match):
    with pytest.raises(ValueError, match=match):
        min_norm_fit(phi, y, ridge)


def test_fit_readout_is_where_gradient_descent_from_zero_converges():
    # GD on the squared loss from a zero readout stays in the row space of
    # [phi, 1] and converges to its min-norm interpolant (Belkin et al. 2019).
    torch.set_default_dtype(torch.float64)
    try:
        n, d, n_feat = 4, 3, 40
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(2))
        y = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
        model = build_model("rf_relu", input_dim=d, output_dim=2, width=n_feat)
        fitted = fit_readout_min_norm(model, x, y)
        assert fitted is model
        with torch.no_grad():
            assert torch.allclose(model(x), y, atol=1e-8)  # N > n: interpolates
        # plain GD on 0.5 |[phi, 1] B - y|^2 from B = 0, in NumPy
        phi1 = np.concatenate([random_features(model, x).numpy(), np.ones((n, 1))], 1)
        lr = 1.0 / np.linalg.norm(phi1, 2) ** 2
        b = np.zeros((n_feat + 1, 2))
        for _ in range(5000):
            b -= lr * phi1.T @ (phi1 @ b - y.numpy())
        np.testing.assert_allclose(model.readout.weight.detach().numpy(), b[:n_feat].T, atol=1e-7)
        np.testing.assert_allclose(model.readout.bias.detach().numpy(), b[n_feat], atol=1e-7)
    finally:
        torch.set_default_dtype(torch.float32)


def test_fit_readout_checks_output_width():
    model = build_model("rf_fourier", input_dim=3, output_dim=2, width=5)
    with pytest.raises(ValueError, match="columns"):
        fit_readout_min_norm(model, torch.randn(4, 3), torch.randn(4, 3))
    assert isinstance(model, RandomFeatures)


def test_mlp_zero_readout_and_hidden_bias_options():
    m = build_model(
        "mlp", input_dim=5, output_dim=3, width=4, depth=2, seed=1,
        zero_readout=True, hidden_bias=0.1,
    )  # fmt: skip
    lin = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert len(lin) == 3
    for layer in lin[:-1]:
        assert torch.equal(layer.bias, torch.full((4,), 0.1))
        assert layer.weight.abs().sum() > 0  # hidden weights keep their random init
    assert torch.count_nonzero(lin[-1].weight) == 0 and torch.count_nonzero(lin[-1].bias) == 0
    x = torch.rand(7, 5)
    assert torch.equal(m(x), torch.zeros(7, 3))
    # the hidden weights are the default init's: only biases and readout changed
    d = build_model("mlp", input_dim=5, output_dim=3, width=4, depth=2, seed=1)
    d_lin = [mod for mod in d.modules() if isinstance(mod, nn.Linear)]
    for a, b in zip(lin[:-1], d_lin[:-1]):
        assert torch.equal(a.weight, b.weight)


def test_mlp_options_are_validated():
    with pytest.raises(ValueError, match="unknown arguments.*valid.*zero_readout.*hidden_bias"):
        build_model("mlp", input_dim=4, output_dim=2, width=3, gamma=1.0)
    with pytest.raises(ValueError, match="hidden_bias"):
        build_model("mlp", input_dim=4, output_dim=2, width=3, hidden_bias=float("nan"))
    with pytest.raises(ValueError, match="zero_readout"):
        build_model("mlp", input_dim=4, output_dim=2, width=3, zero_readout=1)
