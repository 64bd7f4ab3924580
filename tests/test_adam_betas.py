"""adam-betas: its plan, its analysis and claims on synthetic runs of known truth, the
coefficient against core.modified_equations, and the ``grad_one_norm`` probe against an
explicit gradient."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from implicit_reg.core.modified_equations import one_norm_coeff
from implicit_reg.experiments import adam_betas as ab
from implicit_reg.experiments import load_experiment
from implicit_reg.probes import run_probes

CFG = ab.Config(lrs=(1e-3,), seeds=5)


def _rows(slope_n: float, slope_err: float, seeds=5, noise=0.02, miss=None, seed=0):
    """Summary rows over GRID: N = 2·exp(slope_n·u) and test error 0.6 + slope_err·u
    with u = −sign(c)·log(1 + |c|) (so a positive slope means "falls as c rises"), noise."""
    rng = np.random.default_rng(seed)
    out = []
    for b1, b2 in ab.GRID:
        c = ab.coeff(b1, b2)
        u = -math.copysign(math.log1p(abs(c)), c)
        for s in range(seeds):
            out.append(
                {
                    "lr": 1e-3, "adam_beta1": b1, "adam_beta2": b2, "seed": s,
                    "grad_one_norm": 2 * math.exp(slope_n * u + noise * rng.standard_normal()),
                    "test_error": 0.6 + slope_err * u + noise * rng.standard_normal(),
                    "train_loss": 0.1, "steps_done": 500,
                    "stop_reason": "steps" if miss == (b1, b2, s) else "target_train_loss",
                }
            )  # fmt: skip
    return pd.DataFrame(out)


def test_coeff_is_the_long_history_limit_of_one_norm_coeff():
    g = torch.tensor([1.0, -3.0], dtype=torch.float64)  # √ε ≪ |g|
    for b1, b2 in ab.GRID:
        c = one_norm_coeff(g, betas=(b1, b2), eps=1e-16, eps_placement="inside")
        assert float(c[0]) == pytest.approx(ab.coeff(b1, b2), rel=1e-9)
    assert ab.coeff(0.9, 0.999) == pytest.approx(-990)
    assert ab.coeff(0.94, 0.9) > 0  # the grid crosses c = 0


def test_plan_is_full_batch_adam_with_eps_inside_to_one_loss_target():
    runs = ab.plan(CFG).runs
    assert len(runs) == len(ab.GRID) * CFG.seeds
    for r in runs:
        assert r.optimizer == "adam" and r.adam_eps_placement == "inside" and r.batch_size is None
        assert r.target_train_loss == CFG.target and r.probes == ("grad_one_norm",)
        assert r.adam_beta1 < math.sqrt(r.adam_beta2)  # bounded iterates
        assert r.probe_options == {"one_norm_eps": CFG.eps} and r.adam_eps == CFG.eps
    # one initialization per seed across the grid: the seed is the only varying init field
    assert {r.seed for r in runs} == set(range(CFG.seeds))


def test_claims_reproduced_when_n_and_error_fall_with_c():
    a = ab.analyze(_rows(0.05, 0.01), CFG)
    assert [c.verdict for c in ab.claims(a, CFG)] == ["reproduced", "reproduced"]
    assert list(a.curves[0].c) == sorted(a.curves[0].c)


def test_claims_not_reproduced_when_n_and_error_rise_with_c():
    claims = ab.claims(ab.analyze(_rows(-0.05, -0.01), CFG), CFG)
    assert [c.verdict for c in claims] == ["not reproduced", "not reproduced"]


def test_claims_inconclusive_without_an_effect():
    claims = ab.claims(ab.analyze(_rows(0.0, 0.0, noise=0.1), CFG), CFG)
    assert all(c.verdict != "reproduced" for c in claims), [c.ours for c in claims]


def test_a_seed_that_missed_the_target_is_dropped_and_named():
    a = ab.analyze(_rows(0.05, 0.01, miss=(0.5, 0.99, 3)), CFG)
    cv = a.curves[0]
    assert cv.dropped == (3,) and cv.seeds == (0, 1, 2, 4) and cv.one_norm.shape == (4, 10)
    claim = ab.claims(a, CFG)[0]
    assert "left out" in claim.context and "[3]" in claim.context
    assert claim.verdict == "reproduced"


def test_grad_one_norm_probe_is_the_perturbed_one_norm_of_the_full_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    loss = nn.CrossEntropyLoss()(model(x), y)
    g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, list(model.parameters()))])
    for eps in (1e-8, 1e-2):
        got = run_probes(
            ["grad_one_norm"], model, nn.CrossEntropyLoss(), (x, y), chunk_size=3,
            one_norm_eps=eps,
        )["grad_one_norm"]  # fmt: skip
        assert got == pytest.approx(float(torch.sqrt(g * g + eps).sum()), rel=1e-12)


def test_registered():
    assert load_experiment("adam-betas").NAME == "adam-betas"
