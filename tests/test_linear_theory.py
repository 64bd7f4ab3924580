"""Closed forms of the linear double-descent experiments against independent computations."""

import math

import numpy as np
import pytest
import torch

from implicit_reg.core.optim import GD
from implicit_reg.experiments._linear import (
    gd_least_squares_path,
    group_risk,
    minnorm_expected_risk,
    minnorm_risk_sample,
    two_scale_data,
)


def explicit_gd(x, y, lr, steps, precond):
    """The oracle: the GD loop w ← w − η·D·Xᵀ(Xw − y)/n, written out in float64."""
    n, d = x.shape
    w, out = np.zeros(d), {}
    for t in range(max(steps) + 1):
        if t in steps:
            out[t] = w.copy()
        w = w - lr * precond * (x.T @ (x @ w - y) / n)
    return np.stack([out[t] for t in steps])


@pytest.mark.parametrize(("n", "d"), [(30, 12), (8, 20)])  # full rank, and rank deficient
@pytest.mark.parametrize("preconditioned", [False, True])
def test_closed_form_gd_path_equals_the_gd_loop(n, d, preconditioned):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)) * np.geomspace(1, 0.05, d)
    y = rng.standard_normal(n)
    p = np.geomspace(1, 50, d) if preconditioned else np.ones(d)
    lam = np.linalg.eigvalsh((x * np.sqrt(p)).T @ (x * np.sqrt(p)) / n).max()
    steps = [0, 1, 2, 7, 40, 333]
    for lr in (0.9 / lam, 1.7 / lam):  # 1 − ηλ of both signs
        got = gd_least_squares_path(x, y, lr, np.array(steps), None if not preconditioned else p)
        want = explicit_gd(x, y, lr, steps, p)
        assert got.shape == (len(steps), d)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    assert np.all(got[0] == 0)


def test_closed_form_converges_to_the_min_norm_solution():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 15)), rng.standard_normal(6)
    lam = np.linalg.eigvalsh(x.T @ x / 6).max()
    (w,) = gd_least_squares_path(x, y, 1.0 / lam, np.array([10**7]))
    np.testing.assert_allclose(w, np.linalg.pinv(x) @ y, rtol=1e-8)


def test_package_gd_with_per_group_step_sizes_is_preconditioned_gd():
    """Param groups of the package's GD with lr η·D_g give the closed form with D."""
    data = two_scale_data(40, 6, 4, kappa=5.0, noise=0.3, signal_fast=1.0, signal_slow=0.5, seed=3)
    x, y = torch.tensor(data["x"]), torch.tensor(data["y"])
    wf = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    ws = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    lr, boost = 0.4, 25.0
    opt = GD([{"params": [wf], "lr": lr}, {"params": [ws], "lr": lr * boost}], lr=lr)
    for _ in range(50):
        opt.zero_grad()
        loss = 0.5 * ((x[:, :6] @ wf + x[:, 6:] @ ws - y) ** 2).mean()
        loss.backward()
        opt.step()
    p = np.r_[np.ones(6), np.full(4, boost)]
    (want,) = gd_least_squares_path(data["x"], data["y"], lr, np.array([50]), p)
    np.testing.assert_allclose(torch.cat([wf, ws]).detach().numpy(), want, rtol=1e-10)


def test_two_scale_data_and_group_risk():
    data = two_scale_data(
        500, 3, 2, kappa=10.0, noise=0.0, signal_fast=1.0, signal_slow=1.0, seed=0
    )
    np.testing.assert_allclose(data["x"][:, 3:].std(0), 0.1, rtol=0.15)
    np.testing.assert_allclose(data["x"] @ data["w_star"], data["y"], atol=1e-12)  # noise 0
    r = group_risk(data["w_star"], data, 3)
    assert r["excess"][0] == pytest.approx(0.0, abs=1e-20)
    r = group_risk(np.zeros(5), data, 3)  # the zero predictor: ‖β*‖² by block
    assert r["fast"][0] == pytest.approx(np.sum(data["beta"][:3] ** 2))
    assert r["slow"][0] == pytest.approx(np.sum(data["beta"][3:] ** 2))


@pytest.mark.parametrize("n", [6, 12, 34, 60])
def test_minnorm_expected_risk_matches_monte_carlo(n):
    d, b2, s2, trials = 20, 1.0, 0.25, 4000
    rng = np.random.default_rng(n)
    draws = np.array([minnorm_risk_sample(n, d, b2, s2, rng) for _ in range(trials)])
    se = draws.std(ddof=1) / math.sqrt(trials)
    want = minnorm_expected_risk(n, d, b2, s2)
    assert abs(draws.mean() - want) < 4 * se, (draws.mean(), want, se)


def test_minnorm_expected_risk_edges_and_errors():
    assert minnorm_expected_risk(19, 20, 1.0, 0.1) == math.inf
    assert minnorm_expected_risk(21, 20, 1.0, 0.1) == math.inf
    assert minnorm_expected_risk(1000, 10, 5.0, 0.0) == 0.0  # noiseless, overdetermined
    assert minnorm_expected_risk(5, 10, 2.0, 0.0) == pytest.approx(1.0)  # half the signal lost
    with pytest.raises(ValueError, match="n >= 1"):
        minnorm_expected_risk(0, 10, 1.0, 1.0)
    with pytest.raises(ValueError, match="lr"):
        gd_least_squares_path(np.ones((3, 2)), np.ones(3), -1.0, [1])
    with pytest.raises(ValueError, match="precond"):
        gd_least_squares_path(np.ones((3, 2)), np.ones(3), 0.1, [1], np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="steps"):
        gd_least_squares_path(np.ones((3, 2)), np.ones(3), 0.1, [1.5])
