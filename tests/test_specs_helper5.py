"""Specs of double-descent-epochs, generalization-measures and double-descent-width: their
analyses and claims on synthetic run tables of known truth (a planted effect is
"reproduced", the same design without it is not). No training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from implicit_reg.experiments import double_descent_epochs as dde

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
