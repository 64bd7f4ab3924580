"""The Ray sweep backend against the local one, on one local Ray instance (no cluster).

Oracles: the serial backend's result tables (same sweep, same numbers, same
config hashes); the store on disk after failures, a SIGKILLed driver and
Ctrl-C; Ray's own resource count (cancelled tasks give their CPUs back).
Test hooks are task functions defined here (a task that raises, a worker
that dies on its first try, a task that sleeps), passed as ``task=``.
"""

from __future__ import annotations

import _thread
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed; pip install 'implicit-reg[ray]' to test the ray backend"
)

from typer.testing import CliRunner  # noqa: E402

from implicit_reg.cli import app  # noqa: E402
from implicit_reg.engine.ray_backend import (  # noqa: E402
    RayNotInstalledError,
    _connect,
    _fetch,
    ray_backend,
    run_each,
)
from implicit_reg.engine.store import ResultStore  # noqa: E402
from implicit_reg.engine.sweep import RUNS_DIR, SweepSpec, run_sweep  # noqa: E402
from implicit_reg.report.results import load_histories, load_summaries  # noqa: E402

# No usage reports from tests (the subprocess driver inherits this too).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The hooks below travel to the workers by value (the tests directory is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BASE = {
    "dataset": "teacher",
    "n_train": 48,
    "n_test": 32,
    "steps": 8,
    "eval_every": 4,
    "dtype": "float64",
    "probes": [],
}
# columns that differ between two executions of the same run
VOLATILE = ["wall_time_s", "run_dir"]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the whole module (start-up takes seconds)."""
    import logging

    ray.init(
        address="local",  # a new instance, whatever runs on this machine already
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def spec(**grid) -> SweepSpec:
    return SweepSpec(base=BASE, grid=grid, name="tiny")


def table(out: Path) -> pd.DataFrame:
    df = load_summaries(out).drop(columns=VOLATILE)
    return df.sort_values("config_hash").reset_index(drop=True)


def summaries_on_disk(out: Path) -> int:
    return len(list((out / RUNS_DIR).glob("*/summary.json")))


# --------------------------------------------------------------- test hooks
def raise_for_width_4(configs):
    if configs[0].width == 4:
        raise RuntimeError("injected failure for width 4")
    return run_each(configs)


def die_on_first_try(marker: str, configs):
    """Kill the worker process the first time (the marker file records it), then run."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return run_each(configs)


def always_die(configs):
    os._exit(1)


def slow_unless_seed_0(configs):
    if configs[0].seed != 0:
        time.sleep(120)
    return run_each(configs)


# -------------------------------------------------------------------- tests
def test_ray_matches_local_and_resumes_a_local_sweep(cluster, tmp_path):
    s = spec(width=[4, 8], seed=[0, 1])
    # the default plan on 2 workers (the cluster's 2 CPUs): the pack of 4 split into 2 + 2
    local = run_sweep(s, tmp_path / "local", workers=2, progress=False)
    on_ray = run_sweep(s, tmp_path / "ray", backend=ray_backend(), progress=False)
    assert local.complete == on_ray.complete == 4
    assert local.hashes == on_ray.hashes == [c.config_hash() for c in s.configs()]
    expected = table(tmp_path / "local")
    assert sorted(expected["config_hash"]) == sorted(local.hashes)
    assert sorted(expected["trained"]) == ["ensemble 1/2"] * 2 + ["ensemble 2/2"] * 2
    pd.testing.assert_frame_equal(table(tmp_path / "ray"), expected)  # `trained` included
    pd.testing.assert_frame_equal(
        load_histories(tmp_path / "ray").sort_values(
            ["config_hash", "step", "metric"], ignore_index=True
        ),
        load_histories(tmp_path / "local").sort_values(
            ["config_hash", "step", "metric"], ignore_index=True
        ),
    )

    # started on local (1 of 4 runs), finished on ray: same numbers, nothing redone (how a
    # run was trained depends on the runs planned with it: here the first run trained alone)
    mixed = tmp_path / "mixed"
    run_sweep(s.configs()[:1], mixed, progress=False)
    resumed = run_sweep(s, mixed, backend=ray_backend(), progress=False)
    assert (resumed.skipped, resumed.done) == (1, 3)
    pd.testing.assert_frame_equal(
        table(mixed).drop(columns="trained"), expected.drop(columns="trained")
    )


def test_no_vectorize_trains_one_run_per_ray_task(cluster, tmp_path):
    s = spec(width=[4, 8], seed=[0, 1])
    report = run_sweep(s, tmp_path, backend=ray_backend(), vectorize=False, progress=False)
    assert report.complete == 4
    assert list(table(tmp_path)["trained"]) == ["alone"] * 4


def test_vectorized_ensembles_are_ray_tasks_and_match_local(cluster, tmp_path, monkeypatch):
    # one pack of 8 (widths 4 and 8 pack: lr, seed and width are member fields of a fast
    # MLP), split into two ensembles of 4 for 2 workers, locally and on the 2-CPU cluster
    s = spec(lr=[0.05, 0.1], seed=[0, 1], width=[4, 8])
    local = run_sweep(s, tmp_path / "local", workers=2, vectorize=True, progress=False)
    # the driver may no longer train ensembles: only the workers (other processes) can
    import implicit_reg.engine.train as train
    import implicit_reg.engine.vectorized_sweep as vs

    def not_on_the_driver(configs, **kwargs):
        raise AssertionError("an ensemble was trained on the driver")

    monkeypatch.setattr(train, "train_runs", not_on_the_driver)
    monkeypatch.setattr(vs, "train_runs", not_on_the_driver)
    args = ["sweep", "--out", str(tmp_path / "ray"), "--no-progress", "--vectorize"]
    args += [f"--set={k}={v}" for k, v in {**BASE, "probes": ""}.items()]
    args += ["--grid", "lr=0.05,0.1", "--grid", "seed=0,1", "--grid", "width=4,8"]
    res = CliRunner().invoke(app, [*args, "--backend", "ray"])  # the CLI: run_sweep(vectorize=True)
    assert res.exit_code == 0, res.output
    assert local.complete == 8 and "8 runs: 0 already done, 8 run now (8 complete" in res.output
    pd.testing.assert_frame_equal(table(tmp_path / "ray"), table(tmp_path / "local"))
    for d in ResultStore(tmp_path / "ray" / RUNS_DIR).run_dirs():
        assert json.loads((d / "meta.json").read_text())["ensemble"]["members"] == 4


def test_a_task_that_raises_is_recorded_failed_and_the_sweep_completes(cluster, tmp_path):
    s = spec(width=[4, 8])
    report = run_sweep(s, tmp_path, backend=ray_backend(task=raise_for_width_4), progress=False)
    assert (report.done, report.complete, report.failed, report.lost) == (2, 1, 1, 0)
    store = ResultStore(tmp_path / RUNS_DIR)
    bad, good = s.configs()  # width 4, width 8
    assert store.status(good) == "complete"
    assert store.status(bad) == "failed"
    error = store.read_summary(bad)["error"]
    assert "injected failure for width 4" in error and "Traceback" in error
    # recorded, so a plain resume skips it; --retry-failed would redo it
    again = run_sweep(s, tmp_path, backend=ray_backend(task=raise_for_width_4), progress=False)
    assert (again.skipped, again.done) == (2, 0)


def test_an_error_outside_the_task_wrapper_is_recorded_failed(cluster):
    @ray.remote
    def broken():  # stands for a worker that cannot even unpickle the task
        raise ImportError("no module named implicit_reg on this node")

    (config,) = spec(width=[4]).configs()
    (result,) = _fetch(ray, broken.remote(), [config], max_retries=3)
    assert result.status == "failed" and not result.summary.get("lost")
    assert result.summary["error"].startswith("Traceback (most recent call last), in ray::broken()")
    assert "ImportError: no module named implicit_reg on this node" in result.summary["error"]
    assert "\x1b" not in result.summary["error"]


def test_a_dead_worker_is_retried(cluster, tmp_path):
    marker = tmp_path / "died-once"
    s = spec(width=[4])
    task = functools.partial(die_on_first_try, str(marker))
    report = run_sweep(
        s, tmp_path / "s", backend=ray_backend(task=task, max_retries=1), progress=False
    )
    assert marker.exists()  # the first try really died
    assert (report.complete, report.failed, report.lost) == (1, 0, 0)
    assert ResultStore(tmp_path / "s" / RUNS_DIR).status(s.configs()[0]) == "complete"


def test_a_worker_that_keeps_dying_is_failed_after_max_retries_and_not_stored(cluster, tmp_path):
    s = spec(width=[4])
    report = run_sweep(
        s, tmp_path, backend=ray_backend(task=always_die, max_retries=0), progress=False
    )
    assert (report.done, report.failed, report.lost) == (1, 1, 1)
    assert "worker died on all 1 tries" in report.errors[0]
    assert ResultStore(tmp_path / RUNS_DIR).status(s.configs()[0]) is None  # retried on resume


def test_sigkilled_driver_then_resume_gives_one_result_per_grid_point(cluster, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--no-progress"]
    args += [f"--set={k}={v}" for k, v in {**BASE, "probes": "", "steps": 40}.items()]
    args += ["--grid", "width=4,8", "--grid", "seed=0,1"]
    args += ["--no-vectorize"]  # 4 tasks on 2 CPUs: the kill always comes mid-sweep
    driver = subprocess.Popen(
        [sys.executable, "-c", "from implicit_reg.cli import app; app()", *args,
         "--backend", "ray", "--ray-address", cluster],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while summaries_on_disk(out) == 0 and driver.poll() is None:
            assert time.monotonic() < deadline, "the driver wrote no result within 60 s"
            time.sleep(0.02)
        assert driver.poll() is None, driver.stderr.read().decode()
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = summaries_on_disk(out)
    assert 1 <= before < 4  # killed mid-sweep

    res = CliRunner().invoke(app, [*args, "--backend", "ray"])
    assert res.exit_code == 0, res.output
    now = 4 - before
    assert f"4 runs: {before} already done, {now} run now ({now} complete, 0 diverged" in res.output
    df = load_summaries(out)
    assert len(df) == 4 and df["config_hash"].is_unique
    assert set(df["status"]) == {"complete"}
    assert summaries_on_disk(out) == 4  # nothing written twice under another name


def test_ctrl_c_cancels_outstanding_tasks_and_keeps_complete_results(cluster, tmp_path):
    s = spec(seed=[0, 1, 2])
    out = tmp_path / "sweep"

    def interrupt_after_first_result() -> None:
        deadline = time.monotonic() + 60
        while summaries_on_disk(out) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()  # what Ctrl-C does to the driver

    # Ctrl-C as a terminal delivers it to a driver with Python's own handler (interrupt_main
    # does nothing while SIGINT is ignored or left to the OS, which an earlier library may
    # have set in a long test session: this test then ran its 120 s tasks out, twice)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_after_first_result, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(s, out, backend=ray_backend(task=slow_unless_seed_0, poll_s=0.1), progress=False)
    # the two sleeping tasks would hold both CPUs for 120 s; cancelled, they give them back
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2
    store = ResultStore(out / RUNS_DIR)
    assert [store.status(c) for c in s.configs()] == ["complete", None, None]
    assert store.incomplete_dirs() == []


def test_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="num_cpus must be a finite number >= 0"):
        ray_backend(num_cpus=-1)
    with pytest.raises(ValueError, match="both 0"):
        ray_backend(num_cpus=0, num_gpus=0)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        ray_backend(max_retries=-1)
    gpu = SweepSpec(base={**BASE, "device": "cuda"}, grid={"seed": [0]}).configs()
    with pytest.raises(ValueError, match="need GPUs: set num_gpus > 0"):
        list(ray_backend()(gpu))


def test_connect_reuses_a_connection_and_explains_a_failed_one():
    class FakeRay:  # Ray's connect API, without waiting ~20 s for a real refusal
        def __init__(self, initialized: bool) -> None:
            self.initialized, self.calls = initialized, []

        def is_initialized(self) -> bool:
            return self.initialized

        def init(self, address=None, **kwargs):
            self.calls.append((address, kwargs))
            if address == "10.0.0.1:6379":
                raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")

    connected = FakeRay(initialized=True)
    assert _connect(connected, "10.0.0.1:6379", None) is False and connected.calls == []
    fresh = FakeRay(initialized=False)
    assert _connect(fresh, None, None) is True
    assert fresh.calls[0][0] == "local" and fresh.calls[0][1]["include_dashboard"] is False
    with pytest.raises(ValueError, match=r"cannot connect to a Ray cluster at '10.0.0.1:6379'.*"
                       r"ray start --head.*RAY_AUTH_MODE=token"):  # fmt: skip
        _connect(FakeRay(initialized=False), "10.0.0.1:6379", None)


def test_missing_ray_is_one_line_exit_2(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    with pytest.raises(RayNotInstalledError, match=r"pip install 'implicit-reg\[ray\]'"):
        ray_backend()
    res = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path), "--grid", "seed=0,1", "--backend", "ray"]
    )
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "pip install 'implicit-reg[ray]'" in err[0]
    assert not (tmp_path / RUNS_DIR).exists()
