"""The spec runner's training hooks (``Plan.train``, ``Plan.vectorize``), emc-across-n's and
label-noise-dose's claims as specs on synthetic run tables, and their store-only read-back."""

from __future__ import annotations

import pandas as pd
import pytest
from test_emc_across_n import table as emc_table
from test_label_noise_dose import table as dose_table

from implicit_reg.engine.sweep import run_sweep
from implicit_reg.experiments import _spec, _sweeps
from implicit_reg.experiments import emc_across_n as emc
from implicit_reg.experiments import label_noise_dose as lnd
from implicit_reg.experiments._emc_plan import EMC_PLANS, emc_config, emc_phases
from implicit_reg.experiments._spec import Plan


def tiny(seed: int = 0):
    return emc_config(EMC_PLANS["smoke"], 4, 64, seed, "epochs")


def test_run_configs_passes_vectorize_explicitly(tmp_path, monkeypatch):
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("vectorize", "not given"))
        return run_sweep(*args, **kwargs)

    monkeypatch.setattr(_sweeps, "run_sweep", recording)
    rows = _sweeps.run_configs([tiny(0), tiny(1)], tmp_path / "a")
    assert seen == [True] and len(rows) == 2
    _sweeps.run_configs([tiny(2)], tmp_path / "b", vectorize=False)
    assert seen == [True, False]
    with pytest.raises(ValueError, match="vectorize must be True or False"):
        _sweeps.run_configs([tiny(0)], tmp_path / "c", vectorize=None)


def test_a_plan_that_trains_itself_is_read_from_its_store(tmp_path, monkeypatch):
    calls = []

    def train(directory):
        calls.append(directory)
        return run_sweep([tiny(0), tiny(1)], directory, progress=False, vectorize=False).done

    rows = _sweeps.run_configs([tiny(0), tiny(1)], tmp_path, train=train)
    assert calls == [tmp_path] and rows.attrs["trained_now"] == 2
    assert list(rows.config_hash) == [tiny(0).config_hash(), tiny(1).config_hash()]
    assert Plan(runs=(tiny(0),), train=train).vectorize is True
    # store-only: nothing is trained, the hook is not called
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    again = _sweeps.run_configs([tiny(0), tiny(1), tiny(2)], tmp_path, train=train)
    assert len(calls) == 1 and len(again) == 2 and again.attrs["missing"] == 1


def test_emc_claims_planted_and_flat():
    planted = {c.effect: c for c in emc.claims(emc.analyze(emc_table(peak=0.05)))}
    assert planted["emc-peak-epochs"].verdict == "reproduced"
    assert planted["emc-peak-epochs"].headline
    assert planted["more-data-hurts-epochs-62"].verdict == "reproduced"
    flat = {c.effect: c for c in emc.claims(emc.analyze(emc_table(peak=0.0, seed=1)))}
    assert flat["emc-peak-epochs"].verdict != "reproduced"
    assert flat["more-data-hurts-epochs-62"].verdict != "reproduced"


def test_emc_summaries_are_put_into_both_arms_where_the_budgets_agree():
    plan = EMC_PLANS["smoke"]
    configs = {c.config_hash(): c for _, cs in emc_phases(plan) for c in cs}
    summaries = pd.DataFrame([
        {"config_hash": h, "status": "complete", "train_error": 0.0, "test_error": 0.5,
         "train_loss": 0.1, "test_loss": 1.0, "n_params": 1, "wall_time_s": 1.0}
        for h in configs
    ])  # fmt: skip
    runs = emc.run_table(summaries, plan)
    # widths × n × arms; at n = 64 both budgets are the same run, so 6 hashes fill 8 rows
    assert len(runs) == 8 and runs.config_hash.nunique() == len(configs) == 6
    a = emc.analyze(summaries, plan)
    assert [x.arm for x in a.arms] == ["epochs", "steps"] and len(a.runs) == 8
    with pytest.raises(ValueError, match="need the plan"):
        emc.analyze(summaries)


def test_dose_claims_planted_and_constant():
    planted = {c.effect: c for c in lnd.claims(lnd.analyze(dose_table(dose=0.3)))}
    assert planted["dose-slope"].verdict == "reproduced" and planted["dose-slope"].headline
    flat = {c.effect: c for c in lnd.claims(lnd.analyze(dose_table(dose=0.0, seed=2)))}
    assert flat["dose-slope"].verdict != "reproduced"


@pytest.mark.parametrize("module", [emc, lnd])
def test_store_only_report_rejudges_the_written_runs_csv(module, tmp_path, monkeypatch):
    first = module.run("smoke", tmp_path)
    verdicts = [(c.statement, c.verdict) for c in first.claims]
    runs = pd.read_csv(tmp_path / "runs.csv")
    import shutil

    shutil.rmtree(tmp_path / "sweep")  # no store: the runs.csv it wrote is what is left
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    again = module.run("smoke", tmp_path)
    assert [(c.statement, c.verdict) for c in again.claims] == verdicts
    assert len(pd.read_csv(tmp_path / "runs.csv")) == len(runs)
    assert "Re-judged from the per-run table" in again.path.read_text()


def test_store_only_report_keeps_the_cost_of_the_report_that_trained(tmp_path, monkeypatch):
    import json

    emc.run("smoke", tmp_path)
    trained = json.loads((tmp_path / "summary.json").read_text())
    assert "regenerated_store_only" not in trained
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "1")
    for _ in range(2):  # a second regeneration carries the same cost on
        report = emc.run("smoke", tmp_path)
        s = json.loads((tmp_path / "summary.json").read_text())
        assert (s["wall_time_s"], s["cpu_time_s"]) == (
            trained["wall_time_s"],
            trained["cpu_time_s"],
        )
        regen = s["regenerated_store_only"]
        assert regen["on"] and regen["wall_time_s"] == report.wall_time_s
        assert f"regenerated store-only on {regen['on']}" in report.path.read_text()
        assert f"Wall time: {trained['wall_time_s']:.1f} s" in report.path.read_text()
    # another experiment's summary, or another scale's, is not taken for this one's cost
    assert _spec.computed_cost(tmp_path, "emc-across-n", "small") is None
    assert _spec.computed_cost(tmp_path, "label-noise-dose", "smoke") is None
    # with no earlier summary (runs trained outside a report) the cost is unknown, not its own
    (tmp_path / "summary.json").unlink()
    report = emc.run("smoke", tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["wall_time_s"] is None and s["cpu_time_s"] is None
    assert s["regenerated_store_only"]["wall_time_s"] == report.wall_time_s
    assert "Wall time: not measured by a report" in report.path.read_text()
    emc.run("smoke", tmp_path)  # and it stays unknown
    assert json.loads((tmp_path / "summary.json").read_text())["wall_time_s"] is None
    # a plain run measures its own cost again
    monkeypatch.setenv("IMPLICIT_REG_STORE_ONLY", "0")
    emc.run("smoke", tmp_path)
    assert "regenerated_store_only" not in json.loads((tmp_path / "summary.json").read_text())
