"""Side-effect freedom, scalar measures, slices and the run_probes registry."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacrev

from implicit_reg.probes import (
    PROBES,
    HessianOperator,
    dist_from_init,
    eps_sharpness,
    filter_normalized_direction,
    gaussian_sharpness,
    geometric_complexity,
    grad_norm_sq,
    hutchpp,
    lanczos,
    loss_slice_1d,
    loss_slice_2d,
    power_iteration,
    preserved,
    run_probes,
    slq_density,
    weight_norms,
)

F64 = torch.float64


# tiny models: one intra-op thread (conftest restores the count after each test)
pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=64, d=6, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randint(0, k, (n,), generator=g)


def bn_dropout_model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3)
    ).double()


# ------------------------------------------------------------------ no side effects
def snapshot(model):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "param_ids": [id(p) for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [
            (id(p.grad), None if p.grad is None else p.grad.clone()) for p in model.parameters()
        ],
        "buffers": {k: b.clone() for k, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "rng": torch.get_rng_state().clone(),
    }


def assert_same(model, snap, label):
    now = snapshot(model)
    assert now["param_ids"] == snap["param_ids"], label
    assert now["requires_grad"] == snap["requires_grad"], label
    assert now["modes"] == snap["modes"], label
    assert torch.equal(now["rng"], snap["rng"]), label
    for a, b in zip(now["params"], snap["params"]):
        assert torch.equal(a, b), label
    for (ida, ga), (idb, gb) in zip(now["grads"], snap["grads"]):
        assert ida == idb, label
        assert (ga is None and gb is None) or torch.equal(ga, gb), label
    assert now["buffers"].keys() == snap["buffers"].keys()
    for k in snap["buffers"]:
        assert now["buffers"][k].dtype == snap["buffers"][k].dtype, (label, k)
        assert torch.equal(now["buffers"][k], snap["buffers"][k]), (label, k)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_every_probe_leaves_batchnorm_dropout_model_untouched(mode):
    model = bn_dropout_model()
    X, y = data()
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    loss_fn(model(X), y).backward()  # .grad set, BN running stats moved once
    model[3].eval()  # a mixed-mode model: dropout in eval, the rest in train
    model[0].bias.requires_grad_(False)
    init = {k: v + 0.1 for k, v in model.state_dict().items()}
    snap = snapshot(model)
    kw = {"chunk_size": 25, "mode": mode}
    # a pending autograd graph through the parameters must survive the probes
    pending = model[4](torch.ones(2, 16, dtype=F64)).sum()
    # path norm needs a ReLU MLP and the spectral measures an all-Linear one: on this
    # BatchNorm/Tanh model they must refuse, not return a number
    mlp_only = {
        "path_norm": "positively homogeneous", "path_norm_margin": "positively homogeneous",
        "spec_orig": "only parametrized layers", "spec_init": "only parametrized layers",
        "spec_bartlett": "only parametrized layers", "spec_bartlett_init": "only parametrized layers",
    }  # fmt: skip
    for name, why in mlp_only.items():
        with pytest.raises(ValueError, match=why):
            run_probes([name], model, loss_fn, (X, y), init_state=init, **kw)
    results = run_probes(
        [name for name in PROBES if name not in mlp_only],
        model,
        loss_fn,
        (X, y),
        init_state=init,
        trace_hvps=6,
        eps_steps=2,
        gaussian_samples=2,
        lanczos_max_iter=30,
        **kw,
    )
    # an untrained 3-class model: no σ ≤ σ_max raises its error by 0.1, so the PAC-Bayes
    # σ search is unbracketed and its measures are NaN by definition
    assert all(math.isfinite(v) for k, v in results.items() if not k.startswith("pacbayes"))
    assert math.isnan(results["pacbayes_sigma"])
    assert_same(model, snap, "run_probes")
    op = HessianOperator(model, loss_fn, (X, y), **kw)
    probes = {
        "lanczos": lambda: lanczos(op, 2, max_iter=30),
        "power": lambda: power_iteration(op, max_iter=5),
        "hutchpp": lambda: hutchpp(op, n_hvp=6),
        "density": lambda: slq_density(op, n_steps=5, n_runs=2),
        "gradient": lambda: op.loss_and_gradient(),
        "grad_norm_sq": lambda: grad_norm_sq(model, loss_fn, (X, y), **kw),
        "weight_norms": lambda: weight_norms(model),
        "dist_from_init": lambda: dist_from_init(model, init),
        "eps": lambda: eps_sharpness(model, loss_fn, (X, y), steps=2, **kw),
        "gauss": lambda: gaussian_sharpness(model, loss_fn, (X, y), n_samples=2, **kw),
        "gc": lambda: geometric_complexity(model, (X, y), **kw),
        "slice1d": lambda: loss_slice_1d(model, loss_fn, (X, y), alphas=[-0.5, 0.5], **kw),
        "slice1d_eig": lambda: loss_slice_1d(
            model, loss_fn, (X, y), "top_eigenvector", alphas=[0.1], **kw
        ),
        "slice2d": lambda: loss_slice_2d(
            model, loss_fn, (X, y), alphas=[0.0, 1.0], betas=[0.5], **kw
        ),
    }
    for name, probe in probes.items():
        probe()
        assert_same(model, snap, name)
    pending.backward()  # raises if a probe bumped a saved tensor's version


def test_preserved_restores_what_a_careless_block_changes():
    model = bn_dropout_model()
    X, _ = data()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    snap = snapshot(model)
    with preserved(model, mode="train"):
        assert all(m.training for m in model.modules())
        model(X)  # moves BN running stats and num_batches_tracked, draws dropout masks
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[0].weight.grad.mul_(3)
        model[4].weight.grad = torch.zeros_like(model[4].weight)
        model[4].weight.requires_grad_(False)
        torch.rand(3)
    assert_same(model, snap, "preserved")
    with pytest.raises(ValueError, match="mode"):
        with preserved(model, mode="inference"):
            pass


def test_train_mode_operator_is_one_fixed_symmetric_operator():
    """Dropout masks are re-drawn from the seed on every pass, so H is linear and symmetric."""
    model = bn_dropout_model()
    X, y = data()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y), mode="train", chunk_size=32)
    g = torch.Generator().manual_seed(0)
    u, v = (torch.randn(op.dim, generator=g, dtype=F64) for _ in range(2))
    Hu, Hv = op.matvec(u), op.matvec(v)
    torch.testing.assert_close(op.matvec(u), Hu, rtol=0, atol=0)
    assert math.isclose(float(u @ Hv), float(v @ Hu), rel_tol=1e-10)
    torch.testing.assert_close(op.matvec(2 * u + v), 2 * Hu + Hv, rtol=1e-10, atol=1e-12)
    ev = HessianOperator(model, nn.CrossEntropyLoss(), (X, y), mode="eval").matvec(u)
    assert not torch.allclose(ev, Hu)  # dropout and batch statistics do change H


# ------------------------------------------------------------------ scalar measures
def test_grad_norm_sq_matches_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    X, y = data(n=50)
    loss = nn.CrossEntropyLoss()(model(X), y)
    g = torch.autograd.grad(loss, list(model.parameters()))
    expected = sum(float((t**2).sum()) for t in g)
    assert math.isclose(
        grad_norm_sq(model, nn.CrossEntropyLoss(), (X, y), chunk_size=7), expected, rel_tol=1e-12
    )
    assert all(p.grad is None for p in model.parameters())


def test_weight_norms_and_distance_from_init():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[2].weight.add_(0.5)
    model[0].bias.requires_grad_(False)
    w = weight_norms(model)
    l0 = math.sqrt(float((model[0].weight ** 2).sum()))
    l2 = math.sqrt(float((model[2].weight ** 2).sum() + (model[2].bias ** 2).sum()))
    assert math.isclose(w["0"], l0, rel_tol=1e-12)
    assert math.isclose(w["2"], l2, rel_tol=1e-12)
    assert math.isclose(w["total"], math.hypot(l0, l2), rel_tol=1e-12)
    assert math.isclose(dist_from_init(model, init), 0.5 * math.sqrt(10), rel_tol=1e-12)
    with pytest.raises(ValueError, match="no entry"):
        dist_from_init(model, {})
    with pytest.raises(ValueError, match="shape"):
        dist_from_init(model, {**init, "2.weight": torch.zeros(3)})


def test_geometric_complexity_of_linear_model_is_frobenius_norm():
    torch.manual_seed(0)
    model = nn.Linear(6, 4).double()
    X, y = data(n=30)
    gc = geometric_complexity(model, (X, y), chunk_size=7)
    assert math.isclose(gc, float((model.weight**2).sum()), rel_tol=1e-12)


def test_geometric_complexity_of_mlp_matches_per_sample_jacobians():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    X, y = data(n=20)
    expected = sum(float((jacrev(model)(x) ** 2).sum()) for x in X) / len(X)
    assert math.isclose(geometric_complexity(model, (X, y), chunk_size=6), expected, rel_tol=1e-12)


class Diagonal(nn.Module):
    """f(x) = x ⊙ θ; with loss ½‖f − y‖² (mean over rows) the loss is a separable quadratic."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return x * self.theta


def half_sq(out, y):
    return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


def test_eps_sharpness_matches_closed_form_on_separable_quadratic():
    g = torch.Generator().manual_seed(0)
    d, n, eps = 5, 40, 0.05
    X = 0.5 + torch.rand(n, d, generator=g, dtype=F64)
    Y = torch.randn(n, d, generator=g, dtype=F64)
    theta = torch.randn(d, generator=g, dtype=F64)
    model = Diagonal(theta)

    def L(t):
        return float(half_sq(X * t, Y))

    # per coordinate, a convex quadratic is largest at one end of its interval
    w = eps * (theta.abs() + 1)
    best = theta.clone()
    for i in range(d):
        lo, hi = theta.clone(), theta.clone()
        lo[i] -= w[i]
        hi[i] += w[i]
        best[i] = lo[i] if L(lo) > L(hi) else hi[i]
    expected = (L(best) - L(theta)) / (1 + L(theta))
    got = eps_sharpness(model, half_sq, (X, Y), eps=eps, steps=5, chunk_size=9)
    assert math.isclose(got, expected, rel_tol=1e-10)


def test_eps_sharpness_matches_brute_force_over_box_vertices():
    """Linear least squares: convex, so the box maximum sits at one of its 2^d vertices."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.randn(30, 1, generator=g, dtype=F64)
    model = nn.Linear(3, 1).double()
    theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    eps = 0.1
    w = eps * (theta.abs() + 1)

    def L(t):
        return float(((X @ t[:3, None] + t[3] - y) ** 2).mean())

    best = max(
        L(theta + torch.tensor(s, dtype=F64) * w) for s in itertools.product((-1, 1), repeat=4)
    )
    expected = (best - L(theta)) / (1 + L(theta))
    got = eps_sharpness(model, nn.MSELoss(), (X, y), eps=eps, steps=10)
    assert math.isclose(got, expected, rel_tol=1e-8)


def test_gaussian_sharpness_on_quadratic_is_half_sigma_sq_trace():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 8, generator=g, dtype=F64)
    y = torch.randn(40, 2, generator=g, dtype=F64)
    torch.manual_seed(0)
    model = nn.Linear(8, 2).double()
    loss_fn = nn.MSELoss()
    # MSE over N rows and 2 outputs: H = (2/(2N))·blockdiag(X̃ᵀX̃, X̃ᵀX̃) with X̃ = [X, 1]
    Xt = torch.cat([X, torch.ones(40, 1, dtype=F64)], dim=1)
    H_trace = 2 * (2 / (2 * 40)) * float((Xt**2).sum())
    sigma = 0.05
    res = gaussian_sharpness(model, loss_fn, (X, y), sigma=sigma, n_samples=200, seed=1)
    expected = sigma**2 * H_trace / 2
    assert res.stderr > 0
    assert abs(res.value - expected) <= 4 * res.stderr, (res, expected)
    assert abs(res.value - expected) <= 0.05 * expected  # and the estimate is tight
    again = gaussian_sharpness(model, loss_fn, (X, y), sigma=sigma, n_samples=200, seed=1)
    assert again == res


# ------------------------------------------------------------------ slices
def test_filter_normalized_direction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(8, 3)).double()
    d = filter_normalized_direction(model, seed=0)
    parts = d.split([p.numel() for p in model.parameters()])
    for p, part in zip(model.parameters(), parts):
        part = part.view(p.shape)
        if p.dim() <= 1:
            assert torch.count_nonzero(part) == 0
        else:
            torch.testing.assert_close(
                part.reshape(len(p), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1)
            )
    assert torch.equal(d, filter_normalized_direction(model, seed=0))
    assert not torch.equal(d, filter_normalized_direction(model, seed=1))


def test_slices_along_top_eigenvector_of_a_quadratic_are_exact_parabolas():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 4, generator=g, dtype=F64)
    y = torch.randn(50, 1, generator=g, dtype=F64)
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    loss_fn = nn.MSELoss()
    op = HessianOperator(model, loss_fn, (X, y))
    L0, grad = op.loss_and_gradient()
    res = lanczos(op, 1)
    v, lam = res.eigenvectors[:, 0], float(res.eigenvalues[0])
    alphas = np.linspace(-2, 2, 9)
    s = loss_slice_1d(model, loss_fn, (X, y), "top_eigenvector", alphas=alphas)
    expected = (
        L0 + alphas * float(grad @ v) * np.sign(float(s.direction @ v)) + 0.5 * lam * alphas**2
    )
    np.testing.assert_allclose(s.losses, expected, rtol=1e-10)
    assert math.isclose(float(s.direction.norm()), 1.0, rel_tol=1e-12)
    # 2-D: values at grid points equal direct evaluations
    d1, d2 = filter_normalized_direction(model, seed=4), filter_normalized_direction(model, seed=5)
    s2 = loss_slice_2d(model, loss_fn, (X, y), (d1, d2), alphas=[-1.0, 0.0, 2.0], betas=[0.5, 1.0])
    assert s2.losses.shape == (2, 3)
    theta = op.theta()
    for j, b in enumerate(s2.betas):
        for i, a in enumerate(s2.alphas):
            assert math.isclose(s2.losses[j, i], op.loss(theta + a * d1 + b * d2), rel_tol=1e-12)
    with pytest.raises(ValueError, match="direction"):
        loss_slice_1d(model, loss_fn, (X, y), "sideways")


# ------------------------------------------------------------------ registry
def test_run_probes_matches_the_direct_computations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = data(n=60)
    loss_fn = nn.CrossEntropyLoss()
    names = [
        "lambda_max",
        "lambda_min",
        "trace",
        "trace_stderr",
        "grad_norm_sq",
        "loss",
        "weight_norm",
        "dist_from_init",
        "gaussian_sharpness",
        "geometric_complexity",
        "eps_sharpness",
    ]
    out = run_probes(names, model, loss_fn, (X, y), chunk_size=16, init_state=init, seed=3)
    assert list(out) == names
    assert all(isinstance(v, float) for v in out.values())
    op = HessianOperator(model, loss_fn, (X, y))
    from torch.func import functional_call, hessian

    names_p = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]

    def L(flat):
        ps = [c.view(s) for c, s in zip(flat.split(numels), shapes)]
        return loss_fn(functional_call(model, dict(zip(names_p, ps)), (X,)), y)

    H = hessian(L)(op.theta())
    ev = torch.linalg.eigvalsh(H)
    assert math.isclose(out["lambda_max"], float(ev[-1]), rel_tol=1e-8)
    assert math.isclose(out["lambda_min"], float(ev[0]), rel_tol=1e-8)
    assert abs(out["trace"] - float(H.trace())) <= 4 * out["trace_stderr"]
    assert math.isclose(out["grad_norm_sq"], grad_norm_sq(model, loss_fn, (X, y)), rel_tol=1e-12)
    assert math.isclose(out["loss"], float(loss_fn(model(X), y)), rel_tol=1e-12)
    assert out["dist_from_init"] == 0.0
    assert out["weight_norm"] == weight_norms(model)["total"]
    kw = {"chunk_size": 16}
    assert out["geometric_complexity"] == geometric_complexity(model, (X, y), **kw)
    assert (
        out["gaussian_sharpness"] == gaussian_sharpness(model, loss_fn, (X, y), seed=3, **kw).value
    )
    assert out["eps_sharpness"] == eps_sharpness(model, loss_fn, (X, y), **kw)
    # options tighten: Hutchinson to a 2% error bar
    tight = run_probes(
        ["trace", "trace_stderr"],
        model,
        loss_fn,
        (X, y),
        trace_method="hutchinson",
        trace_rtol=0.02,
        trace_max_samples=3000,
    )
    assert tight["trace_stderr"] <= 0.02 * abs(tight["trace"])
    assert abs(tight["trace"] - float(H.trace())) <= 4 * tight["trace_stderr"]


def test_run_probes_rejects_bad_names_and_options():
    model = nn.Linear(3, 2).double()
    X, y = data(n=10, d=3, k=2)
    with pytest.raises(ValueError, match="unknown probe name.*valid: loss, lambda_max"):
        run_probes(["lambda_max", "sharpnesss"], model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(ValueError, match="unknown probe option"):
        run_probes(["trace"], model, nn.CrossEntropyLoss(), (X, y), trace_samples=3)
    with pytest.raises(ValueError, match="init_state"):
        run_probes(["dist_from_init"], model, nn.CrossEntropyLoss(), (X, y))
    with pytest.raises(ValueError, match="mode"):
        run_probes(["loss"], model, nn.CrossEntropyLoss(), (X, y), mode="test")
    with pytest.raises(ValueError, match="trace_method"):
        run_probes(["trace"], model, nn.CrossEntropyLoss(), (X, y), trace_method="exact")
    for bad in ({"eps": -1.0}, {"eps_steps": 0}, {"sigma": 0.0}):
        with pytest.raises(ValueError):
            run_probes(
                list(bad and ["eps_sharpness", "gaussian_sharpness"]),
                model,
                nn.CrossEntropyLoss(),
                (X, y),
                **bad,
            )
