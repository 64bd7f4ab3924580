"""Light evaluations (``error_every``): the losses and error rates alone between the full
evaluations, alone and in an ensemble, leaving the training and every full evaluation as
a run without them has it."""

from __future__ import annotations

import pytest

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.train import run, train_runs

BASE = dict(dataset="teacher", n_train=40, n_test=30, width=6, probes=(), dtype="float64",
            optimizer="sgd", batch_size=10, lr=0.1, momentum=0.9, steps=24, eval_every=12,
            label_noise=0.2)  # fmt: skip
LIGHT = ("train_loss", "test_loss", "train_error", "test_error", "train_error_clean")

pytestmark = pytest.mark.usefixtures("one_thread")


def rows(result) -> dict[tuple[int, str], float]:
    return {(r["step"], r["metric"]): r["value"] for r in result.history}


def check(plain, light):
    """``light`` (error_every=4) has every row of ``plain`` (error_every=None) with the
    same value, and between the full evaluations the light metrics alone."""
    a, b = rows(plain), rows(light)
    assert {k: b[k] for k in a} == pytest.approx(a, rel=1e-12, abs=1e-15)
    extra = {k for k in b if k not in a}
    assert {s for s, _ in extra} == {4, 8, 16, 20}  # multiples of 4 that are not of 12
    assert {m for _, m in extra} == set(LIGHT)
    assert "grad_norm_sq" in {m for s, m in a if s == 12}
    same = [k for k in plain.summary if k != "config_hash" and "time" not in k]
    assert [light.summary[k] for k in same] == [plain.summary[k] for k in same]


def test_serial_run_light_evaluations():
    check(run(RunConfig(**BASE)), run(RunConfig(**BASE, error_every=4)))


def test_ensemble_light_evaluations_equal_serial():
    seeds = (0, 1, 2)
    plain = train_runs([RunConfig(**BASE, seed=s) for s in seeds])
    light = train_runs([RunConfig(**BASE, seed=s, error_every=4) for s in seeds])
    alone = [run(RunConfig(**BASE, seed=s, error_every=4)) for s in seeds]
    for p, q, r in zip(plain, light, alone):
        check(p, q)
        a, b = rows(q), rows(r)
        assert a.keys() == b.keys()
        assert a == pytest.approx(b, rel=1e-10, abs=1e-12)


def test_error_every_must_be_a_positive_int():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="error_every"):
            RunConfig(**BASE, error_every=bad)
