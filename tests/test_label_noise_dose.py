"""label-noise-dose's analysis on synthetic run tables of known truth: a peak height that
grows with the noise gives a positive slope ("reproduced"); a constant one does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments import label_noise_dose as lnd
from implicit_reg.experiments._emc_plan import DOSE_PLANS, dose_config, dose_phases

WIDTHS = (13, 16, 21, 28, 36, 47, 62, 80, 104, 136)
NOISES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def fit_width(p: float) -> int:
    """The synthetic truth: the first fitting width grows with the noise."""
    return 36 if p < 0.1 else 62 if p < 0.2 else 104


def table(*, dose: float, seeds: int = 3, noise: float = 0.004, seed: int = 0) -> pd.DataFrame:
    """Train error 0 from fit_width(p) on (else 0.1); test error 0.45 + 0.1·p everywhere,
    plus a bump of 0.01 + ``dose``·p at fit_width(p), plus seed noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in NOISES:
        for w in WIDTHS:
            bump = (0.01 + dose * p) if w == fit_width(p) else 0.0
            for s in range(seeds):
                rows.append({
                    "label_noise": p, "width": w, "seed": s, "status": "complete",
                    "train_error": 0.0 if w >= fit_width(p) else 0.1,
                    "test_error": 0.45 + 0.1 * p + bump + noise * rng.standard_normal(),
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_per_seed_slopes_equal_numpy_polyfit():
    rng = np.random.default_rng(3)
    x, h = np.array(NOISES), rng.normal(size=(4, len(NOISES)))
    expected = [np.polyfit(x, row, 1)[0] for row in h]
    assert np.allclose(lnd.per_seed_slopes(x, h), expected, rtol=1e-12)


def test_planted_dose_response_is_reproduced_with_its_slope():
    a = lnd.analyze(table(dose=0.3))
    assert a.slope.verdict == "reproduced", a.slope.sentence()
    assert a.slope.ci[0] < 0.3 < a.slope.ci[1], a.slope.sentence()  # covers the planted slope
    assert a.height_trend.verdict == "reproduced"
    assert a.noisy_slope.verdict == "reproduced", a.noisy_slope.sentence()
    assert [lv.fit_width for lv in a.levels] == [fit_width(p) for p in NOISES]
    assert all(lv.peak.verdict == "reproduced" for lv in a.levels if lv.noise > 0)
    assert a.fit_trend.verdict == "reproduced"
    assert a.peak_trend.verdict == "reproduced"
    assert a.location.verdict == "reproduced", a.location.sentence()  # argmax = w_fit


def test_constant_peak_height_is_not_a_dose_response():
    hits = 0
    for k in range(40):
        a = lnd.analyze(table(dose=0.0, seed=10 + k))
        hits += a.slope.verdict == "reproduced"
    assert hits <= 6, hits  # about 5% of 40 under the null; 6 is > 3 SD above 2


def test_argmax_far_from_the_threshold_is_not_called_equivalent():
    t = table(dose=0.3)
    # move every noisy level's highest point to the narrowest width: the peak no longer
    # sits at w_fit, so the location claim must not be reproduced
    t.loc[(t.width == 13) & (t.label_noise > 0), "test_error"] += 0.5
    a = lnd.analyze(t)
    assert a.location.verdict != "reproduced", a.location.sentence()


def test_untestable_levels_say_why():
    t = table(dose=0.3)
    t.loc[t.label_noise == 0.3, "train_error"] = 0.2  # nothing fits at 30%
    a = lnd.analyze(t)
    lv = next(lv for lv in a.levels if lv.noise == 0.3)
    assert lv.fit_width is None and lv.height is None
    assert "fits" in lv.peak.reason
    with pytest.raises(ValueError, match="lacks columns"):
        lnd.analyze(t.drop(columns="seed"))


def test_plan_matches_double_descent_width_where_it_ran_no_probes(tmp_path: Path):
    plan = DOSE_PLANS["small"]
    c = dose_config(plan, 80, 0.15, 1)
    assert (c.dataset, c.n_train, c.epochs, c.eval_every, c.probes) == (
        "mnist1d_large",
        4000,
        500,
        200,
        (),
    )
    phases = dose_phases(plan)
    # one noise level per phase, the dose range spanned first: 30%, then 20%, 5%, 10%
    assert [t for t, _ in phases[:4]] == [
        "30% noise, first seeds", "20% noise, first seeds", "5% noise, first seeds",
        "10% noise, first seeds",
    ]  # fmt: skip
    assert all(len(cs) == len(plan.widths) * plan.seeds for _, cs in phases[:4])
    assert {c.label_noise for _, cs in phases[-4:] for c in cs} == {0.0, 0.15}
    # with an empty store the 0% and 15% rows come from double-descent-width's table
    ddw = tmp_path / "runs.csv"
    pd.DataFrame([
        {"setting": lnd.DDW_SETTINGS[p], "label_noise": p, "width": w, "seed": s,
         "status": "complete", "train_error": 0.0, "test_error": 0.5, "train_loss": 0.1,
         "test_loss": 2.0, "n_params": 1}
        for p in (0.0, 0.15) for w in plan.widths for s in range(3)
    ]).to_csv(ddw, index=False)  # fmt: skip
    rows = lnd.run_table(pd.DataFrame({"config_hash": []}), plan, ddw)
    assert sorted(rows.label_noise.unique()) == [0.0, 0.15]
    assert set(rows.source) == {"double-descent-width runs.csv"}
    assert len(rows) == 2 * len(plan.widths) * 3


def test_smoke_run_writes_a_report(tmp_path: Path):
    report = lnd.run("smoke", tmp_path)
    assert report.path.is_file()
    rows = pd.read_csv(tmp_path / "runs.csv")
    assert set(rows.source) == {"this sweep"} and len(rows) == 4


def test_a_level_without_every_width_is_left_out_whole():
    t = table(dose=0.3)
    t = t[~((t.width >= 62) & (t.label_noise == 0.2))]  # 20%: the wide widths still running
    a = lnd.analyze(t)
    assert a.partial == (0.2,)
    assert [lv.noise for lv in a.levels] == [p for p in NOISES if p != 0.2]
    assert all(lv.widths == WIDTHS for lv in a.levels)


def test_the_second_rule_is_tested_on_held_out_seeds_only():
    t = table(dose=0.0, seeds=5, seed=3)
    for p in NOISES:
        below = WIDTHS[WIDTHS.index(fit_width(p)) - 1]
        t.loc[(t.label_noise == p) & (t.width == below), "test_error"] += 0.05
    a = lnd.analyze(t)
    assert all(lv.peak_below.verdict == "reproduced" for lv in a.levels)
    t.loc[t.seed < lnd.HOLDOUT_FROM, "test_error"] = 0.9  # seeds 0-2 never enter
    b = lnd.analyze(t)
    assert [lv.peak_below.rise for lv in a.levels] == [lv.peak_below.rise for lv in b.levels]
    assert all("held-out" in lv.peak_below.reason for lv in lnd.analyze(t[t.seed < 3]).levels)
