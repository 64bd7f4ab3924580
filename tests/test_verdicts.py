"""The verdict rule of every claim: effect against its standard error over seeds."""

import math

import numpy as np
import pytest

from implicit_reg.report.report import effect_text, judge, seed_effect


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
