"""cnn-digits: its plan, and its location rules and claims on planted run tables of known truth
(the smoke run itself is in tests/test_reproduce.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments import cnn_digits as cd
from implicit_reg.report.report import Untested

CFG = cd.Config(widths=(1, 2, 4, 8, 16), seeds=4, epochs=20, lr=1e-3, eval_points=6)


def test_plan_runs_every_width_setting_and_seed_and_evaluates_the_largest_k_log_spaced():
    runs = cd.plan(CFG).runs
    assert len(runs) == 5 * 2 * 4 and len({r.config_hash() for r in runs}) == len(runs)
    assert {(r.width, r.label_noise) for r in runs} == {
        (k, p) for k in CFG.widths for p in (0.0, 0.2)
    }
    per = CFG.per_epoch()
    assert per == 32
    big = [r for r in runs if r.width == 16][0]
    small = [r for r in runs if r.width == 1][0]
    assert big.eval_at == tuple(e * per for e in (1, 2, 3, 6, 11))  # geometric, end excluded
    assert small.eval_at == () and small.eval_every == 20 * per
    assert big.optimizer == "adam" and big.lr == 1e-3 and big.batch_size == 128
    assert big.model == "cnn" and big.dataset == "mnist" and big.n_train == 4000


def _rows(test_noisy, train_noisy, test_clean, train_clean, seeds=4):
    rng = np.random.default_rng(0)
    rows = []
    for s in range(seeds):
        for p, test, train in ((0.2, test_noisy, train_noisy), (0.0, test_clean, train_clean)):
            for k, te, tr in zip(CFG.widths, test, train):
                rows.append(
                    dict(width=k, seed=s, label_noise=p, status="complete",
                         test_error=te + rng.normal(0, 0.002), train_error=tr)
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_peak_placed_at_first_fitting_k_and_noise_effect():
    rows = _rows(
        test_noisy=[0.30, 0.20, 0.35, 0.15, 0.10], train_noisy=[0.4, 0.25, 0.005, 0.0, 0.0],
        test_clean=[0.20, 0.10, 0.08, 0.06, 0.05], train_clean=[0.2, 0.05, 0.0, 0.0, 0.0],
    )  # fmt: skip
    rows.attrs["history"] = pd.DataFrame(
        columns=["width", "seed", "label_noise", "step", "metric", "value"]
    )
    a = cd.analyze(rows, CFG)
    assert a.curves["noisy"].fit_width == 4 and a.curves["clean"].fit_width == 4
    assert a.peak.verdict == "reproduced"
    assert a.noise_effect.verdict == "reproduced"
    assert isinstance(a.epoch_peak, Untested)
    verdicts = [c.tests[0].verdict for c in cd.claims(a, CFG)]
    assert verdicts == ["reproduced", "reproduced", "not tested"]


def test_a_partial_grid_leaves_the_model_wise_claims_untested():
    rows = _rows(
        test_noisy=[0.30, 0.20, 0.35, 0.15, 0.10], train_noisy=[0.4, 0.25, 0.005, 0.0, 0.0],
        test_clean=[0.20, 0.10, 0.08, 0.06, 0.05], train_clean=[0.2, 0.05, 0.0, 0.0, 0.0],
    )  # fmt: skip
    rows = rows[~((rows.width == 2) & (rows.label_noise == 0))]
    a = cd.analyze(rows, CFG)
    assert isinstance(a.peak, Untested) and "k = 2 not finished" in a.peak.reason
    assert isinstance(a.noise_effect, Untested)


def test_no_peak_where_the_curve_falls_and_untested_without_a_fit():
    falling = _rows(
        test_noisy=[0.30, 0.25, 0.20, 0.15, 0.10], train_noisy=[0.4, 0.3, 0.0, 0.0, 0.0],
        test_clean=[0.2, 0.1, 0.08, 0.06, 0.05], train_clean=[0.2, 0.0, 0.0, 0.0, 0.0],
    )  # fmt: skip
    assert cd.threshold_peak(cd.model_wise(falling[falling.label_noise > 0], "noisy")).verdict == (
        "not reproduced"
    )
    never = _rows(
        test_noisy=[0.3, 0.2, 0.35, 0.15, 0.1], train_noisy=[0.4, 0.3, 0.2, 0.2, 0.05],
        test_clean=[0.2, 0.1, 0.08, 0.06, 0.05], train_clean=[0.2, 0.0, 0.0, 0.0, 0.0],
    )  # fmt: skip
    curve = cd.model_wise(never[never.label_noise > 0], "noisy")
    assert curve.fit_width is None
    assert "no k up to 16 fits" in cd.threshold_peak(curve).reason


def test_epoch_wise_rule_from_training_error():
    epochs = np.array([1, 2, 4, 8, 16, 32, 64.0])
    train = np.array([0.5, 0.21, 0.19, 0.10, 0.005, 0.0, 0.0])
    test = np.array([0.30, 0.12, 0.10, 0.16, 0.22, 0.18, 0.12])
    rng = np.random.default_rng(1)
    tests = test + rng.normal(0, 0.003, (4, 7))
    trains = np.tile(train, (4, 1))
    result, at = cd.epoch_wise(epochs, tests, trains, 0.2)
    assert at == (4.0, 16.0)  # rise from the first epoch at <= 20%, peak at the first <= 1%
    assert result.verdict == "reproduced"
    flat, _ = cd.epoch_wise(
        epochs,
        np.tile(np.linspace(0.3, 0.1, 7), (4, 1)) + rng.normal(0, 0.003, (4, 7)),
        trains,
        0.2,
    )  # noqa: E501
    assert flat.verdict == "not reproduced"
    late, at = cd.epoch_wise(epochs, tests, np.tile(train[::-1] * 0 + 0.3, (4, 1)), 0.2)
    assert isinstance(late, Untested) and at is None


@pytest.mark.parametrize("bad", [dict(eval_at=(3, 1))])
def test_run_config_rejects_bad_schedule(bad):
    with pytest.raises(ValueError, match="eval_at"):
        CFG.run_config(16, 0, 0.2).replace(**bad)
