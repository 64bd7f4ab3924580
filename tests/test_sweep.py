"""Sweeps: grid files, resuming (including after SIGKILL), failures, the process pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.plan import plan_sweep
from implicit_reg.engine.store import ResultStore, read_json
from implicit_reg.engine.sweep import (
    SweepSpec,
    expand_grid_value,
    load_sweep_file,
    parse_grid_option,
    parse_set_option,
    process_pool_backend,
    run_sweep,
    worker_threads,
)
from implicit_reg.engine.train import run

BASE = {
    "dataset": "teacher",
    "n_train": 30,
    "n_test": 20,
    "probes": [],
    "eval_every": 2,
    "steps": 4,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def summaries(root) -> dict[str, dict]:
    store = ResultStore(root / "runs")
    return {d.name: read_json(d / "summary.json") for d in store.run_dirs()}


# ------------------------------------------------------------------ the grid
def test_grid_is_the_cartesian_product_in_row_major_order():
    spec = SweepSpec(base=BASE, grid={"lr": [0.1, 0.2], "width": [4, 8, 16]})
    assert spec.size == 6
    points = spec.points()
    assert points[0] == {"lr": 0.1, "width": 4} and points[1] == {"lr": 0.1, "width": 8}
    configs = spec.configs()
    assert len({c.config_hash() for c in configs}) == 6
    assert {(c.lr, c.width) for c in configs} == {(a, b) for a in (0.1, 0.2) for b in (4, 8, 16)}
    assert all(c.dataset == "teacher" and c.steps == 4 for c in configs)


def test_geometric_and_linear_grid_values():
    assert expand_grid_value("width", {"geom": [4, 1024, 5]}) == [4, 16, 64, 256, 1024]
    assert expand_grid_value("width", {"geom": [4, 8, 5]}) == [
        4,
        5,
        6,
        7,
        8,
    ]  # rounded, deduplicated
    assert expand_grid_value("lr", {"geom": [0.01, 1, 3]}) == [0.01, 0.1, 1.0]
    assert expand_grid_value("lr", {"lin": [0.1, 0.3, 3]}) == [0.1, 0.2, 0.3]
    assert parse_grid_option("lr=geom:0.01:1:3") == ("lr", [0.01, 0.1, 1.0])
    assert parse_grid_option("width=4,8") == ("width", [4, 8])
    assert parse_grid_option("probes=lambda_max;trace,lambda_max") == (
        "probes", [("lambda_max",), ("trace", "lambda_max")],
    )  # fmt: skip
    assert parse_set_option("batch_size=none") == ("batch_size", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[grid]\nlr = [0.1\n", "not valid TOML"),
        ("[grid]\nlr = []\n", "grid.lr is an empty list"),
        ("[grid]\nlr = 0.1\n", "grid.lr must be a list"),
        ("[grid]\nlr = {log = [1, 2, 3]}\n", "must be {geom = [start, stop, num]}"),
        ("[grid]\nlr = {geom = [0, 1, 3]}\n", "geom needs start and stop > 0"),
        ("[grid]\nlearning_rate = [0.1]\n", "[grid] has unknown field(s) learning_rate"),
        ("[base]\nlr = 0.1\n[grid]\nlr = [0.2]\n", "appear in both [base] and [grid]"),
        ("[bse]\nlr = 0.1\n", "unknown top-level key(s) bse"),
        ("base = 3\n", "[base] must be a table"),
        (
            '[base]\ndataset = "teacher"\n[grid]\nlr = [0.1, -1.0]\n',
            "grid point {'lr': -1.0}: lr must be",
        ),
        ('[base]\nmodel = "vit"\n', "[base]: unknown model 'vit'"),
    ],
)
def test_malformed_sweep_files_raise_value_error_with_the_reason(tmp_path, text, message):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_sweep_file(path).configs()
    assert message in str(err.value)
    assert (
        str(path) in str(err.value)
        or message.startswith("grid point")
        or message.startswith("[base]")
    )


def test_sweep_file_types(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_sweep_file(tmp_path / "nope.toml")
    (tmp_path / "s.json").write_text("{}")
    with pytest.raises(ValueError, match="use .toml"):
        load_sweep_file(tmp_path / "s.json")
    (tmp_path / "s.yaml").write_text("grid:\n  seed: [0, 1]\n")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "yaml", None)  # PyYAML missing
        with pytest.raises(ValueError, match="need PyYAML"):
            load_sweep_file(tmp_path / "s.yaml")
    (tmp_path / "s.toml").write_text('name = "demo"\n[base]\nsteps = 3\n[grid]\nseed = [0, 1]\n')
    spec = load_sweep_file(tmp_path / "s.toml")
    assert spec.name == "demo" and [c.seed for c in spec.configs()] == [0, 1]


# ---------------------------------------------------------------- execution
def test_resume_skips_complete_runs_and_redoes_incomplete_ones(tmp_path):
    spec = SweepSpec(base=BASE, grid={"lr": [0.1, 0.2], "width": [3, 5]})
    first = run_sweep(spec, tmp_path, progress=False)
    assert (first.done, first.skipped, first.complete) == (4, 0, 4)
    before = summaries(tmp_path)
    assert len(before) == 4 and set(before) == set(first.hashes)
    manifest = read_json(tmp_path / "sweep.json")
    assert manifest["runs"] == first.hashes and manifest["grid"]["lr"] == [0.1, 0.2]

    again = run_sweep(spec, tmp_path, progress=False)
    assert (again.done, again.skipped) == (0, 4)
    assert summaries(tmp_path) == before  # nothing rewritten

    victim = tmp_path / "runs" / first.hashes[1]
    (victim / "summary.json").unlink()  # as if killed before the summary was written
    third = run_sweep(spec, tmp_path, progress=False)
    assert (third.done, third.skipped) == (1, 3)
    assert summaries(tmp_path).keys() == before.keys()

    redo = run_sweep(spec, tmp_path, progress=False, resume=False)
    assert (redo.done, redo.skipped) == (4, 0)


def test_failed_and_diverged_runs_are_recorded_and_the_sweep_goes_on(monkeypatch, tmp_path):
    import implicit_reg.workloads.models as models

    real = models.build_model

    def flaky(name, **kw):
        if kw["width"] == 13:
            raise RuntimeError("width 13 is unlucky")
        return real(name, **kw)

    monkeypatch.setattr(models, "build_model", flaky)
    spec = SweepSpec(base={**BASE, "steps": 30}, grid={"width": [16, 13], "lr": [0.1, 100.0]})
    report = run_sweep(spec, tmp_path, progress=False)
    assert (report.done, report.failed, report.diverged, report.complete) == (4, 2, 1, 1)
    by_status = {}
    for s in summaries(tmp_path).values():
        by_status.setdefault(s["status"], []).append(s)
    assert len(by_status["failed"]) == 2 and len(by_status["diverged"]) == 1
    assert all(
        "width 13 is unlucky" in s["error"] and "Traceback" in s["error"]
        for s in by_status["failed"]
    )
    # failed runs count as done, unless retried
    monkeypatch.setattr(models, "build_model", real)
    assert run_sweep(spec, tmp_path, progress=False).done == 0
    retry = run_sweep(spec, tmp_path, progress=False, retry_failed=True)
    assert (retry.done, retry.failed) == (2, 0)


def test_process_pool_gives_the_serial_results(tmp_path):
    spec = SweepSpec(base=BASE, grid={"lr": [0.1, 0.3], "width": [3]})
    pooled = run_sweep(spec, tmp_path / "pool", workers=2, progress=False, vectorize=False)
    assert pooled.complete == 2
    b = summaries(tmp_path / "pool")
    assert set(b) == set(pooled.hashes)
    for cfg in spec.configs():  # the same numbers as an in-process run
        a = run(cfg).summary
        for key in ("train_loss", "test_error", "grad_norm_sq", "weight_norm"):
            assert a[key] == b[cfg.config_hash()][key]
    for h in b:  # each worker set its own thread count
        meta = read_json(tmp_path / "pool" / "runs" / h / "meta.json")
        assert meta["torch_threads"] == worker_threads(2)


def test_worker_threads_never_oversubscribe():
    assert worker_threads(1, cores=8) == 8
    assert worker_threads(3, cores=8) == 2
    assert worker_threads(16, cores=8) == 1
    with pytest.raises(ValueError, match="workers must be >= 1"):
        process_pool_backend(0)


SWEEP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from implicit_reg.engine.sweep import SweepSpec, run_sweep
    base = dict(dataset="teacher", n_train=200, n_test=50, probes=[], eval_every=50,
                steps=int(sys.argv[2]), width=32)
    spec = SweepSpec(base=base, grid={"lr": [0.05, 0.1, 0.2], "seed": [0, 1]})
    if __name__ == "__main__":
        run_sweep(spec, sys.argv[1], workers=2, progress=False, vectorize=False)
    """
)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(stat))
    return out


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def test_sigkill_mid_sweep_loses_no_complete_run_and_resume_finishes_it(tmp_path, sigkill_when):
    """A real SIGKILL of a 2-worker sweep process, then a resume."""
    script = tmp_path / "sweep_script.py"
    script.write_text(SWEEP_SCRIPT)
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), "150"], env=env)
    workers: list[int] = []

    def ready() -> bool:  # two runs stored: note the workers, then kill
        if not ((out / "runs").is_dir() and len(summaries(out)) >= 2):
            return False
        workers.extend(children(proc.pid) if os.path.isdir("/proc") else [])
        return True

    sigkill_when(proc, ready, 90)
    deadline = (
        time.monotonic() + 60
    )  # orphaned workers notice and exit (seconds when idle; generous under load)
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)]
    survived = summaries(out)
    assert 2 <= len(survived) < 6
    saved = {h: (out / "runs" / h / "summary.json").read_bytes() for h in survived}
    for h in survived:  # every complete run is whole: config, history and summary agree
        d = out / "runs" / h
        assert RunConfig.from_file(d / "config.json").config_hash() == h
        assert (d / "history.csv").read_text().startswith("step,metric,value\n")
    # resume: the same spec, run again
    spec = SweepSpec(
        base=dict(
            dataset="teacher", n_train=200, n_test=50, probes=[], eval_every=50, steps=150, width=32
        ),
        grid={"lr": [0.05, 0.1, 0.2], "seed": [0, 1]},
    )
    report = run_sweep(spec, out, progress=False, vectorize=False)
    assert report.skipped == len(survived) and report.done == 6 - len(survived)
    final = summaries(out)
    assert len(final) == 6 and len(list((out / "runs").iterdir())) == 6
    assert set(final) == set(read_json(out / "sweep.json")["runs"])
    assert all(s["status"] == "complete" for s in final.values())
    for h, blob in saved.items():  # complete runs were not redone
        assert (out / "runs" / h / "summary.json").read_bytes() == blob


def test_default_sweep_packs_widths_into_ensembles_equal_to_serial_runs(tmp_path):
    """Without being asked, seeds, lrs, momenta and widths of one MLP family train as one
    fast ensemble (meta.json says so); every stored number equals the run's serial
    result in float64 (to 1e-10 relative) and the stored files have the same shape."""
    base = dict(
        dataset="mnist1d", n_train=200, n_test=60, label_noise=0.1, probes=[], eval_every=10,
        epochs=3, batch_size=50, optimizer="sgd", momentum=0.9, lr=0.05, dtype="float64",
    )  # fmt: skip
    spec = SweepSpec(base=base, grid={"width": [3, 5, 8], "seed": [0, 1]})
    report = run_sweep(spec, tmp_path / "vec", progress=False)
    assert report.complete == 6
    got = summaries(tmp_path / "vec")
    ensembles = set()
    for cfg in spec.configs():
        h = cfg.config_hash()
        meta = read_json(tmp_path / "vec" / "runs" / h / "meta.json")
        assert "ensemble" in meta, meta
        ensembles.add(tuple(meta["ensemble"]["runs"]))
        ref = run(cfg, tmp_path / "serial")
        assert set(got[h]) == set(ref.summary)
        for key, value in ref.summary.items():
            if isinstance(value, float) and key != "wall_time_s":
                assert got[h][key] == pytest.approx(value, rel=1e-10, abs=1e-300), key
            elif key != "wall_time_s":
                assert got[h][key] == value, key
        vec_hist = (tmp_path / "vec" / "runs" / h / "history.csv").read_text().splitlines()
        ser_hist = (tmp_path / "serial" / h / "history.csv").read_text().splitlines()
        assert len(vec_hist) == len(ser_hist) and vec_hist[0] == ser_hist[0]
    assert len(ensembles) == 1, "the three widths were not packed into one ensemble"


def test_planned_jobs_on_two_workers_store_what_one_process_stores(tmp_path):
    base = dict(
        dataset="teacher", n_test=20, probes=[], eval_every=5, steps=12, batch_size=10,
        optimizer="sgd", momentum=0.5, dtype="float64", lr=0.05,
    )  # fmt: skip
    # two training-set sizes: two jobs (packs of widths 3 and 8, 4 members each), one per worker
    spec = SweepSpec(base=base, grid={"n_train": [40, 50], "width": [3, 8], "seed": [0, 1]})
    assert len(plan_sweep(spec.configs()).groups) == 2
    one = run_sweep(spec, tmp_path / "one", progress=False)
    two = run_sweep(spec, tmp_path / "two", workers=2, progress=False)
    assert one.complete == two.complete == 8
    a, b = summaries(tmp_path / "one"), summaries(tmp_path / "two")
    for h in a:
        for key in ("train_loss", "test_loss", "grad_norm_sq", "weight_norm", "dist_from_init"):
            assert a[h][key] == pytest.approx(b[h][key], rel=1e-12), key
        meta = read_json(tmp_path / "two" / "runs" / h / "meta.json")
        assert meta["trained"]["mode"] == "ensemble"
