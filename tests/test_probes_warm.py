"""Warm-started λ_max tracking: run_probes(..., state=...) reuses the previous eigenvector."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from implicit_reg.probes import HessianOperator, lanczos, run_probes
from implicit_reg.probes.registry import WARM_KEYS, warm_start_vector

F64 = torch.float64


# tiny models: one intra-op thread (conftest restores the count after each test)
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g, dtype=F64)
    return X, torch.randint(0, 3, (n,), generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 3)
    ).double()


def _gd(model, X, y, steps, lr=0.5):
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        model.zero_grad()
        loss_fn(model(X), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
    model.zero_grad(set_to_none=True)


def test_warm_start_same_lambda_max_with_fewer_hvps():
    X, y = _data()
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    _gd(model, X, y, 300)
    state: dict = {}
    names = ["lambda_max", "lambda_max_hvps"]
    first = run_probes(names, model, loss_fn, (X, y), state=state)
    assert set(state) == {WARM_KEYS["lambda_max"]}
    assert isinstance(state["lambda_max.vec"], torch.Tensor)
    assert state["lambda_max.vec"].shape == (sum(p.numel() for p in model.parameters()), 1)
    _gd(model, X, y, 50)
    cold = run_probes(names, model, loss_fn, (X, y))
    warm = run_probes(names, model, loss_fn, (X, y), state=state)
    # the oracle: the explicit spectrum through ARPACK-free dense eigvalsh of H
    op = HessianOperator(model, loss_fn, (X, y))
    H = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=F64)], 1)
    lam = float(torch.linalg.eigvalsh((H + H.T) / 2)[-1])
    tol = 1e-7 * abs(lam)
    assert abs(cold["lambda_max"] - lam) <= tol
    assert abs(warm["lambda_max"] - lam) <= tol
    assert warm["lambda_max_hvps"] < cold["lambda_max_hvps"], (warm, cold, first)


def test_warm_state_survives_torch_save_and_wrong_length_is_ignored():
    X, y = _data()
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    state: dict = {}
    ref = run_probes(["lambda_max"], model, loss_fn, (X, y), state=state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    again = run_probes(["lambda_max", "lambda_max_hvps"], model, loss_fn, (X, y), state=loaded)
    assert abs(again["lambda_max"] - ref["lambda_max"]) <= 1e-7 * abs(ref["lambda_max"])
    # a stale vector of another length (the parameters changed) means a cold start
    stale = {"lambda_max.vec": torch.ones(5, 1, dtype=F64)}
    cold = run_probes(["lambda_max_hvps"], model, loss_fn, (X, y))
    assert run_probes(["lambda_max_hvps"], model, loss_fn, (X, y), state=stale) == cold
    assert stale["lambda_max.vec"].shape[0] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="state must be a dict"):
        run_probes(["lambda_max"], model, loss_fn, (X, y), state=[1])


def test_warm_start_vector_rules():
    assert warm_start_vector(None, 4, seed=0, device="cpu") is None
    assert warm_start_vector(torch.zeros(4), 4, seed=0, device="cpu") is None
    assert warm_start_vector(torch.full((4,), float("nan")), 4, seed=0, device="cpu") is None
    v = warm_start_vector(torch.tensor([3.0, 0, 0, 0]), 4, seed=0, device="cpu")
    assert v.dtype == F64
    d = v - torch.tensor([1.0, 0, 0, 0], dtype=F64)  # the mixed-in direction, of norm WARM_MIX
    assert abs(float(d.norm()) - 1e-3) <= 1e-15


def test_warm_start_finds_top_even_from_an_exact_other_eigenvector():
    """v0 = the 2nd eigenvector exactly: the mixed-in direction still leads to λ_1."""
    from implicit_reg.probes import MatrixOperator

    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=F64))
    lam = torch.linspace(-1, 3, 30, dtype=F64)
    op = MatrixOperator(Q @ torch.diag(lam) @ Q.T)
    v0 = warm_start_vector(Q[:, -2], 30, seed=0, device="cpu")
    res = lanczos(op, 1, v0=v0)
    assert abs(float(res.eigenvalues[0]) - 3.0) <= 1e-8


def test_ensemble_lanczos_returns_eigenvectors_and_warm_starts_from_them():
    from implicit_reg.ensemble.probes import ensemble_lanczos_max
    from implicit_reg.ensemble.vectorized import ensemble_loss_fns, stack_models

    X, y = _data(n=40)
    loss_fn = nn.CrossEntropyLoss()
    models = [_model(s) for s in (1, 2)]
    for m in models:
        _gd(m, X, y, 200)
    arch, params = stack_models(models)
    fns = ensemble_loss_fns(arch, loss_fn, X, y, chunk_size=16)
    cold = ensemble_lanczos_max(fns, params, seeds=[3, 4])
    for i, m in enumerate(models):  # the returned vectors are the serial top eigenvectors
        serial = lanczos(HessianOperator(m, loss_fn, (X, y), mode="train"), 1, seed=3 + i)
        cos = float(cold.eigenvectors[i] @ serial.eigenvectors[:, 0])
        assert abs(abs(cos) - 1) <= 1e-6
    for m in models:
        _gd(m, X, y, 20)
    arch, params = stack_models(models)
    fns = ensemble_loss_fns(arch, loss_fn, X, y, chunk_size=16)
    again = ensemble_lanczos_max(fns, params, seeds=[3, 4])
    warm = ensemble_lanczos_max(fns, params, seeds=[3, 4], v0=cold.eigenvectors)
    torch.testing.assert_close(warm.eigenvalues, again.eigenvalues, rtol=1e-7, atol=0)
    assert bool((warm.n_iter < again.n_iter).all()), (warm.n_iter, again.n_iter)
    with pytest.raises(ValueError, match="v0 must have shape"):
        ensemble_lanczos_max(fns, params, v0=torch.ones(3))
