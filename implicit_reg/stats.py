"""The statistics every verdict comes from: one module, numpy and scipy only.

A claim is a one-sided test at level ``ALPHA``; its verdict is ``"reproduced"``
(significant in the claimed direction), ``"not reproduced"`` (significant in the
opposite direction) or ``"inconclusive"`` (neither; the result then says what
effect the design could have detected). Every test takes the t quantile for its
real degrees of freedom: with 3 seeds an effect needs t₂ ≥ 2.92, not 2.

Rules, and the error rates ``tests/test_stats.py`` measures on simulated data of
known truth (independent Gaussian seed noise, α = 0.05, 4,000 draws per cell, so a
Monte Carlo SE of 0.0034 at 0.05; the suite fails above 0.05 + 3 SE = 0.060):

=========================  ===========================================  ========================
rule                       false-positive rate (null)                   power (planted truth)
=========================  ===========================================  ========================
paired_test, 3 seeds       0.054; old "> 2 SE" rule, same draws: 0.094  δ = 2σ_d: 0.70 (nct 0.71)
paired_test, 5 seeds       0.052; old rule: 0.058                       δ = 1.5σ_d: 0.86 (0.86)
equivalence_test (TOST)    at |true diff| = margin: 3 seeds 0.047,      no difference, margin =
                           5 seeds 0.044; "no significant difference"   ``detectable``: 3 seeds
                           rule: 0.68 and 0.41                          0.82, 5 seeds 0.81
peak_test, located on      3/5 seeds × 8/19 points: flat ≤ 0.012,       6σ interior point, last
held-out seeds             flat-then-fall ≤ 0.042, flat then last point  at baseline: 5 seeds
                           −10σ (least favourable) ≤ 0.053, the same     1.00 (8 and 19 points);
                           with random-walk noise along each seed's      3 seeds 0.45–0.47
                           curve ≤ 0.055; locating in-sample instead:
                           0.18–0.66 on the last two
peak_test, ``at`` given    same nulls: ≤ 0.055 (left located on a held-  5 seeds 1.00; 3 seeds
                           out seed), ≤ 0.057 (``left`` given too)       0.64–0.67, with left=
                                                                         given 0.99
trend_test (8 points)      3 seeds 0.051, 5 seeds 0.053                 slope 0.3σ/point: 3 seeds
                                                                         0.70, 5 seeds 0.95
=========================  ===========================================  ========================

(``pytest -s tests/test_stats.py`` prints these numbers.)

Where a peak is located matters more than any threshold: locating the peak and
its left minimum by argmax/argmin of the same means the effects are then
measured on makes noise look like a peak: even with the t quantile, 29–66% of
curves that are flat and then fall pass (table above). ``peak_test`` either
takes the location as an argument fixed before the test (``at=``: e.g. the
interpolation threshold read from *training* error) or locates it on held-out
seeds and tests it on the rest.

References: Student (1908) and ``scipy.stats.ttest_1samp``/``ttest_rel``;
Welch (1947) and ``scipy.stats.ttest_ind(equal_var=False)``; Schuirmann (1987),
J. Pharmacokinet. Biopharm. 15:657, two one-sided tests; Fieller (1954), J. R.
Stat. Soc. B 16:175; Berger (1982), Technometrics 24:295, intersection-union
tests; Kendall (1938) and ``scipy.stats.kendalltau``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize
from scipy import stats as st

__all__ = [
    "ALPHA",
    "POWER",
    "PeakResult",
    "RatioResult",
    "TestResult",
    "Verdict",
    "all_of",
    "equivalence_test",
    "paired_ratio",
    "paired_test",
    "peak_test",
    "trend_test",
    "welch_test",
]

#: the verdict of a claim: its test passed, could not decide, or decided against it
Verdict = Literal["reproduced", "inconclusive", "not reproduced"]
ALPHA = 0.05  #: one-sided level of every claim
POWER = 0.8  #: the power at which `detectable` is quoted


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class TestResult:
    """One one-sided test of the claim "effect > 0".

    ``effect`` is the mean effect on the tested scale (for ``scale == "log"`` a
    mean log-ratio; ``ratio`` gives exp(effect)), ``se`` its standard error, ``p``
    the one-sided p-value for "effect > 0" (for TOST: the larger of its two p), ``ci``
    the two-sided (1 − 2α) t interval (outside TOST it excludes 0 exactly when the
    verdict is not "inconclusive"; in TOST it lies inside ±margin exactly when the
    verdict is "reproduced"), and
    ``detectable`` the smallest true effect the design detects with 80% power at
    level α, if the noise is as measured (noncentral t with the real df).
    """

    __test__ = False  # not a pytest class, despite the name

    verdict: Verdict
    effect: float
    se: float
    df: float
    p: float
    ci: tuple[float, float]
    n: int
    alpha: float
    detectable: float
    method: str
    scale: str
    t: float = math.nan
    label: str = ""  # what the effect is, e.g. "τ̄" for a trend; "" for a difference
    margin: float | None = None  # equivalence margin (TOST only)

    @property
    def ratio(self) -> float | None:
        """exp(effect) on the log scale (the geometric-mean ratio a/b); None on a linear one."""
        return math.exp(self.effect) if self.scale == "log" else None

    def sentence(self) -> str:
        """E.g. ``+0.024 ± 0.006 (t₂ = 3.7, p = 0.033, 90% CI 0.007 to 0.041)``.

        On the log scale the effect reads as a ratio, ``×1.35 (log-ratio +0.30 ± 0.05,
        ...)``; an inconclusive result adds what the design could have detected.
        """
        level = f"{100 * (1 - 2 * self.alpha):.0f}% CI"
        stat = f"{_t_symbol(self.df)} = {_tval(self.t)}, {_p(self.p)}"
        if self.scale == "log":
            lo, hi = (math.exp(c) for c in self.ci)
            head = (
                f"×{_num(math.exp(self.effect), 3)} (log-ratio {_pm(self.effect, self.se)}, "
                f"{stat}, {level} ×{_num(lo, 3)} to ×{_num(hi, 3)}"
            )
        else:
            d = _decimals(self.se)
            head = (
                f"{self.label + ' = ' if self.label else ''}{_pm(self.effect, self.se)} "
                f"({stat}, {level} {self.ci[0]:.{d}f} to {self.ci[1]:.{d}f}"
            )
        if self.margin is not None and self.scale == "log":
            head += f", margin ×/÷{_num(math.exp(self.margin), 3)}"
        elif self.margin is not None:
            head += f", margin ±{_num(self.margin, 3)}"
        head += ")"
        if self.verdict == "inconclusive" and math.isfinite(self.detectable):
            log = self.scale == "log"
            if self.margin is not None:
                what = "could show equivalence within " + ("×/÷" if log else "±")
            else:
                what = "could detect ≥ " + ("×" if log else "")
            det = (
                f"{_num(math.exp(self.detectable), 3)} (log {_num(self.detectable, 2)})"
                if log
                else _num(self.detectable, 2)
            )
            head += f"; {what}{det} with {POWER:.0%} power"
        return head


@dataclass(frozen=True)
class PeakResult:
    """A peak claim: ``values[:, index]`` is above ``values[:, left]`` (rise) and above
    the last point (fall). ``verdict`` is ``all_of(rise, fall)`` (Berger 1982)."""

    verdict: Verdict
    index: int
    left: int
    how_located: str
    rise: TestResult
    fall: TestResult
    test_seeds: tuple[int, ...]
    locate_seeds: tuple[int, ...]

    def sentence(self) -> str:
        return (
            f"peak at point {self.index} ({self.how_located}): rise over point {self.left} "
            f"{self.rise.sentence()}; fall to the last point {self.fall.sentence()}"
        )


@dataclass(frozen=True)
class RatioResult:
    """R = mean(x)/mean(y) for paired per-seed differences x = num_a − num_b,
    y = den_a − den_b, with Fieller's (1 − 2α) interval.

    ``ci_kind`` is ``"interval"`` (R in [lo, hi]), ``"exclusive"`` (R outside (lo, hi):
    the denominator is not significantly non-zero, the set is two rays) or
    ``"unbounded"`` (every R; ``ci`` is (−inf, inf)). ``per_seed`` lists x_i / y_i,
    which with ≤ 5 seeds are the evidence to report rather than a bootstrap.
    """

    ratio: float
    ci: tuple[float, float]
    ci_kind: Literal["interval", "exclusive", "unbounded"]
    per_seed: tuple[float, ...]
    numerator: TestResult
    denominator: TestResult
    n: int
    df: int
    alpha: float
    x: tuple[float, ...]
    y: tuple[float, ...]

    @property
    def bounded(self) -> bool:
        return self.ci_kind == "interval"

    def exceeds(self, r0: float) -> TestResult:
        """The claim R > r0: a paired t test of s·(x_i − r0·y_i) > 0 with s = sign(mean y).

        Its two-sided 2α version excludes exactly the r0 outside Fieller's set, so
        the two agree; with an unbounded interval the verdict is "inconclusive"."""
        s = 1.0 if float(np.mean(self.y)) >= 0 else -1.0
        d = s * (np.asarray(self.x) - r0 * np.asarray(self.y))
        res = paired_test(d, alpha=self.alpha)
        if not self.bounded and res.verdict != "inconclusive":
            res = _replace_verdict(res, "inconclusive")
        return res

    def sentence(self, *, percent: bool = False) -> str:
        f = (lambda v: f"{100 * v:.0f}%") if percent else (lambda v: _num(v, 3))
        level = f"{100 * (1 - 2 * self.alpha):.0f}%"
        seeds = ", ".join(f(v) for v in self.per_seed)
        if self.ci_kind == "interval":
            ci = f"{level} Fieller CI {f(self.ci[0])} to {f(self.ci[1])}"
        elif self.ci_kind == "exclusive":
            ci = (
                f"{level} Fieller set unbounded: outside {f(self.ci[0])} to {f(self.ci[1])}, "
                "the denominator is not significantly non-zero"
            )
        else:
            ci = f"{level} Fieller set is the whole line: the denominator is not significant"
        return f"{f(self.ratio)} (per seed {seeds}; {ci})"


# ---------------------------------------------------------------------------
# Tests


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray | None = None,
    *,
    alpha: float = ALPHA,
    log: bool = False,
) -> TestResult:
    """Claim "a > b" over paired seeds (b=None: the one-sample claim mean(a) > 0).

    d_i = a_i − b_i (or log a_i − log b_i with ``log=True``, for heavy-tailed
    positive quantities: the effect is then the mean log-ratio). Student's t:
    t = d̄ / (s_d/√n) with df = n − 1 (``scipy.stats.ttest_1samp``, identical to
    ``ttest_rel(a, b)``); reproduced when p = P(T_{n−1} ≥ t) ≤ α, not reproduced
    when P(T_{n−1} ≤ t) ≤ α. With zero spread the sign of d̄ is certain (p = 0 or 1).

    Raises ValueError for n < 2 (no variance, so no test), NaN/inf, shape mismatch,
    or non-positive values with ``log=True``.
    """
    d = _differences(a, b, log=log)
    return _from_diffs(d, alpha=alpha, scale="log" if log else "linear", method="paired t")


def welch_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    alpha: float = ALPHA,
    log: bool = False,
) -> TestResult:
    """Unpaired claim "mean a > mean b" (Welch 1947; ``scipy.stats.ttest_ind(equal_var=False)``).

    t = (ā − b̄)/√(s_a²/n_a + s_b²/n_b), df by Welch–Satterthwaite (not an integer).
    Use it only where seeds are not paired (different run sets)."""
    _check_alpha(alpha)
    x, y = _finite(a, "a", log=log), _finite(b, "b", log=log)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"welch_test needs >= 2 values per group, got {x.size} and {y.size}")
    if log:
        x, y = np.log(x), np.log(y)
    effect = float(x.mean() - y.mean())
    se = float(math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size))
    if se == 0:
        df = float(x.size + y.size - 2)
        t, p = _degenerate(effect)
    else:
        res = st.ttest_ind(x, y, equal_var=False, alternative="greater")
        t, p, df = float(res.statistic), float(res.pvalue), float(res.df)
    return _result(effect, se, df, p, t, n=x.size + y.size, alpha=alpha, method="Welch t", log=log)


def equivalence_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray | None = None,
    *,
    margin: float,
    alpha: float = ALPHA,
    log: bool = False,
) -> TestResult:
    """Paired TOST (Schuirmann 1987): "a and b agree within ±margin".

    Two one-sided t tests on d = a − b (``scipy.stats.ttest_1samp`` against −margin,
    "greater", and +margin, "less"), p = max of the two; "reproduced" (equivalent)
    when p ≤ α, i.e. the (1 − 2α) t interval lies inside (−margin, margin); "not
    reproduced" when the interval lies wholly outside it (significantly not
    equivalent); otherwise "inconclusive". With ``log=True`` d is the log-ratio and
    ``margin`` a log-ratio (e.g. log 1.1 for ±10%). ``detectable`` is the margin
    this design would establish with ≥ 80% power if the true difference were 0
    (each one-sided test at 90% power, union bound). ``t`` is the smaller of the
    two one-sided statistics.
    """
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin > 0):
        raise ValueError(f"equivalence_test needs a stated margin > 0, got {margin!r}")
    _check_alpha(alpha)
    d = _differences(a, b, log=log)
    n, df = d.size, d.size - 1
    effect = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        inside = abs(effect) < margin
        t, p = (math.inf, 0.0) if inside else (-math.inf, 1.0)
        p_out = 0.0 if not inside else 1.0
    else:
        lower = st.ttest_1samp(d, -margin, alternative="greater")
        upper = st.ttest_1samp(d, margin, alternative="less")
        p = float(max(lower.pvalue, upper.pvalue))
        t = float(min(lower.statistic, -upper.statistic))
        # significantly outside: above +margin or below −margin, each one-sided at α
        p_out = float(
            min(
                st.ttest_1samp(d, margin, alternative="greater").pvalue,
                st.ttest_1samp(d, -margin, alternative="less").pvalue,
            )
        )
    verdict: Verdict = (
        "reproduced" if p <= alpha else "not reproduced" if p_out <= alpha else "inconclusive"
    )
    lo, hi = _ci(effect, se, df, alpha)
    return TestResult(
        verdict=verdict,
        effect=effect,
        se=se,
        df=df,
        p=p,
        ci=(lo, hi),
        n=n,
        alpha=alpha,
        detectable=_ncp(df, alpha, 1 - (1 - POWER) / 2) * se,
        method=f"TOST paired t (df={df})",
        scale="log" if log else "linear",
        t=t,
        margin=float(margin),
    )


def trend_test(
    x: Sequence[float] | np.ndarray,
    values: Sequence[Sequence[float]] | np.ndarray,
    *,
    alpha: float = ALPHA,
) -> TestResult:
    """Claim "values increase with x" (over h, B, N, ...); negate values for "decrease".

    ``values[seed, point]``. Each seed's curve gives Kendall's τ_b against x
    (``scipy.stats.kendalltau``; a constant curve has τ = 0); the claim is
    mean τ > 0 by a one-sample t test over seeds (df = seeds − 1), so the unit of
    replication is the seed, as for every other claim. Rank-based, it needs no
    scale and is unmoved by a heavy-tailed point. With all seeds at the same τ ≠ 0
    (e.g. every curve perfectly monotone) the sign is certain and p = 0.
    """
    xs = _finite(x, "x")
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != xs.size:
        raise ValueError(f"values must be [seed, point] with {xs.size} points, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf; drop the seed or the point first")
    if xs.size < 3:
        raise ValueError(f"trend_test needs >= 3 points, got {xs.size}")
    taus = np.array([_kendall(xs, row) for row in v])
    res = _from_diffs(_check_n(taus), alpha=alpha, scale="linear", method="Kendall τ per seed, t")
    return _relabel(res, "τ̄")


def peak_test(
    values: Sequence[Sequence[float]] | np.ndarray,
    *,
    at: int | None = None,
    left: int | None = None,
    n_locate: int | None = None,
    alpha: float = ALPHA,
    log: bool = False,
) -> PeakResult:
    """Claim: an interior point is higher than the lowest point before it AND higher
    than the last point. ``values[seed, point]``, points ordered by size or time.

    Intersection-union test (Berger 1982): the claim holds if both one-sided paired
    t tests reject at α, rise = v[at] − v[left] and fall = v[at] − v[last]; under any
    null (no interior point above both) one of them tests a true null, so the level
    is α without correction.

    Where the points come from decides whether the test is honest:

    - ``at`` given (fixed before the test, e.g. the interpolation threshold read
      from training error) and ``left`` given: both legs on all seeds.
    - ``at`` given, ``left`` None: the left reference is the lowest mean before ``at``
      over the first ``n_locate`` seeds (held out); the rise is tested on the other
      seeds, the fall on all seeds. (``at == 1`` needs no location: left = 0.)
    - ``at`` None: the first ``n_locate`` seeds locate the peak (the interior point
      maximizing min(m_i − min_{j<i} m_j, m_i − m_last) of their means) and its left
      minimum; both legs are tested on the remaining seeds only.

    ``n_locate`` defaults to max(1, S // 4) (S = 3–7: one seed locates). Held-out
    location makes the level exact whatever the shape of the curve and the
    correlation of points within a seed; the price is fewer seeds in the test
    (3 seeds leave df = 1, so a peak needs to be large; pass ``at``).
    ``log=True`` tests log ratios (heavy-tailed quantities such as ‖β‖ or MSE).
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values must be [seed, point], got shape {v.shape}")
    s, k = v.shape
    if k < 3:
        raise ValueError(f"peak_test needs >= 3 points (an interior one), got {k}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf; drop the seed or the point first")
    if log:
        if np.any(v <= 0):
            raise ValueError("log=True needs positive values")
        v = np.log(v)
    _check_alpha(alpha)
    if at is not None and not 1 <= at <= k - 2:
        raise ValueError(f"at must be an interior point 1..{k - 2}, got {at}")
    if left is not None and (at is None or not 0 <= left < at):
        raise ValueError(f"left must be given with at and satisfy 0 <= left < at, got {left}")
    needs_split = at is None or (left is None and at > 1)
    if needs_split:
        n_loc = max(1, s // 4) if n_locate is None else int(n_locate)
        if not 1 <= n_loc <= s - 2:
            raise ValueError(
                f"locating on held-out seeds needs 1 <= n_locate <= seeds - 2 (got n_locate="
                f"{n_loc}, {s} seeds); with fewer seeds pass at= and left="
            )
    else:
        n_loc = 0
    loc, rest = tuple(range(n_loc)), tuple(range(n_loc, s))
    m = v[:n_loc].mean(axis=0) if n_loc else None
    if at is None:
        idx = int(_locate_peak(m[None, :])[0])
        how = f"located on held-out seed(s) {list(loc)}, tested on the other {len(rest)}"
        rise_rows = fall_rows = rest
    else:
        idx = at
        how = f"fixed before the test (at={at})"
        fall_rows = tuple(range(s))
        rise_rows = rest if needs_split else fall_rows
    if left is None:
        left = 0 if idx == 1 else int(np.argmin(m[:idx]))
        if idx > 1:
            how += f"; left minimum located on held-out seed(s) {list(loc)}"
    else:
        how += f"; left={left} given"
    rise = paired_test(v[list(rise_rows), idx], v[list(rise_rows), left], alpha=alpha)
    fall = paired_test(v[list(fall_rows), idx], v[list(fall_rows), -1], alpha=alpha)
    if log:
        rise, fall = _as_log(rise), _as_log(fall)
    return PeakResult(
        verdict=all_of(rise, fall),
        index=idx,
        left=left,
        how_located=how,
        rise=rise,
        fall=fall,
        test_seeds=tuple(sorted(set(rise_rows) | set(fall_rows))),
        locate_seeds=loc,
    )


def paired_ratio(
    num_a: Sequence[float] | np.ndarray,
    num_b: Sequence[float] | np.ndarray,
    den_a: Sequence[float] | np.ndarray,
    den_b: Sequence[float] | np.ndarray,
    *,
    alpha: float = ALPHA,
) -> RatioResult:
    """R = mean(num_a − num_b) / mean(den_a − den_b), paired over seeds (e.g. "EGR
    closes R of the gap": num = EGR − GD at small h, den = GD at large h − GD at small h).

    Fieller (1954) with x_i, y_i the per-seed differences, v11 = s_x²/n,
    v22 = s_y²/n, v12 = s_xy/n and t = t_{1−α, n−1}: the (1 − 2α) set is
    {R : (x̄ − R ȳ)² ≤ t² (v11 − 2R v12 + R² v22)}, i.e. a R² − 2b R + c ≤ 0 with
    a = ȳ² − t² v22, b = x̄ȳ − t² v12, c = x̄² − t² v11. It is a finite interval
    iff a > 0 (the denominator is significantly non-zero); otherwise it is two
    rays or the whole line, and the result says so.
    """
    _check_alpha(alpha)
    x = _differences(num_a, num_b, log=False)
    y = _differences(den_a, den_b, log=False)
    if x.shape != y.shape:
        raise ValueError(f"numerator and denominator need the same seeds, {x.size} vs {y.size}")
    n, df = x.size, x.size - 1
    xm, ym = float(x.mean()), float(y.mean())
    if ym == 0:
        raise ValueError("the mean denominator difference is exactly 0; the ratio is undefined")
    cov = np.cov(np.stack([x, y]), ddof=1) / n
    tq = float(st.t.ppf(1 - alpha, df))
    qa = ym**2 - tq**2 * cov[1, 1]
    qb = xm * ym - tq**2 * cov[0, 1]
    qc = xm**2 - tq**2 * cov[0, 0]
    disc = qb**2 - qa * qc
    kind: Literal["interval", "exclusive", "unbounded"]
    if qa > 0:
        r = math.sqrt(max(disc, 0.0))
        ci, kind = ((qb - r) / qa, (qb + r) / qa), "interval"
    elif disc > 0:
        r = math.sqrt(disc)
        lo, hi = sorted(((qb - r) / qa, (qb + r) / qa))
        ci, kind = (lo, hi), "exclusive"
    else:
        ci, kind = (-math.inf, math.inf), "unbounded"
    with np.errstate(divide="ignore", invalid="ignore"):
        per_seed = tuple(float(v) for v in x / y)
    return RatioResult(
        ratio=xm / ym,
        ci=(float(ci[0]), float(ci[1])),
        ci_kind=kind,
        per_seed=per_seed,
        numerator=paired_test(x, alpha=alpha),
        denominator=paired_test(y, alpha=alpha),
        n=n,
        df=df,
        alpha=alpha,
        x=tuple(float(v) for v in x),
        y=tuple(float(v) for v in y),
    )


def all_of(*results: TestResult | PeakResult | Verdict) -> Verdict:
    """Intersection-union claim (Berger 1982): "reproduced" iff every part is,
    "not reproduced" if any part is, "inconclusive" otherwise. Each part at level
    α gives the whole claim level α; no multiplicity correction is needed."""
    if not results:
        raise ValueError("all_of needs at least one result")
    verdicts = [r if isinstance(r, str) else r.verdict for r in results]
    bad = [v for v in verdicts if v not in ("reproduced", "inconclusive", "not reproduced")]
    if bad:
        raise ValueError(f"unknown verdicts {bad}")
    if "not reproduced" in verdicts:
        return "not reproduced"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "inconclusive"


# ---------------------------------------------------------------------------
# Vectorized cores (the public functions above apply the same rules to one data
# set; the suite runs these on thousands of simulated data sets at once).


def _t_greater(d: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Paired t over the last axis of ``d``: (reject "≤ 0", reject "≥ 0") at level α."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows of identical values
        res = st.ttest_1samp(d, 0.0, axis=-1, alternative="greater")
    p = np.asarray(res.pvalue, dtype=float)
    mean = d.mean(axis=-1)
    flat = ~np.isfinite(p)
    p = np.where(flat, np.where(mean > 0, 0.0, np.where(mean < 0, 1.0, 0.5)), p)
    return p <= alpha, p >= 1 - alpha


def _tost_reject(d: np.ndarray, margin: float, alpha: float = ALPHA) -> np.ndarray:
    """``equivalence_test(d, margin=margin).verdict == "reproduced"`` over the last axis."""
    lower = st.ttest_1samp(d, -margin, axis=-1, alternative="greater").pvalue
    upper = st.ttest_1samp(d, margin, axis=-1, alternative="less").pvalue
    return np.maximum(lower, upper) <= alpha


def _locate_peak(m: np.ndarray) -> np.ndarray:
    """Interior index maximizing min(m_i − min_{j<i} m_j, m_i − m_last), per row of ``m``."""
    run_min = np.minimum.accumulate(m, axis=-1)
    score = np.minimum(m[:, 1:-1] - run_min[:, :-2], m[:, 1:-1] - m[:, -1:])
    return 1 + np.argmax(score, axis=-1)


def _peak_reject(
    v: np.ndarray,
    *,
    at: int | None = None,
    left: int | None = None,
    n_locate: int | None = None,
    alpha: float = ALPHA,
) -> np.ndarray:
    """``peak_test(v[b], ...).verdict == "reproduced"`` for every b of v[b, seed, point]."""
    b, s, _ = v.shape
    n_loc = max(1, s // 4) if n_locate is None else n_locate
    needs_split = at is None or (left is None and at > 1)
    n_loc = n_loc if needs_split else 0
    rows = np.arange(b)
    m = v[:, :n_loc].mean(axis=1) if n_loc else None
    idx = _locate_peak(m) if at is None else np.full(b, at)
    if left is not None or at == 1:
        left = np.full(b, 0 if left is None else left)
    else:
        masked = np.where(np.arange(v.shape[2])[None, :] < idx[:, None], m, np.inf)
        left = np.argmin(masked, axis=-1)
    test = v[:, n_loc:]
    fall_v = test if at is None else v
    rise = test[rows, :, idx] - test[rows, :, left]
    fall = fall_v[rows, :, idx] - fall_v[:, :, -1]
    return _t_greater(rise, alpha)[0] & _t_greater(fall, alpha)[0]


# ---------------------------------------------------------------------------
# Helpers


def _from_diffs(d: np.ndarray, *, alpha: float, scale: str, method: str) -> TestResult:
    _check_alpha(alpha)
    n = d.size
    effect = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        t, p = _degenerate(effect)
    else:
        res = st.ttest_1samp(d, 0.0, alternative="greater")
        t, p = float(res.statistic), float(res.pvalue)
    return _result(effect, se, n - 1, p, t, n=n, alpha=alpha, method=method, log=scale == "log")


def _result(
    effect: float,
    se: float,
    df: float,
    p: float,
    t: float,
    *,
    n: int,
    alpha: float,
    method: str,
    log: bool,
) -> TestResult:
    verdict: Verdict = (
        "reproduced" if p <= alpha else "not reproduced" if p >= 1 - alpha else "inconclusive"
    )
    dfs = f"{df:g}" if float(df).is_integer() else f"{df:.1f}"
    return TestResult(
        verdict=verdict,
        effect=effect,
        se=se,
        df=int(df) if float(df).is_integer() else float(df),
        p=p,
        ci=_ci(effect, se, df, alpha),
        n=n,
        alpha=alpha,
        detectable=_ncp(df, alpha, POWER) * se,
        method=f"{method} (df={dfs})",
        scale="log" if log else "linear",
        t=t,
    )


def _ci(effect: float, se: float, df: float, alpha: float) -> tuple[float, float]:
    if se == 0:
        return (effect, effect)
    lo, hi = st.t.interval(1 - 2 * alpha, df, loc=effect, scale=se)
    return (float(lo), float(hi))


@functools.lru_cache(maxsize=256)
def _ncp(df: float, alpha: float, power: float) -> float:
    """Noncentrality δ/SE at which a one-sided level-α t test with ``df`` has ``power``:
    P(T'_{df, δ} > t_{1−α, df}) = power (``scipy.stats.nct``)."""
    crit = float(st.t.ppf(1 - alpha, df))
    return float(optimize.brentq(lambda nc: st.nct.sf(crit, df, nc) - power, 0.0, 1e4))


def _degenerate(effect: float) -> tuple[float, float]:
    """Zero spread: the sign of the effect is certain."""
    if effect > 0:
        return math.inf, 0.0
    if effect < 0:
        return -math.inf, 1.0
    return math.nan, 0.5


def _kendall(x: np.ndarray, y: np.ndarray) -> float:
    if np.all(y == y[0]):
        return 0.0
    return float(st.kendalltau(x, y).statistic)


def _finite(a: Sequence[float] | np.ndarray, name: str, *, log: bool = False) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one value per seed (1-D), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr.tolist()}")
    if log and np.any(arr <= 0):
        raise ValueError(f"log=True needs positive values; {name} = {arr.tolist()}")
    return arr


def _check_n(d: np.ndarray) -> np.ndarray:
    if d.size < 2:
        raise ValueError(f"a test over seeds needs >= 2 seeds, got {d.size}")
    return d


def _differences(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray | None, *, log: bool
) -> np.ndarray:
    x = _finite(a, "a", log=log)
    if b is None:
        if log:
            raise ValueError("log=True needs b (the effect is log(a) − log(b))")
        return _check_n(x)
    y = _finite(b, "b", log=log)
    if x.shape != y.shape:
        raise ValueError(f"paired seeds: a and b need the same length, {x.size} vs {y.size}")
    return _check_n(np.log(x) - np.log(y) if log else x - y)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")


def _replace_verdict(r: TestResult, verdict: Verdict) -> TestResult:
    return TestResult(**{**r.__dict__, "verdict": verdict})


def _relabel(r: TestResult, label: str) -> TestResult:
    return TestResult(**{**r.__dict__, "label": label})


def _as_log(r: TestResult) -> TestResult:
    return TestResult(**{**r.__dict__, "scale": "log"})


_SUB = str.maketrans("0123456789.", "₀₁₂₃₄₅₆₇₈₉.")


def _t_symbol(df: float) -> str:
    return "t" + (f"{df:g}" if float(df).is_integer() else f"{df:.1f}").translate(_SUB)


def _decimals(se: float) -> int:
    """Decimals that show ``se`` to two significant figures (at least 0)."""
    if not math.isfinite(se) or se <= 0:
        return 3
    return max(0, 1 - math.floor(math.log10(se)))


def _pm(effect: float, se: float) -> str:
    d = _decimals(se)
    return f"{effect:+.{d}f} ± {se:.{d}f}"


def _num(v: float, sig: int) -> str:
    if not math.isfinite(v):
        return "∞" if v > 0 else "-∞" if v < 0 else "nan"
    return f"{v:.{sig}g}"


def _tval(t: float) -> str:
    if not math.isfinite(t):
        return _num(t, 2)
    return f"{t:.0f}" if abs(t) >= 10 else f"{t:.1f}"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"
