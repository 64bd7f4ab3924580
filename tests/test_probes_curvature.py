"""Curvature probes against explicit float64 Hessians built with torch.func.hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.core.hvp import HVP_METHODS
from implicit_reg.core.objective import trainable_named_params
from implicit_reg.probes import (
    HessianOperator,
    MatrixOperator,
    arpack_eigsh,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq_density,
)

F64 = torch.float64


# tiny models: one intra-op thread (conftest restores the count after each test)
pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(act: type[nn.Module], d_in=8, width=24, d_out=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), act(), nn.Linear(width, d_out)).double()


def problem(kind: str, n=80, seed=0):
    """(model, loss_fn, X, y) for "relu_ce", "tanh_mse" or "tanh_ce"."""
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 8, generator=g, dtype=F64)
    act = nn.ReLU if kind.startswith("relu") else nn.Tanh
    model = mlp(act, seed=seed)
    if kind.endswith("ce"):
        return model, nn.CrossEntropyLoss(), X, torch.randint(0, 3, (n,), generator=g)
    return model, nn.MSELoss(), X, torch.randn(n, 3, generator=g, dtype=F64)


def exact_hessian(model, loss_fn, X, y) -> torch.Tensor:
    """The Hessian of the full-batch loss over the trainable parameters (eval mode)."""
    named = trainable_named_params(model)
    names, shapes = list(named), [p.shape for p in named.values()]
    numels = [p.numel() for p in named.values()]
    fixed = {**dict(model.named_buffers()), **{k: p.detach() for k, p in model.named_parameters()}}
    was = model.training
    model.eval()

    def loss(flat):
        ps = [c.view(s) for c, s in zip(flat.split(numels), shapes)]
        return loss_fn(functional_call(model, {**fixed, **dict(zip(names, ps))}, (X,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in named.values()])
    H = hessian(loss)(theta)
    model.train(was)
    return H


@pytest.fixture(scope="module", params=["relu_ce", "tanh_mse"])
def case(request):
    model, loss_fn, X, y = problem(request.param)
    H = exact_hessian(model, loss_fn, X, y)
    return model, loss_fn, X, y, H, torch.linalg.eigvalsh(H)


# ------------------------------------------------------------------ the operator
@pytest.mark.parametrize("method", HVP_METHODS)
def test_matvec_matches_explicit_hessian(case, method):
    model, loss_fn, X, y, H, _ = case
    if method == "jvp" and isinstance(loss_fn, nn.MSELoss):
        # torch's jvp(grad(mse_loss)) bug (see implicit_reg.core.hvp): same loss, written out
        loss_fn = lambda out, t: ((out - t) ** 2).mean()  # noqa: E731
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=30, method=method)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert op.dim == H.shape[0]
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-12, atol=1e-13)
    assert op.n_hvp == 1


def test_unequal_chunks_and_dataloader_equal_one_full_batch():
    model, loss_fn, X, y = problem("tanh_ce", n=1000)
    full = HessianOperator(model, loss_fn, (X, y))
    v = torch.randn(full.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = full.matvec(v)
    scale = float(ref.abs().max())
    loaders = {
        "900+100": HessianOperator(model, loss_fn, (X, y), chunk_size=900),
        "chunks of 300 (last 100)": HessianOperator(model, loss_fn, (X, y), chunk_size=300),
        "DataLoader 128 (last 104)": HessianOperator(
            model, loss_fn, DataLoader(TensorDataset(X, y), batch_size=128, shuffle=False)
        ),
    }
    for name, op in loaders.items():
        err = float((op.matvec(v) - ref).abs().max())
        assert err <= 1e-10 * scale, (name, err)
        _, g = op.loss_and_gradient()
        assert float((g - full.gradient()).abs().max()) <= 1e-12, name


# ------------------------------------------------------------------ eigenvalues
@pytest.mark.parametrize("solver", [lanczos, arpack_eigsh])
def test_top_and_bottom_eigenvalues_match_eigvalsh(case, solver):
    model, loss_fn, X, y, H, ev = case
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=50)
    top = solver(op, 3, which="LA")
    bottom = solver(op, 2, which="SA")
    torch.testing.assert_close(top.eigenvalues, ev[-3:].flip(0), rtol=1e-8, atol=0)
    torch.testing.assert_close(bottom.eigenvalues, ev[:2], rtol=1e-8, atol=0)
    assert bottom.eigenvalues[0] < 0  # both models have negative curvature here
    for res in (top, bottom):
        assert res.converged
        assert res.n_hvp > 0
        # residuals are real ‖Hv − λv‖ with the explicit Hessian, and small
        V = res.eigenvectors
        direct = (H @ V - V * res.eigenvalues).norm(dim=0)
        torch.testing.assert_close(res.residuals, direct, rtol=1e-3, atol=1e-12)
        assert float(res.residuals.max()) <= 1e-7 * float(ev.abs().max())


def test_lanczos_default_spends_fewer_hvps_than_arpack(case):
    model, loss_fn, X, y, _, _ = case
    op = HessianOperator(model, loss_fn, (X, y))
    assert lanczos(op, 1).n_hvp < arpack_eigsh(op, 1).n_hvp


def test_loss_scaled_by_1e4_scales_eigenvalues():
    model, loss_fn, X, y = problem("tanh_ce")
    ref = lanczos(HessianOperator(model, loss_fn, (X, y)), 2)
    ref_min = lanczos(HessianOperator(model, loss_fn, (X, y)), 1, which="SA")
    small = lambda out, t: 1e-4 * loss_fn(out, t)  # noqa: E731
    op = HessianOperator(model, small, (X, y))
    res, res_min = lanczos(op, 2), lanczos(op, 1, which="SA")
    torch.testing.assert_close(res.eigenvalues, 1e-4 * ref.eigenvalues, rtol=1e-8, atol=0)
    torch.testing.assert_close(res_min.eigenvalues, 1e-4 * ref_min.eigenvalues, rtol=1e-8, atol=0)
    assert res.converged and res.n_hvp == ref.n_hvp  # tolerances are relative to ‖H‖


def test_negated_loss_has_flipped_spectrum_and_negative_trace():
    """−L has only negative curvature where L is convex-ish: everything must still work."""
    model, loss_fn, X, y = problem("relu_ce")
    H = exact_hessian(model, loss_fn, X, y)
    ev = torch.linalg.eigvalsh(H)
    neg = lambda out, t: -loss_fn(out, t)  # noqa: E731
    op = HessianOperator(model, neg, (X, y))
    torch.testing.assert_close(lanczos(op, 1).eigenvalues, -ev[:1], rtol=1e-8, atol=0)
    torch.testing.assert_close(lanczos(op, 1, which="SA").eigenvalues, -ev[-1:], rtol=1e-8, atol=0)
    tr = hutchinson(op, rtol=0.05, max_samples=400, seed=1)
    assert tr.estimate < 0
    assert tr.n_samples < 400  # the stopping rule uses |estimate|, so it does stop
    assert abs(tr.estimate - (-float(H.trace()))) <= 4 * tr.stderr


def test_power_iteration_baseline_on_known_spectrum():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=F64))
    lam = torch.cat(
        [torch.tensor([5.0, 2.5, -2.0], dtype=F64), torch.linspace(-1, 1, 47, dtype=F64)]
    )
    op = MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    res = power_iteration(op, max_iter=500)
    assert res.converged
    assert abs(float(res.eigenvalues[0]) - 5.0) <= 1e-10 * 5
    assert res.n_hvp == res.n_iter
    # Lanczos needs far fewer products for the same answer
    lz = lanczos(op, 1)
    assert abs(float(lz.eigenvalues[0]) - 5.0) <= 1e-10 * 5 and lz.n_hvp < res.n_hvp


def test_lanczos_complete_space_and_degenerate_start():
    """k = dim, and a start vector inside an invariant subspace (Lanczos breakdown)."""
    lam = torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=F64)
    op = MatrixOperator(torch.diag(lam))
    res = lanczos(op, 4, v0=torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64))
    torch.testing.assert_close(
        res.eigenvalues, lam.sort(descending=True).values, rtol=1e-12, atol=1e-12
    )
    res = arpack_eigsh(op, 4, which="SA")
    torch.testing.assert_close(res.eigenvalues, lam.sort().values, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ trace
def test_hutchinson_and_hutchpp_within_four_standard_errors(case):
    model, loss_fn, X, y, H, _ = case
    exact = float(H.trace())
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=40)
    h = hutchinson(op, rtol=0.02, max_samples=300, seed=0)
    assert h.stderr > 0 and h.n_hvp == h.n_samples
    assert abs(h.estimate - exact) <= 4 * h.stderr, (h, exact)
    hpp = hutchpp(op, n_hvp=60, seed=0)
    assert hpp.n_hvp == 60 and hpp.stderr > 0
    assert abs(hpp.estimate - exact) <= 4 * hpp.stderr, (hpp, exact)


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    """Hutch++ deflates the top of the spectrum (Meyer et al. 2021): at equal cost its error
    bar is far smaller when a few eigenvalues dominate, as in trained networks."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=F64))
    lam = 100 * 0.8 ** torch.arange(200, dtype=F64)
    op = MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    hpp = hutchpp(op, n_hvp=60, seed=0)
    h = hutchinson(op, rtol=0.0, min_samples=60, max_samples=60, seed=0)
    exact = float(lam.sum())
    assert abs(hpp.estimate - exact) <= 4 * hpp.stderr
    assert abs(h.estimate - exact) <= 4 * h.stderr
    assert hpp.stderr < 0.1 * h.stderr


def test_trace_estimators_are_seeded_and_leave_global_rng_alone():
    model, loss_fn, X, y = problem("tanh_mse")
    # "loop" repeats bit for bit; "auto" may pick another product after its first block
    # (equal to rounding, operator module docstring)
    op = HessianOperator(model, loss_fn, (X, y), product="loop")
    state = torch.get_rng_state()
    a = hutchinson(op, max_samples=20, seed=7)
    b = hutchinson(op, max_samples=20, seed=7)
    assert a == b
    assert hutchpp(op, n_hvp=12, seed=1) == hutchpp(op, n_hvp=12, seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_hutchpp_exact_when_sketch_spans_space():
    A = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    op = MatrixOperator(A + A.T)
    res = hutchpp(op, n_hvp=20)
    assert res.stderr == 0.0
    assert math.isclose(res.estimate, float((A + A.T).trace()), rel_tol=1e-12, abs_tol=1e-12)


# ------------------------------------------------------------------ density
def test_slq_density_integrates_to_one_and_hits_the_extremes(case):
    model, loss_fn, X, y, H, ev = case
    op = HessianOperator(model, loss_fn, (X, y))
    dens = slq_density(op, n_steps=100, n_runs=8, seed=0)
    integral = float(torch.trapezoid(torch.as_tensor(dens.density), torch.as_tensor(dens.grid)))
    assert math.isclose(integral, 1.0, rel_tol=1e-12)
    assert (dens.density >= 0).all()
    lo = min(float(t.min()) for t in dens.nodes)
    hi = max(float(t.max()) for t in dens.nodes)
    assert abs(hi - float(ev[-1])) <= 1e-8 * abs(float(ev[-1]))
    assert abs(lo - float(ev[0])) <= 1e-8 * abs(float(ev[0]))
    for tau in dens.weights:
        assert math.isclose(float(tau.sum()), 1.0, rel_tol=1e-10)
    # the first moment is a Hutchinson estimate of tr(H)/d: check within 4 SE
    d = H.shape[0]
    mean = float(
        torch.trapezoid(torch.as_tensor(dens.grid * dens.density), torch.as_tensor(dens.grid))
    )
    var = 2 * (float((H**2).sum()) - float((H.diagonal() ** 2).sum())) / d**2
    assert abs(mean - float(H.trace()) / d) <= 4 * math.sqrt(var / 8)
    assert dens.n_hvp == 8 * 100


# ------------------------------------------------------------------ frozen parameters
def test_only_trainable_parameters_are_measured():
    model, loss_fn, X, y = problem("tanh_ce")
    full_H = exact_hessian(model, loss_fn, X, y)
    model[0].weight.requires_grad_(False)
    n_frozen = model[0].weight.numel()
    op = HessianOperator(model, loss_fn, (X, y))
    assert op.dim == full_H.shape[0] - n_frozen
    sub = full_H[n_frozen:, n_frozen:]  # model[0].weight comes first
    ev = torch.linalg.eigvalsh(sub)
    torch.testing.assert_close(lanczos(op, 2).eigenvalues, ev[-2:].flip(0), rtol=1e-8, atol=0)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(op.matvec(v), sub @ v, rtol=1e-12, atol=1e-13)
    assert model[0].weight.grad is None


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_value_errors():
    model, loss_fn, X, y = problem("tanh_ce", n=20)
    op = HessianOperator(model, loss_fn, (X, y))
    for k in (0, op.dim + 1):
        with pytest.raises(ValueError, match="k must be"):
            lanczos(op, k)
        with pytest.raises(ValueError, match="k must be"):
            arpack_eigsh(op, k)
    with pytest.raises(ValueError, match="which"):
        lanczos(op, 1, which="LM")
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, loss_fn, (X[:0], y[:0]))
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, loss_fn, [])
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(model, nn.CrossEntropyLoss(reduction="none"), (X, y)).matvec(
            torch.ones(op.dim)
        )
    with pytest.raises(ValueError, match="mode"):
        HessianOperator(model, loss_fn, (X, y), mode="test")
    with pytest.raises(ValueError, match="HVP method"):
        HessianOperator(model, loss_fn, (X, y), method="fd")
    with pytest.raises(ValueError, match="flat vector"):
        op.matvec(torch.ones(op.dim + 1, dtype=F64))
    with pytest.raises(ValueError, match="tol"):
        lanczos(op, 1, tol=-1.0)
    with pytest.raises(ValueError, match="n_hvp"):
        hutchpp(op, n_hvp=2)
    with pytest.raises(ValueError, match="min_samples"):
        hutchinson(op, min_samples=1)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        HessianOperator(model, loss_fn, (X, y))
