"""Specs of double-descent-epochs, generalization-measures and double-descent-width: their
analyses and claims on synthetic run tables of known truth (a planted effect is
"reproduced", the same design without it is not). No training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from implicit_reg.experiments import double_descent_epochs as dde
from implicit_reg.experiments import double_descent_width as ddw
from implicit_reg.experiments import generalization_measures as gm

SEEDS = 8


def epoch_history(bump: float, *, rng: np.random.Generator) -> pd.DataFrame:
    """Stored trajectories (long form) of the three widths over 80 evaluations: the widest
    falls to 0.30, rises by ``bump`` around evaluation 30 and falls back; the medium one
    falls then rises by 0.05 to the end; the small one falls monotonically."""
    cfg = dde.CONFIGS["small"]
    t = np.arange(1, 81)
    base = 0.30 + 0.4 * np.exp(-t / 5)
    shapes = {
        cfg.widths[0]: 0.45 + 0.3 * np.exp(-t / 10),
        cfg.widths[1]: base + 0.05 * np.clip((t - 20) / 60, 0, None),
        cfg.widths[2]: base + bump * np.exp(-(((t - 30) / 8) ** 2)),
    }
    train = {cfg.widths[0]: 0.4, cfg.widths[1]: 0.05, cfg.widths[2]: 0.0}
    rows = []
    for w, curve in shapes.items():
        for s in range(SEEDS):
            test = curve + 0.002 * rng.standard_normal(len(t))
            for step, te in zip(40 * t, test):
                rows.append((w, s, step, "test_error", te))
                rows.append((w, s, step, "train_error", train[w]))
    history = pd.DataFrame(rows, columns=["width", "seed", "step", "metric", "value"])
    history.attrs.update(stored=True, note="stored")
    return history


def verdicts_epochs(bump: float) -> list[str]:
    cfg = dde.CONFIGS["small"]
    a = dde.analyze(epoch_history(bump, rng=np.random.default_rng(0)), cfg)
    assert [s.width for s in a.stats] == list(cfg.widths) and a.stored
    claims = dde.claims(a, cfg)
    assert "not committed" in claims[-1].untested  # the control was not stored
    return [c.verdict for c in claims]


def test_a_planted_epoch_wise_bump_is_reproduced():
    big, mid, small, _ = verdicts_epochs(0.05)
    assert big == "reproduced"
    assert mid == "reproduced"  # the medium model's rise to the end
    assert small == "reproduced"  # no bump above a point


def test_without_the_bump_the_widest_model_is_not_reproduced():
    big, mid, small, _ = verdicts_epochs(0.0)
    assert big != "reproduced"
    assert mid == "reproduced" and small == "reproduced"


# ------------------------------------------------------------------ double-descent-width
WIDTH_SEEDS = 6


def width_table(peak: float, clean_peak: float, *, rng: np.random.Generator) -> pd.DataFrame:
    """A stored ``runs.csv`` of the noisy and clean MNIST-1D sweeps (8 widths): the train
    error reaches 0 at w = 48, where the noisy test error rises by ``peak`` and the clean
    one by ``clean_peak``, both falling after it (seed noise 0.004)."""
    cfg = ddw.CONFIGS["small"]
    widths = [8, 12, 18, 30, 48, 80, 150, 300]
    train = [0.40, 0.30, 0.20, 0.08, 0.005, 0.0, 0.0, 0.0]
    rows = []
    for key, bump in (("mnist1d", peak), ("mnist1d_clean", clean_peak)):
        setting = cfg.setting(key)
        test = np.array([0.60, 0.52, 0.48, 0.48, 0.48, 0.46, 0.45, 0.44])
        test[4] += bump
        for s in range(WIDTH_SEEDS):
            for w, tr, te in zip(widths, train, test):
                err = te + 0.004 * rng.standard_normal()
                rows.append({
                    "setting": setting.label, "label_noise": cfg.noise(key), "width": w,
                    "seed": s, "n_params": setting.params(w, 40), "status": "complete",
                    "train_error": tr, "test_error": err, "train_loss": tr,
                    "test_loss": 2 * err, "weight_norm": 10.0 + w / 100,
                    "dist_from_init": 5.0 + w / 100,
                })  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs.update(stored=True, note="stored", width_epoch="/nonexistent/width_epoch.csv")
    return table


def width_claims(peak: float, clean_peak: float) -> dict[str, str]:
    cfg = ddw.CONFIGS["small"]
    a = ddw.analyze(width_table(peak, clean_peak, rng=np.random.default_rng(2)), cfg)
    assert set(a.runs) == {"mnist1d", "mnist1d_clean"} and a.stored and a.emc is None
    assert a.peaks["mnist1d"].w_fit == 48  # read from the training error, before any test
    out = {}
    for c in ddw.claims(a, cfg):
        out.setdefault(c.statement.split(":")[0], c.verdict)
    return out


def test_a_planted_noise_peak_is_reproduced_and_the_clean_sweep_has_none():
    v = width_claims(0.06, 0.0)
    assert v["MNIST-1D, cross-entropy"] == "reproduced"  # the noisy peak
    assert v["MNIST-1D, cross-entropy, clean labels"] != "reproduced"
    assert v["label noise makes the peak"] == "reproduced"
    assert v["the test-error peak follows EMC ≈ n"] == "not tested"  # no stored histories


def test_a_clean_peak_as_high_as_the_noisy_one_is_not_the_noise():
    v = width_claims(0.06, 0.06)
    assert v["MNIST-1D, cross-entropy"] == "reproduced"
    assert v["label noise makes the peak"] != "reproduced"


# ------------------------------------------------------------ generalization-measures
def measure_rows(flat_tracks: bool, *, rng: np.random.Generator) -> pd.DataFrame:
    """lr-sweep (live summaries) and double-descent-width (a stored runs.csv) runs, 4 seeds
    each, whose gap is tracked exactly by λ_max (``flat_tracks``) or by ‖θ‖ instead; the
    other measures are noise."""
    cfg = gm.CONFIGS["small"]
    gaps = np.linspace(0.05, 0.5, 8)
    lr_rows, dd_rows = [], []
    setting = cfg.double_descent_width.setting("mnist1d")
    for s in range(4):
        for i, gap in enumerate(gaps):
            m = {k: rng.lognormal() for k in gm.MEASURES}
            m["lambda_max" if flat_tracks else "weight_norm"] = 10 * gap
            lr_rows.append({"borrowed": "lr-sweep", "config_hash": f"h{s}{i}", "optimizer": "sgd",
                            "lr": 0.1 * (i + 1), "seed": s, "status": "complete",
                            "stop_reason": "target_train_loss", "train_error": 0.0,
                            "test_error": gap, "gen_gap": gap, **m})  # fmt: skip
        for w, gap in zip(setting.widths, np.linspace(0.05, 0.5, len(setting.widths))):
            m = {k: rng.lognormal() for k in gm.MEASURES}
            m["lambda_max" if flat_tracks else "weight_norm"] = 10 * gap
            dd_rows.append({"borrowed": "double-descent-width", "setting": setting.label,
                            "label_noise": 0.15, "width": w, "seed": s, "status": "complete",
                            "train_error": 0.1, "test_error": 0.1 + gap, **m})  # fmt: skip
    return pd.concat([pd.DataFrame(lr_rows), pd.DataFrame(dd_rows)], ignore_index=True)


def test_a_planted_flatness_ranking_is_reproduced_and_a_norm_ranking_is_not():
    cfg = gm.CONFIGS["small"]
    a = gm.analyze(measure_rows(True, rng=np.random.default_rng(3)), cfg)
    assert len(a.data) == 2 and len(a.margins) == 8 and a.wide.index[0] == "lambda_max"
    assert gm.claims(a, cfg)[0].verdict == "reproduced"
    b = gm.analyze(measure_rows(False, rng=np.random.default_rng(3)), cfg)
    assert b.wide.index[0] == "weight_norm"
    assert gm.claims(b, cfg)[0].verdict != "reproduced"


def test_a_stored_lr_sweep_table_without_train_error_is_left_out_and_said_so():
    cfg = gm.CONFIGS["small"]
    rows = measure_rows(True, rng=np.random.default_rng(3))
    lr = rows.borrowed == "lr-sweep"
    rows = rows.drop(columns=["gen_gap", "optimizer", "config_hash"])
    rows.loc[lr, "train_error"] = np.nan  # lr-sweep's runs.csv has no train error
    rows.loc[lr, "run"] = "GD"
    a = gm.analyze(rows, cfg)
    assert list(a.data) == ["double-descent-width (MNIST-1D, cross-entropy)"]
    assert "no generalization gap" in gm.claims(a, cfg)[0].context


def test_store_only_reports_borrow_each_part_from_its_owners_table(tmp_path, monkeypatch):
    """run_spec end to end, store-only, no run store anywhere: generalization-measures reads
    double-descent-width's runs.csv (Plan.also's part) and says why lr-sweep's table is left
    out; double-descent-epochs reads its trajectories.csv (Spec.stored). Nothing trained,
    no store created."""
    dd = width_table(0.06, 0.0, rng=np.random.default_rng(2))
    rng = np.random.default_rng(4)
    for m in gm.MEASURES:
        dd[m] = rng.lognormal(size=len(dd))
    (tmp_path / "double-descent-width").mkdir()
    dd.to_csv(tmp_path / "double-descent-width" / "runs.csv", index=False)
    (tmp_path / "lr-sweep").mkdir()
    pd.DataFrame({"run": ["GD"], "lr": [0.1], "seed": [0], "status": ["complete"],
                  "stop_reason": ["target_train_loss"], "test_error": [0.5],
                  "lambda_max": [1.0]}).to_csv(tmp_path / "lr-sweep" / "runs.csv", index=False)  # fmt: skip
    out = tmp_path / "generalization-measures"
    epochs = tmp_path / "double-descent-epochs"
    epochs.mkdir()
    epoch_history(0.05, rng=np.random.default_rng(0)).to_csv(
        epochs / "trajectories.csv", index=False
    )
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    text = gm.run("small", out).path.read_text()
    assert "left out: lr-sweep: its stored runs.csv has no train error" in text
    assert "double-descent-width (MNIST-1D, cross-entropy, clean labels)" in text
    report = dde.run("small", epochs)
    assert [c.verdict for c in report.claims][:3] == ["reproduced"] * 3
    assert "Re-judged from the per-seed histories" in report.path.read_text()
    assert not list(tmp_path.glob("*/sweep"))  # no run store was created
