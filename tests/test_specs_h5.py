"""Specs of flat-optimizers, epoch-wise-network, lr-sweep and belkin-network: their plans,
and their analyses and claims on synthetic run tables of known truth (no training).

A planted effect must come out "reproduced" and the same design without it must not.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from implicit_reg.experiments import flat_optimizers as fo
from implicit_reg.experiments import lr_sweep as lrs

SEEDS = 5


def test_flat_optimizers_borrows_lr_sweeps_gd_and_egr_runs():
    """The plan names lr-sweep's store, and its GD and EGR runs are lr-sweep's runs (same
    config hashes), so they are trained once for both experiments."""
    cfg = fo.CONFIGS["small"]
    plan = fo.plan(cfg)
    assert plan.borrows == "lr-sweep"
    assert len(plan.runs) == (3 + len(cfg.rhos)) * cfg.seeds
    ours = {c.config_hash() for c in plan.runs if c.optimizer in ("gd", "egr")}
    theirs = {c.config_hash() for c in lrs.sweep_configs(lrs.CONFIGS["small"])}
    assert len(ours) == 3 * cfg.seeds and ours <= theirs


def flat_engine_rows(sam_gain: float, *, rng) -> pd.DataFrame:
    """Engine-like summaries of every arm (arms named from optimizer, lr and rho): GD at h_ℓ
    3 points above GD at h_s; EGR 2 points above; SAM at ρ = 0.1 has GD at h_ℓ's λ_max and
    gains ``sam_gain``; the other ρ are sharper and gain nothing."""
    cfg = dataclasses.replace(fo.CONFIGS["small"], seeds=SEEDS)
    base = 0.45 + 0.01 * rng.standard_normal(SEEDS)
    rows = []
    for c in fo.plan(cfg).runs:
        rho = c.rho if c.optimizer == "sam" else np.nan
        if c.optimizer == "gd":
            gain, lam = (0.03, 1.0) if c.lr == cfg.lr_large else (0.0, 8.0)
        elif c.optimizer == "egr":
            gain, lam = 0.02, 4.0
        else:
            gain, lam = (sam_gain, 1.1) if rho == 0.1 else (0.0, 6.0)
        rows.append(
            {"optimizer": c.optimizer, "lr": c.lr, "rho": rho, "seed": c.seed,
             "status": "complete", "stop_reason": "target_train_loss", "steps_done": 100,
             "test_error": 1 - (base[c.seed] + gain + 0.002 * rng.standard_normal()),
             "lambda_max": lam * (1 + 0.05 * rng.standard_normal()), "step_ms": 1.0,
             "step_ratio": 1.0}
        )  # fmt: skip
    return pd.DataFrame(rows), cfg


def test_flat_optimizers_analyze_names_the_arms_and_chooses_rho_on_training_data():
    for gain, want in ((0.02, "reproduced"), (0.0, "inconclusive")):
        rows, cfg = flat_engine_rows(gain, rng=np.random.default_rng(7))
        a = fo.analyze(rows, cfg)
        assert a.chosen == f"SAM h={cfg.lr_small:g} ρ=0.1"  # λ_max closest to GD at h_ℓ's
        assert set(a.rows.arm) == set(fo.arms(cfg))
        claims = fo.claims(a, cfg)
        assert len(claims) == 7  # the premise, then gain, recovery and flatness of EGR and SAM
        premise, egr_gain, sam_gain = claims[0], claims[1], claims[4]
        assert premise.verdict == "reproduced" and egr_gain.verdict == "reproduced"
        assert sam_gain.verdict == want, (gain, sam_gain.ours)


def epoch_curves(height: float, *, rng) -> pd.DataFrame:
    """Curves of every setting over 20 logged steps and 5 seeds: the training loss falls
    geometrically; the test risk falls too, except that with one step size it rises by the
    factor 1 + ``height`` from step 8 to 11 and falls again (1% seed noise)."""
    from implicit_reg.experiments import epoch_wise_network as ewn

    steps = np.arange(20) * 100
    fall = np.geomspace(1.0, 0.1, 20)
    bump = np.ones(20)
    bump[8:12] += height * np.array([0.5, 1.0, 1.0, 0.5])
    rows = []
    for setting in ewn.SETTINGS:
        for s in range(SEEDS):
            test = fall * (bump if setting == ewn.SETTINGS[0] else 1.0)
            test = test * np.exp(0.01 * rng.standard_normal(20))
            rows += [
                {"step": t, "train_mse": 0.5 * f, "test_mse": r, "test_l1": r, "setting": setting,
                 "seed": s}
                for t, f, r in zip(steps, fall, test)
            ]  # fmt: skip
    return pd.DataFrame(rows)


def test_epoch_wise_network_a_planted_bump_is_reproduced_and_removing_it_is_not():
    from implicit_reg.experiments import epoch_wise_network as ewn

    cfg = ewn.CONFIGS["small"]
    for height, want in ((1.0, "reproduced"), (0.0, "not reproduced")):
        a = ewn.analyze(epoch_curves(height, rng=np.random.default_rng(11)), cfg)
        assert np.isnan(a.gd_seconds)  # not measured here
        bump, per_layer, through, small, early = ewn.claims(a, cfg)
        assert bump.headline
        assert bump.verdict == want, (height, bump.ours)
        if height:
            assert per_layer.verdict == "reproduced", per_layer.ours
            assert a.bumps["one step size"].t2.between(800, 1100).all()
            assert through.verdict == "reproduced", through.ours  # the training loss falls


def lr_rows(slope: float, *, rng) -> pd.DataFrame:
    """A stored-style lr-sweep table: GD at every h of `small` and EGR at min(h), 5 seeds,
    test accuracy rising by ``slope`` per decade of h (seed effect shared, noise 0.002);
    and the small-step runs (``part`` = "igr"), whose tail ‖∇L‖² falls by ``slope`` × 10
    per decade."""
    cfg = lrs.CONFIGS["small"]
    base = 0.45 + 0.01 * rng.standard_normal(SEEDS)
    common = {"status": "complete", "stop_reason": "target_train_loss", "steps_done": 100,
              "train_loss": 0.05, "trace": 10.0, "weight_norm": 20.0}  # fmt: skip
    rows = []
    for s in range(SEEDS):
        for h in cfg.lrs:
            acc = base[s] + slope * np.log10(h) + 0.002 * rng.standard_normal()
            rows.append({**common, "run": "GD", "part": "main", "lr": h, "seed": s,
                         "test_error": 1 - acc, "grad_norm_sq": 1e-3 / h,
                         "lambda_max": 1.5 / h})  # fmt: skip
        rows.append({**common, "run": "EGR", "part": "main", "lr": min(cfg.lrs), "seed": s,
                     "test_error": 1 - base[s], "grad_norm_sq": 1e-3, "lambda_max": 10.0})  # fmt: skip
        for h in cfg.igr_lrs:
            tail = 1e-3 * (1 - 10 * slope * np.log10(h / min(cfg.igr_lrs)))
            rows.append({**common, "run": "GD", "part": "igr", "lr": h, "seed": s,
                         "test_error": 0.5, "grad_norm_sq": tail, "lambda_max": 8.0,
                         "grad_norm_sq_tail": tail * (1 + 0.01 * rng.standard_normal()),
                         "ratio_max": 4 * h})  # fmt: skip
    return pd.DataFrame(rows), cfg


def test_lr_sweep_a_planted_trend_over_h_is_reproduced_and_a_flat_one_is_not():
    for slope, want in ((0.03, "reproduced"), (0.0, "inconclusive")):
        rows, cfg = lr_rows(slope, rng=np.random.default_rng(13))
        a = lrs.analyze(rows, cfg)
        assert len(a.rows) == (len(cfg.lrs) + 1) * SEEDS and len(a.igr) == 3 * SEEDS
        claims = lrs.claims(a, cfg)
        igr, accuracy = claims[0], next(c for c in claims if c.headline)
        assert "larger h ends with a higher test accuracy" in accuracy.statement
        assert accuracy.verdict == want, (slope, accuracy.ours)
        assert igr.verdict == want, (slope, igr.ours)


def test_lr_sweep_without_small_step_runs_says_so(tmp_path, monkeypatch):
    """A stored table of the main sweep only: the small-step claim is 'not tested', and a
    report that writes igr_runs.csv beside runs.csv is re-judged with it."""
    rows, cfg = lr_rows(0.03, rng=np.random.default_rng(13))
    a = lrs.analyze(rows[rows.part == "main"].drop(columns="part"), cfg)
    assert lrs.claims(a, cfg)[0].verdict == "not tested" and not len(a.igr)
    main, igr = rows[rows.part == "main"], rows[rows.part == "igr"]
    main.drop(columns="part").to_csv(tmp_path / "runs.csv", index=False)
    igr.drop(columns=["part", "run"]).to_csv(tmp_path / lrs.IGR_TABLE, index=False)
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    stored = lrs.stored(tmp_path)
    assert (stored.part == "igr").sum() == len(igr) and "Re-judged" in stored.attrs["note"]
    assert lrs.claims(lrs.analyze(stored, cfg), cfg)[0].verdict == "reproduced"


def belkin_rows(peak: float, *, rng) -> pd.DataFrame:
    """A stored-style belkin-network table at `small` (one row per condition, width, seed;
    5 seeds): the test loss falls with H, except a rise of ``peak`` (log scale) at H = 13,
    the width nearest n·k, with reuse; the fresh arm has no peak."""
    from implicit_reg.experiments import belkin_network as bn

    cfg = bn.CONFIGS["small"]
    rows = []
    for s in range(SEEDS):
        shift = 0.02 * rng.standard_normal()
        for condition in bn.CONDITIONS:
            for w in cfg.widths:
                log_loss = -0.3 * np.log(w) + shift + 0.01 * rng.standard_normal()
                if condition == "with reuse" and w == 13:
                    log_loss += peak
                rows.append(
                    {"condition": condition, "width": w, "N": cfg.n_params(w), "seed": s,
                     "reused": condition == "with reuse" and cfg.below(w), "status": "complete",
                     "config_hash": f"{condition}{w}{s}", "train_loss": 0.01,
                     "train_error": 0.0, "test_loss": np.exp(log_loss),
                     "test_error": np.exp(log_loss) / 4, "weight_norm": 10.0,
                     "dist_from_init": 5.0, "grad_norm_sq": 1e-4, "wall_time_s": 1.0}
                )  # fmt: skip
    return pd.DataFrame(rows), cfg


def test_belkin_network_a_planted_peak_at_nk_is_reproduced_and_removing_it_is_not():
    from implicit_reg.experiments import belkin_network as bn

    for peak, want in ((0.5, "reproduced"), (0.0, "not reproduced")):
        rows, cfg = belkin_rows(peak, rng=np.random.default_rng(17))
        a = bn.analyze(rows, cfg)
        assert a.peaks["with reuse", "at n·k"].at == 13  # placed before the test
        claims = bn.claims(a, cfg)
        headline = next(c for c in claims if c.headline)
        at_nk = next(c for c in claims if "sits at N ≈ n·k" in c.statement and "(with reuse)"
                     in c.statement)  # fmt: skip
        assert "test loss rises to a peak" in headline.statement
        assert at_nk.verdict == want, (peak, at_nk.ours)
        fresh = next(c for c in claims if "sits at N ≈ n·k" in c.statement and "(without "
                     "reuse)" in c.statement)  # fmt: skip
        assert fresh.verdict != "reproduced", fresh.ours


def test_belkin_network_plans_its_reuse_links_in_its_store(tmp_path):
    """The reuse links name the previous link's checkpoint in the store; the plan needs it."""
    from implicit_reg.experiments import belkin_network as bn

    cfg = bn.CONFIGS["smoke"]
    with pytest.raises(ValueError, match="give the store"):
        bn.plan(cfg)
    runs = bn.plan(cfg, store=tmp_path).runs
    links = [c for c in runs if c.checkpoint]
    chains = 2 * cfg.seeds  # with reuse, and with random new weights (sharing their start)
    assert (
        len({c.config_hash() for c in links}) == (len(cfg.reused_widths) - 1) * chains + cfg.seeds
    )
    assert all(str(tmp_path) in c.init_from for c in links if c.init_from)
    fresh = len(cfg.widths) + len(cfg.long_widths)
    assert len(runs) - len(links) == fresh * cfg.seeds
