"""The peak helpers of the double-descent experiments, on hand-made curves: where a peak is
placed before it is tested, and that the test (implicit_reg.stats.peak_test) decides it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments._sweeps import (
    Peak,
    complete_seeds,
    first_fit,
    highest_bump,
    peak_of,
)
from implicit_reg.stats import peak_test


def test_highest_bump_is_the_double_descent_peak_not_the_underfitting_edge():
    # high at the smallest model (underfitting), a minimum, a bump, a fall: the MNIST-1D shape
    v = [0.80, 0.55, 0.48, 0.52, 0.54, 0.50, 0.46]
    assert int(np.argmax(v)) == 0
    assert highest_bump(v) == 4  # min(0.54 − 0.48, 0.54 − 0.46) = 0.06 is the largest
    assert highest_bump([0.9, 0.7, 0.5, 0.4]) is None  # monotone: no bump
    assert highest_bump([0.1, 0.2, 0.3]) is None  # rising to the edge: no bump
    assert highest_bump([0.5, 0.6]) is None


def test_first_fit_reads_the_threshold_off_training_error():
    train = pd.DataFrame([[0.5, 0.2, 0.005, 0.0], [0.4, 0.1, 0.015, 0.0]], columns=[2, 4, 8, 16])
    assert first_fit(train, 0.01) == 8  # mean 0.01 at w = 8
    assert first_fit(train, 0.001) == 16
    assert first_fit(train + 1.0, 0.01) is None


def test_peak_of_places_the_peak_at_the_threshold_and_matches_peak_test():
    rng = np.random.default_rng(0)
    widths = [2, 4, 8, 16, 32]
    base = np.array([0.8, 0.5, 0.7, 0.45, 0.40])  # a planted peak at w = 8, 0.2 above w = 4
    table = pd.DataFrame(base + 0.01 * rng.standard_normal((5, 5)), columns=widths)
    p = peak_of(table, at=8)
    assert isinstance(p, Peak) and p.x == 8 and p.at == 8 and p.seeds == 5
    assert p.verdict == "reproduced"
    ref = peak_test(table.to_numpy(), at=2)
    assert p.test.rise.effect == pytest.approx(ref.rise.effect)
    assert p.test.fall.effect == pytest.approx(ref.fall.effect)
    # the peak removed (w = 8 at the level of w = 4): the same design says inconclusive
    flat = table.copy()
    flat[8] = flat[4] + 0.01 * rng.standard_normal(5)
    assert peak_of(flat, at=8).verdict != "reproduced"
    with pytest.raises(ValueError, match="end point"):
        peak_of(table, at=32)
    with pytest.raises(ValueError, match="not one of the points"):
        peak_of(table, at=5)


def test_unfinished_seeds_are_dropped_before_widths():
    table = pd.DataFrame([[0.8, 0.5, 0.6, 0.4], [0.8, 0.5, math.nan, 0.4]], columns=[1, 2, 3, 4])
    assert complete_seeds(table).index.tolist() == [0]
    all_gappy = pd.DataFrame([[0.8, math.nan, 0.6], [math.nan, 0.5, 0.6]], columns=[1, 2, 3])
    assert complete_seeds(all_gappy).columns.tolist() == [3]
