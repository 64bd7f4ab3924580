"""Mid-run checkpoints: a run killed with SIGKILL and restarted ends bit-identical to an
uninterrupted one (GD, SGD with momentum killed mid-epoch, EGR; alone and in an ensemble)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import ResultStore, read_json
from implicit_reg.engine.sweep import run_sweep
from implicit_reg.engine.train import run

REPO = Path(__file__).resolve().parents[1]
# 30 samples in batches of 8: 4 steps an epoch, so a checkpoint every 10 steps is mid-epoch
BASE = dict(dataset="teacher", n_train=30, n_test=20, width=6, probes=(), eval_every=7,
            steps=200, checkpoint_every=10)  # fmt: skip
CASES = {
    "gd": dict(optimizer="gd", lr=0.2),
    "sgd_momentum": dict(
        optimizer="sgd", lr=0.1, batch_size=8, momentum=0.9, probes=("lambda_max",), probe_every=50
    ),  # fmt: skip
    "egr": dict(optimizer="egr", lr=0.2, egr_coeff=0.05, chunk_size=16),
}

# The child trains slowly (a sleep after each step), so that the parent can kill it
# mid-run; run with "count", it prints how many steps it trained (to show it resumed).
SCRIPT = """
import json, sys, time
from implicit_reg.engine import steppers
from implicit_reg.engine.config import RunConfig
mode, out, delay, configs = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
counted = [0]
for cls in (steppers.SerialStepper, steppers.EnsembleStepper):
    def step(self, _step=cls.step):
        counted[0] += 1
        time.sleep(delay)
        return _step(self)
    cls.step = step
configs = [RunConfig.from_dict(c) for c in configs]
if mode == "run":
    from implicit_reg.engine.train import run
    run(configs[0], out, raise_errors=True)
else:
    from implicit_reg.engine.sweep import run_sweep
    run_sweep(configs, out, vectorize=True, progress=False)
print("steps", counted[0])
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def child(tmp_path, mode: str, out: Path, delay: float, configs: list[RunConfig]):
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = [sys.executable, str(script), mode, str(out), str(delay)]
    args.append(json.dumps([c.to_dict() for c in configs]))
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)


def checkpoint_at(folder: Path, min_step: int):
    """True once a checkpoint of step >= min_step is in ``folder`` (or below it)."""

    def ready() -> bool:
        steps = [int(p.stem.split("_")[1]) for p in folder.glob("**/step_*.pt")]
        return bool(steps) and max(steps) >= min_step

    return ready


def steps_trained(proc) -> int:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return int(out.split()[-1])


def same_result(a: Path, b: Path) -> None:
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    sa.pop("wall_time_s"), sb.pop("wall_time_s")
    assert sa == sb
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_killed_run_resumes_bit_identical(case, tmp_path, sigkill_when):
    cfg = RunConfig(**{**BASE, **CASES[case], "checkpoint": True})
    whole = tmp_path / "whole"
    run(cfg, whole, raise_errors=True)
    out = tmp_path / "killed"
    proc = child(tmp_path, "run", out, 0.005, [cfg])
    sigkill_when(proc, checkpoint_at(out, 40))
    run_dir = ResultStore(out).path_for(cfg)
    assert not (run_dir / "summary.json").exists()
    resumed = steps_trained(child(tmp_path, "run", out, 0.0, [cfg]))
    assert 0 < resumed < cfg.steps - 30  # it went on from the checkpoint, not from step 0
    same_result(ResultStore(whole).path_for(cfg), run_dir)
    final = torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]
    expected = torch.load(ResultStore(whole).path_for(cfg) / "checkpoint.pt", weights_only=True)
    for name, t in expected["state_dict"].items():
        assert torch.equal(final[name], t), name
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000000200.pt"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_killed_ensemble_member_resumes_bit_identical(case, tmp_path, sigkill_when):
    configs = [RunConfig(**{**BASE, **CASES[case], "lr": lr}) for lr in (0.05, 0.1, 0.15)]
    whole = tmp_path / "whole"
    run_sweep(configs, whole, vectorize=True, progress=False)
    out = tmp_path / "killed"
    proc = child(tmp_path, "sweep", out, 0.005, configs)
    sigkill_when(proc, checkpoint_at(out / "runs" / ".ensembles", 40))
    assert not list((out / "runs").glob("*/summary.json"))
    resumed = steps_trained(child(tmp_path, "sweep", out, 0.0, configs))
    assert 0 < resumed < BASE["steps"] - 30
    for c in configs:
        d = ResultStore(out / "runs").path_for(c)
        same_result(ResultStore(whole / "runs").path_for(c), d)
        trained = read_json(d / "meta.json")["trained"]
        assert trained["mode"] == "ensemble" and trained["members"] == 3


def test_checkpoints_are_pruned_when_the_run_ends(tmp_path):
    cfg = RunConfig(**{**BASE, "steps": 35, "keep_checkpoints": 0})
    run(cfg, tmp_path, raise_errors=True)
    assert list(ResultStore(tmp_path).checkpoint_dir(cfg).glob("*.pt")) == []
    kept = cfg.replace(keep_checkpoints=2)
    run(kept, tmp_path / "two", raise_errors=True)
    names = sorted(p.name for p in ResultStore(tmp_path / "two").checkpoint_dir(kept).iterdir())
    assert names == ["step_000000020.pt", "step_000000030.pt"]


def test_checkpoint_fields_leave_the_hash_alone():
    plain = RunConfig(**{**BASE, "checkpoint_every": None})
    assert (
        plain.config_hash() == plain.replace(checkpoint_every=5, keep_checkpoints=3).config_hash()
    )
    with pytest.raises(ValueError, match="checkpoint_every"):
        RunConfig(checkpoint_every=0)


def test_a_serial_sweep_resumes_an_unfinished_run_from_its_checkpoint(tmp_path, monkeypatch):
    from implicit_reg.engine import steppers

    configs = [RunConfig(**{**BASE, "steps": 35, "lr": lr}) for lr in (0.1, 0.2)]
    run_sweep(configs, tmp_path, vectorize=False, progress=False)
    store = ResultStore(tmp_path / "runs")
    first = store.path_for(configs[0])
    before = (first / "history.csv").read_text(), read_json(first / "summary.json")
    assert [p.name for p in store.checkpoint_dir(configs[0]).iterdir()] == ["step_000000030.pt"]
    (first / "summary.json").unlink()  # as if killed after its last checkpoint
    steps = [0]
    original = steppers.SerialStepper.step

    def counted(self):
        steps[0] += 1
        return original(self)

    monkeypatch.setattr(steppers.SerialStepper, "step", counted)
    report = run_sweep(configs, tmp_path, vectorize=False, progress=False)
    assert report.skipped == 1 and report.done == 1 and steps[0] == 5  # steps 31..35 only
    after = (first / "history.csv").read_text(), read_json(first / "summary.json")
    assert after[0] == before[0]
    assert {k: v for k, v in after[1].items() if k != "wall_time_s"} == {
        k: v for k, v in before[1].items() if k != "wall_time_s"
    }


def test_rerunning_a_finished_run_starts_from_step_zero(tmp_path, monkeypatch):
    """A finished run's kept checkpoint continues nothing: a rerun trains it all again."""
    from implicit_reg.engine import steppers

    cfg = RunConfig(**{**BASE, "steps": 25})
    first = run(cfg, tmp_path, raise_errors=True)
    steps = [0]
    original = steppers.SerialStepper.step

    def counted(self):
        steps[0] += 1
        return original(self)

    monkeypatch.setattr(steppers.SerialStepper, "step", counted)
    again = run(cfg, tmp_path, raise_errors=True)
    assert steps[0] == 25 and again.history == first.history
    report = run_sweep([cfg], tmp_path / "sweep", vectorize=False, progress=False)
    steps[0] = 0
    run_sweep([cfg], tmp_path / "sweep", resume=False, vectorize=False, progress=False)
    assert report.done == 1 and steps[0] == 25


def test_one_function_decides_where_mid_run_checkpoints_go(tmp_path):
    """mid_run_checkpoints: none without a store or checkpoint_every; a run's own folder;
    an ensemble's folder named by its members; a finished run's folder emptied first;
    keep_checkpoints kept at the end (of the two kept while training)."""
    from implicit_reg.engine.checkpoint import mid_run_checkpoints

    store = ResultStore(tmp_path)
    cfg = RunConfig(**BASE)  # keep_checkpoints = 1
    assert mid_run_checkpoints([cfg], None) is None
    assert mid_run_checkpoints([cfg.replace(checkpoint_every=None)], store) is None
    one = mid_run_checkpoints([cfg], store)
    assert one.dir == tmp_path / cfg.config_hash() / "checkpoints"
    assert (one.every, one.keep_last) == (10, 1)
    members = [cfg, cfg.replace(seed=1)]
    many = mid_run_checkpoints(members, store)
    assert many.dir == store.ensemble_checkpoint_dir(members) != one.dir
    assert many.dir.parent == tmp_path / ".ensembles"
    assert mid_run_checkpoints(list(reversed(members)), store).dir != many.dir  # order matters
    for step in (10, 20, 30, 40):
        one.save(step, {"hashes": [cfg.config_hash()], "step": step})
    assert [p.name for p in one.files()] == ["step_000000030.pt", "step_000000040.pt"]
    assert one.latest([cfg.config_hash()])["step"] == 40
    assert one.latest(["another"]) is None
    assert len(mid_run_checkpoints([cfg], store).files()) == 2  # unfinished: kept to resume
    one.prune(0)
    run(cfg, tmp_path, raise_errors=True)  # finished now, with its last checkpoint
    assert [p.name for p in one.files()] == ["step_000000200.pt"]
    assert mid_run_checkpoints([cfg], store).files() == []  # a rerun starts from step 0
