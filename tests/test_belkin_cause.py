"""belkin-cause (issue 20, item 1): the MLP's initializations against their closed forms,
the stacked fast path starting from exactly the serial init, the jackknife of the
averaged predictor against the U-statistic, the arms of a run table, and the claims on
planted and flat synthetic tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from implicit_reg.engine.checkpoint import load_checkpoint
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import PARAMS_FILE, ResultStore
from implicit_reg.engine.train import run, train_runs
from implicit_reg.experiments import belkin_cause as bc
from implicit_reg.report.results import load_summaries
from implicit_reg.workloads.models import build_model

# ---------------------------------------------------------------------- initializations


def _mlp(width=300, init="glorot", **kw):
    return build_model("mlp", input_dim=784, output_dim=10, width=width, depth=1, seed=3,
                       init=init, **kw)  # fmt: skip


def test_glorot_matches_its_closed_form():
    """U(−b, b), b = √(6/(fan_in + fan_out)): every weight inside, the extremes near ±b,
    the variance b²/3 (2σ of the sample variance of 235,200 and 3,000 draws); zero biases."""
    lin = [m for m in _mlp().net if isinstance(m, nn.Linear)]
    for layer in lin:
        fan_out, fan_in = layer.weight.shape
        b = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach().double()
        assert w.abs().max() <= b and w.abs().max() > 0.99 * b
        var, n = float(w.var()), w.numel()
        se = (b**2 / 3) * math.sqrt(0.8 / n)  # var of a uniform's sample variance: (4/5)σ⁴/n
        assert abs(var - b**2 / 3) < 3 * se, (fan_in, fan_out, var, b**2 / 3)
        assert torch.count_nonzero(layer.bias) == 0


def test_default_init_is_pytorchs_and_unchanged():
    """``init="default"`` is the nn.Linear draw, and the same model as before the option
    existed (old runs' hashes leave it out): weights and biases in ±1/√fan_in."""
    a, b = _mlp(init="default"), build_model("mlp", input_dim=784, output_dim=10, width=300,
                                             depth=1, seed=3)  # fmt: skip
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    for layer in [m for m in a.net if isinstance(m, nn.Linear)]:
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.abs().max() > 0.99 * bound


def test_init_options_compose_and_reject_bad_names():
    m = _mlp(width=7, zero_readout=True, hidden_bias=0.1)
    assert torch.count_nonzero(m.net[2].weight) == 0 and torch.all(m.net[0].bias == 0.1)
    with pytest.raises(ValueError, match="unknown init"):
        _mlp(init="xavier")


def _tiny(width, seed, **changes):
    cfg = RunConfig(
        model="mlp", width=width, depth=1, activation="relu", dataset="mnist1d", n_train=64,
        n_test=32, loss="mse_sum", optimizer="sgd", lr=0.01, momentum=0.95, batch_size=16,
        steps=None, epochs=3, eval_every=6, probes=(), seed=seed, dtype="float64",
        model_options={"init": "glorot"}, save_params=True,
    )  # fmt: skip
    return cfg.replace(**changes) if changes else cfg


@pytest.mark.parametrize("options", [{"init": "glorot"}, {"init": "default"}])
def test_stacked_members_start_and_end_as_their_serial_runs(tmp_path, options):
    """The fast (stacked, width-packed) ensemble builds each member from its own config, so
    a Glorot or default member starts from exactly its serial run's θ₀ and ends within
    1e-10 of it in float64."""
    configs = [_tiny(w, s, model_options=options) for w in (3, 6) for s in (0, 1)]
    store = ResultStore(tmp_path / "ens")
    for r in train_runs(configs, store=store):
        assert r.meta["trained"]["mode"] == "ensemble"
        store.write(r)
    for cfg in configs:
        run(cfg, tmp_path / "serial", raise_errors=True)
        ens, _, _, _, ens_init = load_checkpoint(store.path_for(cfg) / PARAMS_FILE)
        ser, _, _, _, ser_init = load_checkpoint(
            tmp_path / "serial" / cfg.config_hash() / PARAMS_FILE
        )
        built = build_model(**cfg.model_spec(40, 10)).double().state_dict()
        for k, v in ser.state_dict().items():
            assert torch.equal(ens_init[k], ser_init[k]) and torch.equal(ser_init[k], built[k])
            err = (ens.state_dict()[k] - v).abs().max() / v.abs().max().clamp_min(1e-300)
            assert err < 1e-10, (cfg.width, cfg.seed, k, float(err))
        if options == {"init": "glorot"}:
            assert torch.count_nonzero(ser_init["net.0.bias"]) == 0
    # the analysis reads the members' params.pt: their test outputs give the summary's loss
    rows = load_summaries(tmp_path / "ens", all_runs=True)
    outputs, diag, y = bc.run_outputs(rows)
    assert len(outputs) == len(configs) and len(diag) == len(configs)
    for r in rows.itertuples():
        assert bc.sq_loss(outputs[r.config_hash], y) == pytest.approx(r.test_loss, rel=1e-9)
        assert bc.zero_one(outputs[r.config_hash], y) == pytest.approx(r.test_error)


def test_stuck_runs_are_marked():
    """Stuck: train loss not 90% of the way from 0.9 to the width's best, half the units
    dead, or one class for half the test digits; the others trained properly."""
    d = pd.DataFrame({"width": [10] * 4, "train_loss": [0.01, 0.02, 0.5, 0.02],
                      "dead_units": [0, 1, 0, 5], "top_class_share": [0.1, 0.6, 0.1, 0.1]})  # fmt: skip
    assert bc.mark_stuck(d).stuck.tolist() == [0.0, 1.0, 1.0, 1.0]


# ---------------------------------------------------------------------- the averaged predictor


def test_jackknife_of_the_averaged_loss_is_the_u_statistic():
    """For the squared loss the pseudo-values' mean is Σ_{s≠t} ⟨f_s − y, f_t − y⟩ / (S(S−1)),
    averaged over points: the unbiased estimate of the infinite ensemble's loss."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=50)
    outs = [rng.normal(size=(50, 10)) for _ in range(5)]
    full, pseudo = bc.jackknife(outs, y, bc.sq_loss)
    assert full == pytest.approx(bc.sq_loss(np.mean(outs, axis=0), y))
    r = [o - np.eye(10)[y] for o in outs]
    u = np.mean([(r[s] * r[t]).sum(1).mean() for s in range(5) for t in range(5) if s != t])
    assert np.mean(pseudo) == pytest.approx(u, rel=1e-12)
    # identical members: no variance, every pseudo-value is the single loss
    _, same = bc.jackknife([outs[0]] * 4, y, bc.sq_loss)
    assert np.allclose(same, bc.sq_loss(outs[0], y))


# ---------------------------------------------------------------------- arms and claims

CFG = bc.CONFIGS["small"]


def test_plan_chains_and_switches(tmp_path):
    store = tmp_path / "sweep"
    stages = bc.chain_links(CFG, store)
    assert [s[0].width for s in stages] == CFG.chain_widths == [2, 4, 6, 8, 10, 11, 12, 13, 14, 16]
    assert stages[0][0].init_from is None and stages[1][1].init_from.endswith(
        f"{stages[0][1].config_hash()}/checkpoint.pt"
    )
    assert (CFG.last_reused(0.6), CFG.last_reused(1.0), CFG.last_reused(1.3)) == (6, 12, 16)
    assert CFG.nk_width == 13
    runs = bc.plan(CFG, store).runs
    assert len(runs) == 3 * 13 * 5 + 13 * 5 + 10 * 5 and all(c.save_params for c in runs)
    assert len({c.config_hash() for c in runs}) == len(runs)


def test_arm_rows_builds_the_switch_arms(tmp_path):
    rows = []
    for i, c in enumerate(bc.plan(CFG, tmp_path / "sweep").runs):
        rows.append({**c.to_dict(), "config_hash": c.config_hash(), "status": "complete",
                     "test_loss": float(i)})  # fmt: skip
    data = bc.arm_rows(pd.DataFrame(rows), CFG)
    counts = data.groupby("condition").size()
    assert set(counts) == {65} and len(counts) == 7
    arm = data[data.condition == bc.switch_arm(0.6)]
    assert set(arm[arm.reused | arm.checkpoint].width) == {2, 4, 6}
    assert not arm[arm.width > 6].checkpoint.any()
    # the chain and the fresh runs after its switch share one initialization
    assert all(o == {"init": CFG.chain_init} for o in arm.model_options)


def _table(curve, *, ens=None, switch_curve=None, seeds=5, noise=0.02, seed=1):
    """A stored runs.csv: fresh Glorot test loss = curve[w] + noise, ensemble pseudo-values
    = ens[w] + noise; the 1.3·n·k switch arm follows switch_curve."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in CFG.widths:
        for s in range(seeds):
            base = dict(width=w, seed=s, status="complete", N=CFG.n_params(w), train_loss=0.01,
                        train_error=0.0, test_error=0.2, stuck=0.0, reused=False)  # fmt: skip
            rows.append({**base, "condition": "fresh, Glorot",
                         "test_loss": curve[w] + noise * rng.normal(),
                         "ens_loss_jk": (ens or curve)[w] + noise * rng.normal()})  # fmt: skip
            if switch_curve:
                rows.append({**base, "condition": bc.switch_arm(1.3),
                             "reused": CFG.reused(w, 1.3),
                             "test_loss": switch_curve[w] + noise * rng.normal()})  # fmt: skip
    return pd.DataFrame(rows)


def _falling():
    return {w: 1.0 / (1 + w / 10) for w in CFG.widths}


def _verdicts(data):
    a = bc.analyze(data, CFG)
    return {c.statement: c.verdict for c in bc.claims(a, CFG)}, a


def _one(verdicts, *words):
    hits = [v for s, v in verdicts.items() if all(w in s for w in words)]
    assert len(hits) == 1, (words, list(verdicts))
    return hits[0]


def test_a_planted_peak_at_nk_is_found_and_averaging_that_removes_it_too():
    """Single networks peak at n·k (H = 13) by 0.5, far above the noise; the averaged
    predictor is the falling curve: the single peak is reproduced, the ensemble's is not,
    and averaging lowers the rise."""
    peaked = {w: v + (0.5 if w == 13 else 0.0) for w, v in _falling().items()}
    verdicts, a = _verdicts(_table(peaked, ens=_falling()))
    single = _one(verdicts, "single networks' test loss peaks at n·k", "fresh, Glorot)")
    assert single == "reproduced"
    assert (
        _one(verdicts, "ensemble-averaged predictor's test loss", "fresh, Glorot") != "reproduced"
    )
    assert _one(verdicts, "averaging the seeds lowers", "fresh, Glorot") == "reproduced"
    assert "**reproduced**" in bc.reading(a, CFG)
    assert _one(verdicts, "has a peak somewhere", "fresh, Glorot") == "reproduced"


def test_a_flat_curve_is_not_a_peak():
    verdicts, _ = _verdicts(_table(_falling()))
    assert _one(verdicts, "has a peak somewhere", "fresh, Glorot") != "reproduced"
    assert (
        _one(verdicts, "single networks' test loss peaks at n·k", "fresh, Glorot)") != "reproduced"
    )
    assert (
        _one(verdicts, "ensemble-averaged predictor's test loss", "fresh, Glorot") != "reproduced"
    )


def test_a_peak_that_follows_the_switch_is_placed_at_the_switch():
    """The 1.3·n·k chain peaks at its last reused width (H = 16), not at n·k: the switch
    claim is reproduced, the n·k claim of that arm is not."""
    switch = {w: v + (0.5 if w == 16 else 0.0) for w, v in _falling().items()}
    verdicts, _ = _verdicts(_table(_falling(), switch_curve=switch))
    assert _one(verdicts, "where reuse switches off", "1.3·n·k") == "reproduced"
    assert _one(verdicts, "peaks at n·k", "reuse, fresh from 1.3") != "reproduced"
    # the peak is the last reused network, so the first fresh one (H = 20) steps down
    assert _one(verdicts, "first fresh network", "1.3·n·k") == "not reproduced"
    up = {w: v + (0.5 if w >= 20 else 0.0) for w, v in _falling().items()}
    verdicts, _ = _verdicts(_table(_falling(), switch_curve=up))
    assert _one(verdicts, "first fresh network", "1.3·n·k") == "reproduced"
