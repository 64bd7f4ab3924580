"""The verdict rule of every claim: effect against its standard error over seeds."""

import math

import numpy as np
import pytest

from implicit_reg.report.report import (
    bootstrap_ratio,
    effect_text,
    judge,
    judge_all,
    seed_effect,
    seed_trend,
)


def test_seed_effect_matches_the_textbook_standard_errors():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0]
    eff, se = seed_effect(a, b)
    assert eff == pytest.approx(2.5 - 0.5)
    want = math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 3)
    assert se == pytest.approx(want, rel=1e-12)
    eff, se = seed_effect([3.0, 5.0, 4.0], [1.0, 2.0, 3.0], paired=True)
    assert eff == pytest.approx(2.0) and se == pytest.approx(1.0 / math.sqrt(3))
    assert math.isnan(seed_effect([1.0])[1])
    with pytest.raises(ValueError, match="paired"):
        seed_effect([1.0, 2.0], [1.0], paired=True)


@pytest.mark.parametrize(
    ("effect", "se", "verdict"),
    [
        (0.3, 0.1, True),
        (0.2, 0.1, None),
        (-0.21, 0.1, False),
        (0.5, float("nan"), None),
        (float("nan"), 0.1, False),
    ],
)
def test_judge_needs_two_standard_errors(effect, se, verdict):
    assert judge(effect, se) is verdict


def test_effect_text_says_how_many_standard_errors():
    assert effect_text(0.3, 0.1) == "0.3 ± 0.1 SE (+3.0 SE)"
    assert "SE n/a" in effect_text(0.3, float("nan"))


def test_judge_all_needs_every_verdict():
    assert judge_all(True, True) is True
    assert judge_all(True, None) is None
    assert judge_all(True, None, False) is False
    assert judge_all() is None


def test_bootstrap_ratio_is_the_ratio_of_mean_differences_with_a_covering_interval():
    rng = np.random.default_rng(0)
    lo, big = rng.normal(0.45, 0.01, 6), rng.normal(0.50, 0.01, 6)
    egr = rng.normal(0.48, 0.01, 6)
    r, a, b = bootstrap_ratio(egr, lo, big, lo)
    assert r == pytest.approx((egr.mean() - lo.mean()) / (big.mean() - lo.mean()))
    assert a < r < b
    # no spread in any group: the interval collapses onto the ratio
    r, a, b = bootstrap_ratio([2.0, 2.0], [1.0, 1.0], [5.0, 5.0], [1.0, 1.0])
    assert (r, a, b) == pytest.approx((0.25, 0.25, 0.25))
    assert math.isnan(bootstrap_ratio([2.0], [1.0], [3.0, 3.5], [1.0, 1.2])[1])
    with pytest.raises(ValueError, match="every group"):
        bootstrap_ratio([], [1.0], [1.0], [1.0])


def test_bootstrap_ratio_interval_matches_a_direct_resampling():
    """The oracle: the same percentile bootstrap written out with a loop."""
    a, b = np.array([3.0, 4.0, 6.0]), np.array([1.0, 2.0, 1.5])
    c, d = np.array([7.0, 8.0, 9.0, 8.5]), np.array([1.0, 1.5])
    _, lo, hi = bootstrap_ratio(a, b, c, d, draws=4000, seed=1)
    rng = np.random.default_rng(123)
    boot = []
    for _ in range(4000):
        m = [rng.choice(g, g.size).mean() for g in (a, b, c, d)]
        boot.append((m[0] - m[1]) / (m[2] - m[3]))
    want = np.quantile(boot, [0.025, 0.975])
    assert lo == pytest.approx(want[0], abs=0.03) and hi == pytest.approx(want[1], abs=0.03)


def test_seed_trend_is_the_mean_and_se_of_per_seed_kendall_tau():
    x = [1.0, 2.0, 3.0, 4.0]
    ys = [[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 1.0, 2.0], [3.0, 4.0, 2.0, 1.0]]
    tau, se = seed_trend(x, ys)
    taus = [-1.0, -2.0 / 3.0, -2.0 / 3.0]  # 6 pairs: 6−0, 5−1, 5−1 concordant/discordant
    assert tau == pytest.approx(np.mean(taus))
    assert se == pytest.approx(np.std(taus, ddof=1) / math.sqrt(3))
    tau, _ = seed_trend(x, [[1.0, np.nan, 3.0, 4.0]])  # NaN points are left out
    assert tau == pytest.approx(1.0)
    with pytest.raises(ValueError, match="4 values"):
        seed_trend(x, [[1.0, 2.0]])
