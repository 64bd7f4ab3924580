"""implicit_reg.stats: every rule against a scipy oracle, and its error rates by simulation.

The simulations draw thousands of data sets of known truth at once (Gaussian seed noise,
fixed numpy Generators) and apply the same rule the public functions apply, through the
module's vectorized cores; a consistency test checks core and public function agree draw
by draw. Each error-rate test also measures a looser rule on the same draws (the old
"> 2 SE", in-sample peak location, "no significant difference") so that it would fail if
the rule were loosened to it. Run with ``-s`` to print the measured rates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from implicit_reg import stats as S
from implicit_reg.stats import (
    ALPHA,
    all_of,
    equivalence_test,
    paired_ratio,
    paired_test,
    peak_test,
    trend_test,
    welch_test,
)

B = 4000  # simulated data sets per scenario: MC SE of a 5% rate ≈ 0.0034


def _mc_se(p: float, b: int = B) -> float:
    return math.sqrt(p * (1 - p) / b)


def _fpr_ok(rate: float, b: int = B) -> bool:
    return rate <= ALPHA + 3 * _mc_se(ALPHA, b)


# ---------------------------------------------------------------------------
# Oracles


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_test_equals_scipy_ttest_rel_and_t_interval(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(1.0, 1.0, n), rng.normal(0.6, 1.0, n)
    r = paired_test(a, b)
    ref = st.ttest_rel(a, b, alternative="greater")
    d = a - b
    assert r.p == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert r.t == pytest.approx(float(ref.statistic), rel=1e-12)
    assert r.df == n - 1 and r.n == n and r.scale == "linear"
    assert r.effect == pytest.approx(d.mean()) and r.se == pytest.approx(st.sem(d))
    lo, hi = st.t.interval(0.90, n - 1, loc=d.mean(), scale=st.sem(d))
    assert r.ci == pytest.approx((lo, hi), rel=1e-12)
    # one-sample form and the log scale are the same test on d and on log a − log b
    assert paired_test(d).p == pytest.approx(r.p, rel=1e-12)
    pa, pb = np.exp(a), np.exp(b)
    rl = paired_test(pa, pb, log=True)
    assert rl.p == pytest.approx(r.p, rel=1e-9) and rl.scale == "log"
    assert rl.ratio == pytest.approx(math.exp(d.mean()))
    assert r.ratio is None


def test_paired_verdicts_follow_the_direction_and_the_t_quantile():
    # t = 2.5 with 3 seeds: beyond 2 SE but below t_{0.95, 2} = 2.92 -> inconclusive
    d = np.array([-1.0, 0.0, 1.0])  # sem = 1/√3, so d + c/√3 has t = c
    r = paired_test(d + 2.5 / np.sqrt(3))
    assert r.t == pytest.approx(2.5) and r.verdict == "inconclusive"
    assert "could detect" in r.sentence() and "t₂ = 2.5" in r.sentence()
    assert paired_test(d + 3.0 / np.sqrt(3)).verdict == "reproduced"
    assert paired_test(-(d + 3.0 / np.sqrt(3))).verdict == "not reproduced"
    # zero spread: the sign is certain
    assert paired_test([1.0, 1.0, 1.0]).verdict == "reproduced"
    assert paired_test([-1.0, -1.0]).verdict == "not reproduced"
    assert paired_test([0.0, 0.0]).verdict == "inconclusive"


def test_detectable_is_the_effect_found_with_80_percent_power():
    # oracle: scipy.stats.nct power at the quoted effect, with the SE as measured
    r = paired_test([0.3, 0.1, 0.5, 0.2])
    nc = r.detectable / r.se
    assert st.nct.sf(st.t.ppf(1 - ALPHA, 3), 3, nc) == pytest.approx(0.8, abs=1e-9)
    # and by simulation: a true effect of detectable(σ = 1) is found 80% of the time
    n = 3
    delta = S._ncp(n - 1, ALPHA, 0.8) / math.sqrt(n)
    d = np.random.default_rng(1).normal(delta, 1.0, (B, n))
    power = S._t_greater(d)[0].mean()
    assert abs(power - 0.8) < 3 * _mc_se(0.8), power


def test_welch_test_equals_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1, 1, 4), rng.normal(0, 2, 6)
    r = welch_test(a, b)
    ref = st.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert r.p == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert r.df == pytest.approx(float(ref.df), rel=1e-12)
    assert r.ci == pytest.approx(
        st.t.interval(0.9, float(ref.df), loc=a.mean() - b.mean(), scale=r.se), rel=1e-12
    )
    assert "t" in r.sentence() and r.method.startswith("Welch")


def test_tost_equals_two_one_sample_t_tests():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.05, 0.1, 5), rng.normal(0.0, 0.1, 5)
    d, m = a - b, 0.3
    r = equivalence_test(a, b, margin=m)
    p_low = st.ttest_1samp(d, -m, alternative="greater").pvalue
    p_up = st.ttest_1samp(d, m, alternative="less").pvalue
    assert r.p == pytest.approx(max(p_low, p_up), rel=1e-12)
    assert r.verdict == ("reproduced" if max(p_low, p_up) <= ALPHA else "inconclusive")
    # equivalent <=> the 90% t interval lies inside (−m, m)
    assert (r.verdict == "reproduced") == (-m < r.ci[0] and r.ci[1] < m)
    assert equivalence_test(a, b, margin=0.001).verdict != "reproduced"
    far = equivalence_test(a + 5.0, b, margin=0.3)
    assert far.verdict == "not reproduced"
    with pytest.raises(ValueError, match="margin"):
        equivalence_test(a, b, margin=0.0)


def test_fieller_interval_on_a_case_computed_by_hand():
    # x = (2, 4, 6), y = (1, 2, 2): x̄ = 4, ȳ = 5/3, s_x² = 4, s_y² = 1/3, s_xy = 1, n = 3;
    # t = t_{0.95, 2} = 2.9199855803537242; v = s/n;
    # a = ȳ² − t² v22, b = x̄ȳ − t² v12, c = x̄² − t² v11 -> (b ∓ √(b² − ac))/a
    r = paired_ratio([2, 4, 6], [0, 0, 0], [1, 2, 2], [0, 0, 0])
    assert r.ratio == pytest.approx(4 / (5 / 3))
    assert r.ci_kind == "interval" and r.bounded
    assert r.ci == pytest.approx((0.7346585187922351, 3.4442552192269345), rel=1e-10)
    assert r.per_seed == pytest.approx((2.0, 2.0, 3.0))
    # Fieller's limits are where the paired t test of x − R·y sits at the critical value
    x, y = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 2.0])
    for lim in r.ci:
        assert st.ttest_1samp(x - lim * y, 0).statistic ** 2 == pytest.approx(2.9199855803537242**2)
    assert r.exceeds(0.5).verdict == "reproduced" and r.exceeds(4.0).verdict == "not reproduced"
    assert r.exceeds(2.0).verdict == "inconclusive"
    assert "Fieller CI" in r.sentence(percent=True)


def test_fieller_says_when_the_interval_is_unbounded():
    r = paired_ratio([3, 4, 5], [1, 1, 1], [4, -5, 4], [1, 1.5, 1])
    assert r.ci_kind == "exclusive" and not r.bounded
    assert "not significantly non-zero" in r.sentence()
    assert r.exceeds(0.0).verdict == "inconclusive"
    r = paired_ratio([3, -4, 5.5], [0, 0, 0], [4, -5, 1.5], [0, 0, 0])
    assert r.ci_kind == "unbounded" and r.ci == (-math.inf, math.inf)


def test_trend_test_on_known_monotone_data_and_against_scipy():
    x = [0.1, 0.2, 0.4, 0.8, 1.6]
    up = np.array([[1, 2, 3, 4, 5], [0, 1, 2, 3, 9], [2, 3, 4, 5, 6]], float)
    r = trend_test(x, up)
    assert r.verdict == "reproduced" and r.effect == pytest.approx(1.0) and r.label == "τ̄"
    assert trend_test(x, -up).verdict == "not reproduced"
    rng = np.random.default_rng(4)
    noisy = np.arange(5)[None, :] * 0.5 + rng.normal(0, 1, (4, 5))
    r = trend_test(x, noisy)
    taus = [st.kendalltau(x, row).statistic for row in noisy]
    ref = st.ttest_1samp(taus, 0, alternative="greater")
    assert r.p == pytest.approx(float(ref.pvalue), rel=1e-12) and r.df == 3
    # a constant seed has no trend (τ = 0), not NaN
    flat = trend_test(x, np.vstack([noisy, np.zeros(5)]))
    assert flat.n == 5


def test_all_of_is_an_intersection_union_claim():
    assert all_of("reproduced", "reproduced") == "reproduced"
    assert all_of("reproduced", "inconclusive") == "inconclusive"
    assert all_of("reproduced", "inconclusive", "not reproduced") == "not reproduced"
    assert all_of(paired_test([1.0, 1.1, 1.2]), "reproduced") == "reproduced"
    with pytest.raises(ValueError):
        all_of()
    with pytest.raises(ValueError):
        all_of("maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paired_test([1.0]), ">= 2 seeds"),
        (lambda: paired_test([1.0, math.nan]), "NaN"),
        (lambda: paired_test([1.0, 2.0], [1.0]), "same length"),
        (lambda: paired_test([1.0, -2.0], [1.0, 1.0], log=True), "positive"),
        (lambda: paired_test([1.0, 2.0], alpha=0.7), "alpha"),
        (lambda: welch_test([1.0], [1.0, 2.0]), ">= 2"),
        (lambda: equivalence_test([1.0, 2.0], margin=-1.0), "margin"),
        (lambda: trend_test([1, 2], [[1, 2]]), ">= 3 points"),
        (lambda: trend_test([1, 2, 3], [[1, 2, math.nan]]), "NaN"),
        (lambda: peak_test(np.zeros((5, 2))), ">= 3 points"),
        (lambda: peak_test(np.zeros((2, 5))), "n_locate"),
        (lambda: peak_test(np.zeros((5, 5)), at=4), "interior"),
        (lambda: peak_test(np.zeros((5, 5)), at=2, left=2), "left"),
        (lambda: paired_ratio([1, 2], [0, 0], [1, -1], [0, 0]), "undefined"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_peak_test_public_function_and_vectorized_core_agree():
    rng = np.random.default_rng(5)
    v = rng.normal(0, 1, (120, 5, 8))
    v[:40, :, 4] += 4.0  # some with a peak, some without
    for kw in ({}, {"at": 4}, {"at": 4, "left": 1}, {"at": 1}):
        core = S._peak_reject(v, **kw)
        public = np.array([peak_test(x, **kw).verdict == "reproduced" for x in v])
        assert (core == public).all(), kw
        assert 0 < core.sum() < 120, kw  # the comparison saw both verdicts
    r = peak_test(v[0])
    assert r.locate_seeds == (0,) and r.test_seeds == (1, 2, 3, 4)
    assert r.index == 4 and r.verdict == all_of(r.rise, r.fall)
    assert "held-out" in r.how_located and "rise over point" in r.sentence()
    rl = peak_test(np.exp(v[0]), at=4, left=0, log=True)
    assert rl.rise.scale == "log" and rl.rise.ratio is not None


# ---------------------------------------------------------------------------
# Error rates and power by simulation


@pytest.mark.parametrize("n", [3, 5])
def test_paired_test_false_positive_rate_and_the_old_two_se_rule(n):
    d = np.random.default_rng(10 + n).normal(0.0, 1.0, (B, n))
    fpr = S._t_greater(d)[0].mean()
    old = (d.mean(1) / st.sem(d, axis=1) > 2.0).mean()  # the rule this module replaces
    print(f"paired_test n={n}: FPR {fpr:.3f}; '> 2 SE' rule on the same draws {old:.3f}")
    assert _fpr_ok(fpr), fpr
    if n == 3:  # negative control: P(T_2 > 2) = 0.092; the test catches the loosened rule
        assert not _fpr_ok(old), old
    # public and core agree on the first draws
    for row in d[:30]:
        assert (paired_test(row).verdict == "reproduced") == S._t_greater(row)[0]


@pytest.mark.parametrize("n, delta", [(3, 2.0), (5, 1.5)])
def test_paired_test_power_at_a_stated_effect(n, delta):
    # effect δ in units of the SD of the paired differences; oracle: noncentral t
    d = np.random.default_rng(20 + n).normal(delta, 1.0, (B, n))
    power = S._t_greater(d)[0].mean()
    want = st.nct.sf(st.t.ppf(1 - ALPHA, n - 1), n - 1, delta * math.sqrt(n))
    print(f"paired_test n={n}, δ={delta}σ: power {power:.3f} (noncentral t {want:.3f})")
    assert abs(power - want) < 3 * _mc_se(want), (power, want)


@pytest.mark.parametrize("n", [3, 5])
def test_equivalence_false_positive_rate_at_the_margin(n):
    # true difference exactly at the margin (both signs): "equivalent" must be rare
    rng = np.random.default_rng(30 + n)
    margin = 1.0
    sign = np.where(rng.random(B) < 0.5, -1.0, 1.0)[:, None]
    d = rng.normal(0.0, 1.0, (B, n)) + sign * margin
    hits = S._tost_reject(d, margin)
    for row, hit in zip(d[:30], hits[:30]):
        assert (equivalence_test(row, margin=margin).verdict == "reproduced") == hit
    fpr = hits.mean()
    # the rule it replaces: "not significantly different (two-sided) -> recovers"
    naive = (st.ttest_1samp(d, 0, axis=1).pvalue > 2 * ALPHA).mean()
    print(f"TOST n={n}: FPR at |diff| = margin {fpr:.3f}; 'no significant difference' {naive:.3f}")
    assert _fpr_ok(fpr), fpr
    assert not _fpr_ok(naive), naive


@pytest.mark.parametrize("n", [3, 5])
def test_equivalence_detectable_margin_has_80_percent_power_at_no_difference(n):
    # the quoted margin (σ = 1 known): TOST shows equivalence >= 80% of the time at diff 0
    margin = S._ncp(n - 1, ALPHA, 0.9) / math.sqrt(n)
    d = np.random.default_rng(40 + n).normal(0.0, 1.0, (B, n))
    power = S._tost_reject(d, margin).mean()
    print(f"TOST n={n}: power at the quoted margin {margin:.2f}σ_d, no difference: {power:.3f}")
    assert power >= 0.8 - 3 * _mc_se(0.8), power
    assert equivalence_test(d[0], margin=1.0).detectable == pytest.approx(
        S._ncp(n - 1, ALPHA, 0.9) * st.sem(d[0])
    )


def _peak_nulls(s: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    noise = rng.normal(0.0, 1.0, (B, s, k))
    steep = np.zeros(k)
    steep[-1] = -10.0  # flat, then the last point falls far: the least favourable null
    gradual = np.concatenate([np.zeros(k - k // 2), -np.linspace(0.5, 3.0, k // 2)])
    # epoch-wise curves: noise that wanders along the curve within a seed (a random walk)
    walk = np.cumsum(rng.normal(0.0, 1.0, (B, s, k)), axis=-1) / math.sqrt(k)
    return {
        "flat": noise,
        "flat-then-steep-fall": noise + steep,
        "flat-then-fall": noise + gradual,
        "random-walk, steep fall": walk + steep,
    }


def _in_sample_peak(v: np.ndarray) -> np.ndarray:
    """The rule this module replaces: locate on the same seeds the legs are tested on."""
    idx = S._locate_peak(v.mean(1))
    rows = np.arange(v.shape[0])
    masked = np.where(np.arange(v.shape[2])[None] < idx[:, None], v.mean(1), np.inf)
    left = np.argmin(masked, -1)
    rise = v[rows, :, idx] - v[rows, :, left]
    fall = v[rows, :, idx] - v[:, :, -1]
    return S._t_greater(rise)[0] & S._t_greater(fall)[0]


@pytest.mark.parametrize("s", [3, 5])
@pytest.mark.parametrize("k", [8, 19])
def test_peak_test_false_positive_rate_on_null_curves(s, k):
    rng = np.random.default_rng(100 * s + k)
    for name, v in _peak_nulls(s, k, rng).items():
        located = S._peak_reject(v).mean()
        fixed = S._peak_reject(v, at=k // 2).mean()
        fixed_left = S._peak_reject(v, at=k // 2, left=0).mean()
        naive = _in_sample_peak(v).mean()
        print(
            f"peak_test {name:23s} S={s} K={k:2d}: FPR located {located:.3f}, at= {fixed:.3f}, "
            f"at=+left= {fixed_left:.3f}; in-sample location {naive:.3f}"
        )
        assert _fpr_ok(located) and _fpr_ok(fixed) and _fpr_ok(fixed_left), (
            name,
            located,
            fixed,
            fixed_left,
        )
        if name.endswith("steep-fall"):  # negative control: the least favourable null
            assert not _fpr_ok(naive), (name, naive)


@pytest.mark.parametrize("k", [8, 19])
def test_peak_test_power_for_a_six_sd_interior_peak(k):
    # planted: baseline flat at 0, one interior point (k // 2) raised by 6σ, the last point
    # at baseline; 5 seeds, independent N(0, σ²) noise per seed and point
    rng = np.random.default_rng(200 + k)
    v = rng.normal(0.0, 1.0, (B, 5, k))
    v[:, :, k // 2] += 6.0
    located = S._peak_reject(v).mean()
    fixed = S._peak_reject(v, at=k // 2).mean()
    v3 = v[:, :3]
    print(
        f"peak_test power, 6σ point, K={k}: 5 seeds located {located:.3f}, at= {fixed:.3f}; "
        f"3 seeds located {S._peak_reject(v3).mean():.3f}, at= {S._peak_reject(v3, at=k // 2).mean():.3f}, "
        f"at=+left= {S._peak_reject(v3, at=k // 2, left=0).mean():.3f}"
    )
    assert located >= 0.8 and fixed >= 0.8, (located, fixed)


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ of x against each row of y (continuous data, no ties), vectorized."""
    i, j = np.triu_indices(x.size, 1)
    return (np.sign(x[j] - x[i]) * np.sign(y[..., j] - y[..., i])).mean(-1)


@pytest.mark.parametrize("s", [3, 5])
def test_trend_test_false_positive_rate_and_power(s):
    k, rng = 8, np.random.default_rng(300 + s)
    x = np.arange(k, dtype=float)
    null = rng.normal(0.0, 1.0, (B, s, k))
    sloped = null + 0.3 * x  # slope 0.3σ per point
    taus = _kendall_rows(x, null)
    for row, tau in zip(null[:5, 0], taus[:5, 0]):
        assert tau == pytest.approx(st.kendalltau(x, row).statistic)
    for vals in null[:20]:
        assert (trend_test(x, vals).verdict == "reproduced") == S._t_greater(
            _kendall_rows(x, vals)
        )[0]
    fpr = S._t_greater(taus)[0].mean()
    power = S._t_greater(_kendall_rows(x, sloped))[0].mean()
    print(f"trend_test S={s}, {k} points: FPR {fpr:.3f}; power at slope 0.3σ/point {power:.3f}")
    assert _fpr_ok(fpr), fpr
    assert power >= 0.5, power


def test_stats_imports_no_torch():
    # loaded as a file on its own, so the package's own imports do not count
    import subprocess
    import sys

    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('s', {S.__file__!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m; spec.loader.exec_module(m); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
