"""epoch-wise-network: the bump statistic, the per-layer step sizes and the authors' update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from implicit_reg.experiments import epoch_wise_network as ewn

CFG = ewn.CONFIGS["smoke"]


def test_bump_is_zero_on_a_curve_that_never_rises():
    assert ewn.bump(np.array([5.0, 4.0, 4.0, 2.0, 1.0]))[0] == 0.0


def test_bump_reads_the_largest_rise_and_the_fall_after_it():
    # rise 1 → 3 (height 2), fall 3 → 0.5; a smaller wiggle before it
    h, i1, i2, i3 = ewn.bump(np.array([4.0, 2.0, 2.5, 1.0, 3.0, 2.0, 0.5, 0.7]))
    assert (i1, i2, i3) == (3, 4, 6)
    assert h == pytest.approx(2.0)  # min(3 − 1, 3 − 0.5)
    # a rise that never comes back down is limited by the fall after it
    assert ewn.bump(np.array([2.0, 1.0, 3.0, 2.5]))[0] == pytest.approx(0.5)


def test_step_sizes_per_setting():
    assert ewn.step_sizes("one step size", CFG) == (CFG.lr, CFG.lr)
    assert ewn.step_sizes("per-layer step sizes", CFG) == (CFG.lr_first, CFG.lr)
    small = CFG.lr * CFG.small_factor
    assert ewn.step_sizes("one small step size", CFG) == (small, small)
    with pytest.raises(ValueError, match="unknown setting"):
        ewn.step_sizes("adam", CFG)


def test_data_follow_the_authors_linear_model():
    data = ewn.draw(CFG, seed=0)
    assert data["x"].shape == (CFG.n, CFG.d) and data["y_test"].shape == (CFG.n_test, 1)
    # noise-free teacher: y is exactly linear in x (least squares leaves no residual)
    x, y = data["x_test"].numpy(), data["y_test"].numpy()[:, 0]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert np.abs(x @ coef - y).max() < 1e-9
    # column scales are geometric in [σ_lo, σ_hi]
    ratio = data["x_test"].std(0).numpy() / np.geomspace(*CFG.sigma_range, CFG.d)
    assert np.all(np.abs(ratio - 1) < 0.3)


def test_training_is_the_authors_per_layer_update():
    """The package's GD with one group per layer equals the notebook's loop
    ``param -= lr[layer] * param.grad`` on the summed loss, step for step."""
    cfg = ewn.Config(n=20, n_test=10, d=5, hidden=7, steps=30, log_points=30, seeds=1)
    data = ewn.draw(cfg, seed=3)
    df = ewn.train(data, "per-layer step sizes", cfg, seed=3)
    net = ewn.network(cfg, seed=3)
    lr1, lr2 = ewn.step_sizes("per-layer step sizes", cfg)
    assert lr1 != lr2
    logged = {}
    for t in range(cfg.steps + 1):
        net.zero_grad()
        loss = ((net(data["x"]) - data["y"]) ** 2).sum()
        logged[t] = loss.item() / cfg.n
        loss.backward()
        with torch.no_grad():
            for i, p in enumerate(net.parameters()):
                p -= (lr1 if i < 2 else lr2) * p.grad
    for row in df.itertuples():
        assert row.train_mse == pytest.approx(logged[row.step], rel=1e-12)
    assert df.train_mse.iloc[-1] < df.train_mse.iloc[0]


def test_a_diverged_run_is_named_and_left_out(tmp_path, monkeypatch):
    """A step far beyond stability: the run ends at its first non-finite loss, its seed is
    listed as diverged and the claims use the seeds that finished."""
    cfg = ewn.Config(n=20, n_test=50, d=5, hidden=8, steps=200, log_points=15, seeds=2, lr=8e-5,
                     small_factor=2e4)  # fmt: skip
    df = ewn.measure(cfg)
    small = ewn.bumps(df, "one small step size")
    assert small.attrs["diverged"] == [0, 1] and small.empty
    assert ewn.bumps(df, "one step size").attrs["diverged"] == []
    monkeypatch.setitem(ewn.CONFIGS, "smoke", cfg)
    text = ewn.run("smoke", tmp_path).path.read_text()
    assert "Diverged runs" in text and "one small step size: seeds 0, 1" in text
