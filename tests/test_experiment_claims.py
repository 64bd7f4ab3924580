"""The experiments' analyses and claims on synthetic run tables of known truth.

A planted effect must come out "reproduced" and the same design without it must not: these
tests fail if the claims' verdicts were flipped, dropped or decided on the same means that
located the peak. No training: the tables have the columns the engine's summaries have.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments import double_descent_width as ddw
from implicit_reg.experiments import flat_optimizers as fo
from implicit_reg.report.report import Report

SEEDS = 5


def width_rows(peak: float, *, rng: np.random.Generator) -> tuple[pd.DataFrame, object]:
    """A model-wise sweep of 8 widths: train error reaches 0 at the 5th width (w = 48); the
    test error falls, then rises by ``peak`` at that width, then falls (seed noise 0.005)."""
    setting = ddw.CONFIGS["small"].setting("mnist1d")
    widths = [8, 12, 18, 30, 48, 80, 150, 300]
    train = [0.40, 0.30, 0.20, 0.08, 0.005, 0.0, 0.0, 0.0]
    test = np.array([0.60, 0.52, 0.48, 0.48, 0.48, 0.46, 0.45, 0.44])
    test[4] += peak
    rows = [
        {"status": "complete", "width": w, "seed": s, "n_params": setting.params(w, 40),
         "train_error": tr, "test_error": te + 0.005 * rng.standard_normal(),
         "test_loss": 2 * te + 0.01 * rng.standard_normal()}
        for s in range(SEEDS)
        for w, tr, te in zip(widths, train, test)
    ]  # fmt: skip
    return pd.DataFrame(rows), setting


def claims_of(rows, setting, tmp_path):
    report = Report("t", "t", "smoke", tmp_path, {}, "p")
    summary = ddw.add_setting_claims(report, "mnist1d", rows, setting)
    return summary, report.claims


def test_a_planted_model_wise_peak_at_the_threshold_is_reproduced(tmp_path):
    rows, setting = width_rows(0.08, rng=np.random.default_rng(1))
    s, (rises, at_threshold, at_rule) = claims_of(rows, setting, tmp_path)
    assert s.w_fit == 48  # read from the training error, before any test
    assert rises.verdict == "reproduced" and at_threshold.verdict == "reproduced"
    assert "placed at the first fitting width: w = 48" in at_threshold.ours


def test_without_the_peak_the_same_design_is_not_reproduced(tmp_path):
    rows, setting = width_rows(0.0, rng=np.random.default_rng(1))
    _, (rises, at_threshold, _) = claims_of(rows, setting, tmp_path)
    # a flat stretch then a fall: no interior point is above its left side
    assert rises.verdict == "inconclusive"
    assert at_threshold.verdict == "inconclusive"


def test_a_peak_located_on_noise_is_not_reported(tmp_path):
    """Flat-then-falling curves: the held-out rule rarely calls a peak (the in-sample argmax
    rule the package used before called one on most such curves)."""
    hits = 0
    for seed in range(20):
        rows, setting = width_rows(0.0, rng=np.random.default_rng(100 + seed))
        _, (rises, _, _) = claims_of(rows, setting, tmp_path)
        hits += rises.verdict == "reproduced"
    assert hits <= 3, f"{hits}/20 null sweeps called a peak"


def flat_rows(egr_gain: float, *, egr_like_large: bool = False, rng) -> tuple[pd.DataFrame, object]:
    """Per-seed test accuracy of GD at h_s and h_ℓ (3 points apart) and EGR at h_s, which
    gains ``egr_gain`` over GD at h_s (or sits at GD at h_ℓ's level)."""
    cfg = fo.CONFIGS["small"]
    small, large = f"GD h={cfg.lr_small:g}", f"GD h={cfg.lr_large:g}"
    egr = f"EGR h={cfg.lr_small:g}"
    base = 0.45 + 0.01 * rng.standard_normal(SEEDS)  # seed effect shared by every arm
    acc = {small: base, large: base + 0.03, egr: base + egr_gain}
    if egr_like_large:
        acc[egr] = acc[large] + 0.001 * rng.standard_normal(SEEDS)
    lam = {small: 8.0, large: 1.0, egr: 4.0}
    rows = [
        {"arm": a, "seed": s, "reached": True, "test_acc": v[s] + 0.002 * rng.standard_normal(),
         "lambda_max": lam[a] * (1 + 0.05 * rng.standard_normal())}
        for a, v in acc.items()
        for s in range(SEEDS)
    ]  # fmt: skip
    return pd.DataFrame(rows), cfg


def test_a_planted_egr_gain_is_reproduced_and_removing_it_is_not(tmp_path):
    for gain, want in ((0.02, "reproduced"), (0.0, "inconclusive")):
        rows, cfg = flat_rows(gain, rng=np.random.default_rng(3))
        premise, gain_claim, recovers, flatter = fo.claims(fo.Analysis(rows, chosen=None), cfg)
        assert premise.verdict == "reproduced"
        assert gain_claim.verdict == want, (gain, gain_claim.ours)
        if gain:
            assert "of the h_ℓ − h_s gap" in gain_claim.ours  # the paired Fieller ratio
        assert flatter.verdict == "reproduced"


@pytest.mark.parametrize(("like_large", "want"), [(True, "reproduced"), (False, "not reproduced")])
def test_recovering_the_large_step_is_an_equivalence_not_a_missing_difference(
    tmp_path, like_large, want
):
    rows, cfg = flat_rows(0.0, egr_like_large=like_large, rng=np.random.default_rng(4))
    recovers = fo.claims(fo.Analysis(rows, chosen=None), cfg)[2]
    assert "equivalence, TOST" in recovers.statement
    assert recovers.verdict == want, recovers.ours


def sample_rows(rise: float, *, rng) -> pd.DataFrame:
    """Sample-wise runs at one width: n up to 750 fitted (train error 0), then not; the test
    error falls with n except a jump of ``rise`` at n = 1,000, the first n not fitted."""
    from implicit_reg.experiments import sample_wise as sw

    ns = [250, 500, 750, 1000, 1500, 2000, 4000]
    train = [0.0, 0.0, 0.005, 0.05, 0.10, 0.12, 0.15]
    test = np.array([0.76, 0.74, 0.71, 0.69, 0.64, 0.60, 0.51])
    test[3] += rise
    seed_shift = 0.01 * rng.standard_normal(SEEDS)
    rows = [
        {"status": "complete", "n_train": n, "seed": s, "n_params": 1543, "steps_done": n,
         "train_error": tr, "test_error": te + seed_shift[s] + 0.003 * rng.standard_normal(),
         "weight_norm": 10.0}
        for s in range(SEEDS)
        for n, tr, te in zip(ns, train, test)
    ]  # fmt: skip
    return pd.DataFrame(rows), sw


def test_sample_wise_spec_claims_on_a_synthetic_run_table():
    """analyze reads the threshold off training error (n = 750 fitted, so the rise is tested
    from 750 to 1,000); a planted rise is reproduced, the same design without it is not."""
    for rise, want in ((0.06, "reproduced"), (0.0, "not reproduced")):
        rows, sw = sample_rows(rise, rng=np.random.default_rng(5))
        cfg = sw.CONFIGS["small"]
        a = sw.analyze(rows, cfg)
        assert (a.n_fit, a.n_next) == (750, 1000) and a.table.shape == (SEEDS, 7)
        more_data_hurts, peak = sw.claims(a, cfg)
        assert more_data_hurts.verdict == want, more_data_hurts.ours
        assert peak.verdict == ("reproduced" if rise else "not reproduced"), peak.ours
    plan = sw.plan(cfg)
    assert plan.borrows == "double-descent-width" and len(plan.runs) == len(cfg.n_trains) * 3


def test_a_store_only_report_rejudges_the_stored_run_table_without_training(tmp_path, monkeypatch):
    """IMPLICIT_REG_STORE_ONLY=1 with no run store: the per-run table an earlier report wrote
    is read back and judged; nothing is trained (the plan's runs are absent)."""
    rows, sw = sample_rows(0.06, rng=np.random.default_rng(5))
    out = tmp_path / "sample-wise"
    out.mkdir()
    rows.drop(columns="status").assign(train_loss=0.1, test_loss=1.0, lambda_max=np.nan).to_csv(
        out / "runs.csv", index=False
    )
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    report = sw.run("small", out)
    assert [c.verdict for c in report.claims] == ["reproduced", "reproduced"]
    assert "Re-judged from the per-run table `runs.csv`" in report.path.read_text()
    assert not (tmp_path / "double-descent-width").exists()  # no run store was created
