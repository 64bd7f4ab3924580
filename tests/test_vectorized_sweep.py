"""Vectorized sweeps against the serial engine: same files, same numbers, resumable.

Oracle: :func:`implicit_reg.engine.train.run` on each config alone (the serial
engine). A vectorized sweep must write the same per-run files through the
same store, with the same steps, metrics, statuses and values (to rounding:
1e-10 relative in float64), and survive SIGKILL mid-ensemble.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import ResultStore, read_json
from implicit_reg.engine.sweep import SweepSpec, run_sweep
from implicit_reg.engine.train import run
from implicit_reg.engine.vectorized_sweep import (
    group_key,
    plan_sweep,
    step_flops,
    train_runs,
    vectorized_backend,
)

TOL = 1e-10  # float64
BASE = dict(dataset="teacher", n_train=30, n_test=20, width=8, dtype="float64", probes=[])


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def assert_same_run(vec, ser, tol=TOL):
    """Two RunResults agree: summary keys and values, history steps/metrics/values."""
    assert set(vec.summary) == set(ser.summary)
    for key, b in ser.summary.items():
        a = vec.summary[key]
        if key in ("wall_time_s", "error"):
            continue
        if isinstance(b, float) and math.isfinite(b):
            assert a == pytest.approx(b, rel=tol, abs=1e-300), key
        elif isinstance(b, float):
            assert (math.isnan(a) and math.isnan(b)) or a == b, key
        else:
            assert a == b, key
    assert [(r["step"], r["metric"]) for r in vec.history] == [
        (r["step"], r["metric"]) for r in ser.history
    ]
    for a, b in zip(vec.history, ser.history):
        assert a["value"] == pytest.approx(b["value"], rel=tol, abs=1e-300), (a, b)


def test_plan_groups_what_can_share_an_ensemble():
    base = {k: v for k, v in BASE.items() if k != "width"}
    spec = SweepSpec(
        base={**base, "steps": 3},
        grid={"width": [4, 8], "lr": [0.1, 0.2, 0.3], "seed": [0, 1]},
    )
    configs = spec.configs()
    configs.append(configs[0].replace(checkpoint=True))  # per-run optimizer state: serial
    configs.append(configs[0].replace(depth=3))  # alone in its group: serial
    plan = plan_sweep(configs)
    # GD on an MLP trains stacked: the two widths share one pack
    assert [len(g) for g in plan.groups] == [12]
    assert {c.width for c in plan.groups[0]} == {4, 8}
    egr = [c.replace(optimizer="egr") for c in configs[:-2]]  # vmap ensembles: one per width
    by_width = plan_sweep(egr)
    assert [len(g) for g in by_width.groups] == [6, 6]
    for g in by_width.groups:
        assert len({(c.width, c.depth) for c in g}) == 1
    assert {c.config_hash() for c in plan.singles} == {c.config_hash() for c in configs[-2:]}
    assert group_key(configs[-2]) is None
    # a field train_runs does not reproduce (here: added after it was written) keeps a run serial
    import implicit_reg.engine.plan as vs

    assert group_key(configs[0]) is not None
    assert "width" in vs.SUPPORTED_FIELDS
    original = vs.SUPPORTED_FIELDS
    try:
        vs.SUPPORTED_FIELDS = original - {"width"}
        assert group_key(configs[0]) is None  # width 4 differs from the default
        assert group_key(configs[0].replace(width=64)) is not None  # the default: fine
    finally:
        vs.SUPPORTED_FIELDS = original
    split = plan_sweep(egr[:6], max_members=4)
    assert [len(g) for g in split.groups] == [3, 3]
    # on CPU, groups too expensive per step to gain run alone
    assert step_flops(configs[0]) == 30 * 2 * (20 * 4 + 4 * 4 + 4 * 10)  # teacher: 20-4-4-10
    heavy = plan_sweep(egr[:6], max_step_flops=step_flops(configs[0]) - 1)
    assert heavy.groups == [] and len(heavy.singles) == heavy.heavy == 6
    assert "6 of them in groups too heavy per step to gain on CPU" in heavy.line()
    assert len(plan_sweep(egr[:6], max_step_flops=None).groups) == 1
    fast_heavy = plan_sweep(configs[:12], max_fast_step_flops=step_flops(configs[0]))
    assert {c.width for g in fast_heavy.groups for c in g} == {4} and fast_heavy.heavy == 6
    with pytest.raises(ValueError, match="max_members must be an integer >= 2"):
        plan_sweep(configs, max_members=1)
    with pytest.raises(ValueError, match="cannot share an ensemble"):
        train_runs([configs[0], configs[-1]])


CASES = {
    # GD and EGR over lr × seed; lr = 40 diverges for one seed (NaN/too-large loss)
    "gd-egr": dict(
        base={**BASE, "steps": 8, "eval_every": 3, "probes": ["lambda_max"]},
        grid={"optimizer": ["gd", "egr"], "lr": [0.05, 0.3, 40.0], "seed": [0, 1]},
    ),
    # SGD with momentum, per-member data seed and label noise, physical chunks,
    # and per-member stopping thresholds (target loss, max_loss)
    "sgd": dict(
        base={
            **BASE,
            "steps": 10,
            "eval_every": 4,
            "optimizer": "sgd",
            "batch_size": 7,
            "momentum": 0.9,
            "chunk_size": 8,
        },
        grid={
            "lr": [0.02, 0.05],
            "data_seed": [0, 1],
            "label_noise": [0.0, 0.2],
            "max_loss": [1e6, 1.0],
        },
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
def test_vectorized_sweep_writes_what_serial_runs_write(case, tmp_path):
    spec = SweepSpec(**CASES[case])
    report = run_sweep(spec, tmp_path / "vec", vectorize=True, progress=False)
    assert report.done == spec.size and report.failed == 0
    store = ResultStore(tmp_path / "vec" / "runs")
    statuses = set()
    for config in spec.configs():
        d = store.path_for(config)
        assert sorted(p.name for p in d.iterdir()) == [
            "config.json", "history.csv", "meta.json", "summary.json"
        ]  # fmt: skip
        serial = run(config)
        assert json.loads((d / "config.json").read_text()) == config.to_dict()
        meta = read_json(d / "meta.json")
        assert set(serial.meta) <= set(meta) and meta["ensemble"]["members"] >= 2
        history = [
            {"step": int(s), "metric": m, "value": float(v)}
            for s, m, v in (line.split(",") for line in (d / "history.csv").read_text().split()[1:])
        ]
        vec = type(serial)(config=config, summary=read_json(d / "summary.json"), history=history)
        assert_same_run(vec, serial)
        statuses.add(serial.summary["stop_reason"])
    assert statuses == {"budget", "diverged"}  # each case exercises both


def test_target_loss_and_divergence_at_step_zero_match_serial():
    configs = [
        RunConfig(**BASE, steps=30, eval_every=5, task="regression", loss="mse", lr=lr,
                  target_train_loss=target, max_loss=bound)
        for lr, target, bound in ((0.05, None, 1e6), (0.3, 0.9, 1e6), (0.3, None, 0.95))
    ]  # fmt: skip
    results = train_runs(configs)
    reasons = [r.summary["stop_reason"] for r in results]
    assert reasons == ["budget", "target_train_loss", "diverged"]
    assert results[2].summary["diverged_at"] == 0
    for vec, config in zip(results, configs):
        assert_same_run(vec, run(config))


def test_a_group_that_cannot_be_vectorized_runs_serially(tmp_path, monkeypatch):
    import implicit_reg.engine.train as vs

    def broken(configs, **kwargs):
        raise ValueError("no ensemble today")

    monkeypatch.setattr(vs, "train_runs", broken)
    configs = SweepSpec(base={**BASE, "steps": 3}, grid={"lr": [0.1, 0.2]}).configs()
    with pytest.warns(RuntimeWarning, match="no ensemble today"):
        results = list(vectorized_backend()(configs))
    assert [r.config for r in results] == configs
    for r, c in zip(results, configs):
        assert_same_run(r, run(c), tol=0.0)  # it *is* the serial run


KILL_BASE = dict(
    dataset="teacher", n_train=100, n_test=20, width=16, probes=[], eval_every=100, dtype="float64"
)
KILL_STEPS = 600
SWEEP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from implicit_reg.engine.sweep import SweepSpec, run_sweep
    base = {base}
    spec = SweepSpec(base=base, grid={{"steps": [4, int(sys.argv[2])], "lr": [0.05, 0.1, 0.2]}})
    if __name__ == "__main__":
        run_sweep(spec, sys.argv[1], progress=False, vectorize=True)
    """
).format(base=repr(KILL_BASE))


def test_sigkill_mid_ensemble_then_resume_gives_one_result_per_point(tmp_path, sigkill_when):
    """Two ensembles (steps=4 and a long one); SIGKILL once the first is stored,
    while the second trains; resuming trains exactly the second again."""
    script = tmp_path / "sweep_script.py"
    script.write_text(SWEEP_SCRIPT)
    out = tmp_path / "sweep"
    runs = out / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(KILL_STEPS)], env=env)
    sigkill_when(proc, lambda: runs.is_dir() and len(list(runs.glob("*/summary.json"))) >= 3, 120)
    survived = {p.parent.name for p in runs.glob("*/summary.json")}
    assert len(survived) == 3  # the first ensemble, whole; nothing of the second
    saved = {h: (runs / h / "summary.json").read_bytes() for h in survived}
    spec = SweepSpec(base=KILL_BASE, grid={"steps": [4, KILL_STEPS], "lr": [0.05, 0.1, 0.2]})
    report = run_sweep(spec, out, progress=False, vectorize=True)
    assert report.skipped == 3 and report.done == 3 and report.failed == 0
    final = {p.parent.name for p in runs.glob("*/summary.json")}
    assert final == set(read_json(out / "sweep.json")["runs"]) and len(final) == 6
    assert len([d for d in runs.iterdir() if d.is_dir()]) == 6  # no leftover partial dirs
    for h, blob in saved.items():  # stored runs were not redone
        assert (runs / h / "summary.json").read_bytes() == blob
    config = spec.configs()[3]  # one of the resumed ensemble's runs, against the serial engine
    summary = read_json(ResultStore(runs).path_for(config) / "summary.json")
    serial = run(config)
    assert summary["status"] == serial.summary["status"] == "complete"
    for key in ("train_loss", "test_loss", "grad_norm_sq", "weight_norm"):
        assert summary[key] == pytest.approx(serial.summary[key], rel=TOL)


def test_cli_vectorizes_by_default_and_no_vectorize_trains_runs_alone(tmp_path):
    from typer.testing import CliRunner

    from implicit_reg.cli import app

    sets = [f"--set={k}={v}" for k, v in {**BASE, "probes": "", "steps": 3}.items()]
    grid = ["--grid", "lr=0.1,0.2,0.3", "--grid", "width=4,8"]
    res = CliRunner().invoke(app, ["sweep", *sets, *grid, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "vectorized: 6 runs in 1 vectorized ensembles (members: 6), 0 single runs" in res.output
    outputs = {}
    for flag in ("--vectorize", "--no-vectorize"):
        out = tmp_path / flag.strip("-")
        args = ["sweep", *sets, *grid, "--out", str(out), "--no-progress"]
        res = CliRunner().invoke(app, args if flag == "--vectorize" else [*args, flag])
        assert res.exit_code == 0, res.output
        assert "6 runs: 0 already done, 6 run now (6 complete" in res.output
        runs = sorted((out / "runs").iterdir())
        outputs[flag] = {d.name: read_json(d / "summary.json") for d in runs}
        ensembles = {read_json(d / "meta.json").get("ensemble", {}).get("members") for d in runs}
        assert ensembles == ({6} if flag == "--vectorize" else {None})  # widths 4, 8 packed
    assert outputs["--vectorize"].keys() == outputs["--no-vectorize"].keys()
    for h, vec in outputs["--vectorize"].items():
        ser = outputs["--no-vectorize"][h]
        assert vec["train_loss"] == pytest.approx(ser["train_loss"], rel=TOL)
        assert vec["steps_done"] == ser["steps_done"] == 3


def test_plan_jobs_halves_an_ensemble_only_where_that_shortens_the_sweep():
    from implicit_reg.engine.vectorized_sweep import job_cost, makespan, plan_jobs

    base = {**BASE, "steps": 50, "eval_every": 50, "optimizer": "sgd", "batch_size": 10}
    one = [RunConfig(**base, seed=s) for s in range(8)]  # one ensemble of 8
    assert [len(j) for j in plan_jobs(one, 1)] == [8]
    two = plan_jobs(one, 2)  # two workers: two ensembles of 4, not 8 single runs
    assert sorted(len(j) for j in two) == [4, 4]
    assert makespan([job_cost(j) for j in two], 2) < job_cost(one)
    assert sorted(c.config_hash() for j in two for c in j) == sorted(c.config_hash() for c in one)


@pytest.mark.parametrize(
    ("depth", "width", "act"), [(1, 3, "relu"), (2, 7, "tanh"), (3, 5, "relu")]
)
def test_mlp_step_flops_equal_the_flop_counter(depth, width, act):
    """The planner counts an MLP's FLOPs from its layers; torch's counter agrees."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from implicit_reg.engine.workload import load_run_data
    from implicit_reg.workloads.models import build_model

    config = RunConfig(dataset="teacher", n_train=30, model="mlp", depth=depth, width=width,
                       activation=act, optimizer="sgd", batch_size=8, steps=1)  # fmt: skip
    data = load_run_data(config)
    model = build_model(**config.model_spec(data.input_dim, data.output_dim)).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, data.input_dim, device="meta"))
    assert step_flops(config) == 8 * counter.get_total_flops() > 0
