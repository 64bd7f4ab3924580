"""The peak finder and the peak verdict of the double-descent experiments, on hand-made curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments._sweeps import bump_index, peak_effects, verdict_of


def test_bump_is_the_double_descent_peak_not_the_underfitting_edge():
    # high at the smallest model (underfitting), a minimum, a bump, a fall: the MNIST-1D shape
    v = [0.80, 0.55, 0.48, 0.52, 0.54, 0.50, 0.46]
    assert int(np.argmax(v)) == 0
    assert bump_index(v) == 4  # min(0.54 − 0.48, 0.54 − 0.46) = 0.06 is the largest
    assert bump_index([0.9, 0.7, 0.5, 0.4]) is None  # monotone: no bump
    assert bump_index([0.1, 0.2, 0.3]) is None  # rising to the edge: no bump
    assert bump_index([0.5, 0.6]) is None


def test_peak_effects_pairs_seeds_and_judges_rise_and_fall():
    widths = [2, 4, 8, 16, 32]
    base = np.array([0.8, 0.5, 0.6, 0.45, 0.40])
    offsets = np.array([0.00, 0.01, -0.01])  # a seed shifts its whole curve
    table = pd.DataFrame(base + offsets[:, None], columns=widths)
    p = peak_effects(table)
    assert (p["peak"], p["left"], p["right"], p["top"]) == (8, 4, 32, 2)
    # paired differences are exact: the offsets cancel, so the SE is 0 and rise/fall are
    # 0.6 − 0.5 and 0.6 − 0.40
    assert p["rise"][0] == pytest.approx(0.1) and p["rise"][1] == pytest.approx(0.0, abs=1e-12)
    assert p["fall"][0] == pytest.approx(0.2)
    assert p["verdict"] is True
    assert p["seed_peaks"] == [8, 8, 8]
    # seeds that disagree on the bump: rise per seed 0.10, −0.01, 0.08, mean 0.057 and
    # SE 0.034, inside 2 SE: inconclusive
    split = pd.DataFrame(
        [[0.8, 0.5, 0.60, 0.45, 0.4], [0.8, 0.5, 0.49, 0.45, 0.4], [0.8, 0.5, 0.58, 0.45, 0.4]],
        columns=widths,
    )
    q = peak_effects(split)
    assert q["peak"] == 8 and q["rise"][0] == pytest.approx(0.17 / 3)
    assert q["rise"][1] == pytest.approx(np.std([0.10, -0.01, 0.08], ddof=1) / np.sqrt(3))
    assert q["verdict"] is None


def test_unfinished_seeds_are_dropped_before_widths():
    table = pd.DataFrame([[0.8, 0.5, 0.6, 0.4], [0.8, 0.5, math.nan, 0.4]], columns=[1, 2, 3, 4])
    p = peak_effects(table)
    assert p["seeds"] == 1 and p["peak"] == 3
    assert math.isnan(p["rise"][1]) and p["verdict"] is None  # one seed: no SE, no verdict


def test_verdict_of_combines_judgements():
    assert verdict_of(True, True) is True
    assert verdict_of(True, None) is None
    assert verdict_of(None, False) is False
