"""Two sweeps on one directory: each run trained once, none lost, a killed owner's runs taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from implicit_reg.engine import claims as claims_mod
from implicit_reg.engine.claims import Claims, owner_alive
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.store import ResultStore, read_json
from implicit_reg.engine.sweep import SweepSpec, run_sweep

BASE = {"dataset": "teacher", "n_test": 10, "probes": [], "eval_every": 2, "steps": 3}

# A sweep in its own process. Every result the store writes is logged (one line per
# run stored), and its i-th training (a job) sleeps SLEEPS[i] seconds first, so that
# two sweeps overlap.
SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from implicit_reg.engine import claims, store, train, vectorized_sweep
    from implicit_reg.engine.sweep import SweepSpec, run_sweep

    out, log, go, spec, sleeps, vectorize = sys.argv[1:]
    sleeps = [float(s) for s in sleeps.split(",")]  # the i-th training's; the last repeats
    calls = []
    claims.POLL_S = 0.05
    write = store.ResultStore.write

    def logged_write(self, result):
        with open(log, "a") as fh:
            fh.write(result.config.config_hash() + "\\n")
        return write(self, result)

    def slowed(fn):
        def wrapper(*args, **kwargs):
            calls.append(1)
            time.sleep(sleeps[min(len(calls), len(sleeps)) - 1])
            return fn(*args, **kwargs)
        return wrapper

    store.ResultStore.write = logged_write
    train.train_one = slowed(train.train_one)
    vectorized_sweep.train_runs = slowed(vectorized_sweep.train_runs)
    Path(log).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    report = run_sweep(
        SweepSpec(**json.loads(spec)), out, progress=False, vectorize=vectorize == "1"
    )
    print(json.dumps({"done": report.done, "skipped": report.skipped, "line": report.line()}))
    """
)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: one torch thread


def start(tmp_path: Path, name: str, spec: SweepSpec, *, sleep: str, vectorize: bool, go: Path):
    script = tmp_path / "sweep_script.py"
    script.write_text(SCRIPT)
    log = tmp_path / f"{name}.log"
    args = [str(tmp_path / "sweep"), str(log), str(go), json.dumps(spec.to_dict()), str(sleep)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, "1" if vectorize else "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, log


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_two_sweeps_share_the_runs_and_take_over_a_killed_ones(tmp_path):
    """Two concurrent sweeps of 4 ensemble jobs x 2 members (n_train x seed). A trains its
    first job in 0.2 s and hangs in its second; B takes 1 s a job. Each sweep claims (and
    so trains and stores) whole ensembles; B trains the jobs nobody holds, then waits for
    A's; A is SIGKILLed and B takes its job over. Every run is stored exactly once (the
    store's writes, logged per process), none is lost, and a third sweep finds nothing
    to do and rewrites nothing."""
    spec = SweepSpec(base=BASE, grid={"n_train": [20, 30, 40, 50], "seed": [0, 1]})
    every = {c.config_hash() for c in spec.configs()}
    go = tmp_path / "go"
    a, log_a = start(tmp_path, "a", spec, sleep="0.2,300", vectorize=True, go=go)
    b, log_b = start(tmp_path, "b", spec, sleep="1.0", vectorize=True, go=go)
    claims_dir = tmp_path / "sweep" / ".claims"
    try:
        wait_for(lambda: log_a.exists() and log_b.exists(), 60, "both sweeps to start")
        go.touch()

        def only_as_hanging_job_left() -> bool:
            held = {p.stem for p in claims_dir.glob("*.claim")}
            return len(held) == 2 and held | set(lines(log_a)) | set(lines(log_b)) == every

        wait_for(only_as_hanging_job_left, 60, "B to train all but A's hanging job")
        held = {p.stem for p in claims_dir.glob("*.claim")}
        assert len(lines(log_a)) == 2 and not held & set(lines(log_b))
        time.sleep(0.3)
        assert b.poll() is None, "B returned while A still held a job"
    except BaseException:
        b.kill()
        raise
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()  # reaped: its pid is gone
    out, err = b.communicate(timeout=60)
    assert b.returncode == 0, err
    in_a, in_b = lines(log_a), lines(log_b)
    assert len(in_a) == len(set(in_a)) and len(in_b) == len(set(in_b)), (in_a, in_b)
    assert not set(in_a) & set(in_b), f"trained by both sweeps: {set(in_a) & set(in_b)}"
    assert set(in_a) | set(in_b) == every, f"lost: {every - set(in_a) - set(in_b)}"
    assert set(in_b[-2:]) == held, "B took over A's job last"
    report = json.loads(out.strip().splitlines()[-1])
    assert report["done"] == 6 and ", 2 by another sweep on this directory" in report["line"]
    store = ResultStore(tmp_path / "sweep" / "runs")
    by_sweep = {h: "a" if h in in_a else "b" for h in every}
    for d in store.run_dirs():  # each ensemble was claimed, trained and stored by one sweep
        meta = read_json(d / "meta.json")
        assert meta["trained"]["mode"] == "ensemble", meta["trained"]
        members = meta["ensemble"]["runs"]
        assert len(members) == 2 and {by_sweep[h] for h in members} == {by_sweep[d.name]}
    assert not list(claims_dir.glob("*.claim")), "claims left behind"
    stamps = {d.name: (d / "summary.json").stat().st_mtime_ns for d in store.run_dirs()}
    again = run_sweep(spec, tmp_path / "sweep", progress=False)
    assert (again.done, again.skipped) == (0, len(every))
    assert stamps == {d.name: (d / "summary.json").stat().st_mtime_ns for d in store.run_dirs()}


# ------------------------------------------------------------ the claims themselves
def configs(n: int) -> list[RunConfig]:
    return [RunConfig(**{**BASE, "n_train": 20, "seed": s}) for s in range(n)]


def plant(claims: Claims, config: RunConfig, owner: dict, age: float = 0.0) -> Path:
    """A claim file by another owner, its heartbeat ``age`` seconds old."""
    claims.dir.mkdir(parents=True, exist_ok=True)
    path = claims.path(config.config_hash())
    path.write_text(json.dumps(owner))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def live_owner() -> dict:
    """The owner record of a live process on this host: our parent."""
    pid = os.getppid()
    stat = claims_mod._proc_stat(pid)
    return {
        "host": socket.gethostname(),
        "boot_id": claims_mod._boot_id(),
        "pid": pid,
        "proc_start": stat[1] if stat else "",
        "token": "other",
    }


def test_a_job_is_claimed_whole_or_not_at_all(tmp_path):
    r1, r2 = configs(2)
    claims = Claims(tmp_path)
    other = plant(claims, r2, live_owner())
    assert claims.acquire([r1, r2]) is None
    assert not claims.path(r1.config_hash()).exists() and claims.held == set()
    other.unlink()  # the other sweep is done with it
    assert claims.acquire([r1, r2]) == [r1, r2]
    mine = read_json(claims.path(r1.config_hash()))
    assert (mine["pid"], mine["host"]) == (os.getpid(), socket.gethostname())
    assert Claims(tmp_path).acquire([r1]) is None  # a second owner (same process) waits
    claims.release([r1])
    assert not claims.path(r1.config_hash()).exists() and claims.held == {r2.config_hash()}
    claims.close()
    assert not list(claims.dir.glob("*.claim"))


def test_dead_or_stale_owners_are_taken_over_live_ones_are_not(tmp_path):
    r1, r2, r3 = configs(3)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = {**live_owner(), "pid": gone.pid}
    far = {**live_owner(), "host": "elsewhere.invalid", "pid": 1}
    claims = Claims(tmp_path, heartbeat_s=1.0, stale_s=60.0)
    plant(claims, r1, dead)
    plant(claims, r2, far, age=61.0)  # another host, heartbeat too old
    assert claims.acquire([r1, r2]) == [r1, r2]
    assert sorted(t["run"] for t in claims.taken_over) == sorted(c.config_hash() for c in (r1, r2))
    plant(claims, r3, far, age=30.0)  # another host, heartbeat fresh: alive
    assert claims.acquire([r3]) is None
    reused = {**live_owner(), "proc_start": "1"}  # the pid now belongs to another process
    assert not owner_alive(reused, heartbeat_age=0.0, stale_s=60.0)
    assert owner_alive(live_owner(), heartbeat_age=0.0, stale_s=60.0)
    assert not owner_alive(live_owner(), heartbeat_age=61.0, stale_s=60.0)
    claims.close()


def test_a_run_finished_meanwhile_is_not_claimed_and_heartbeat_refreshes(tmp_path):
    (r1,) = configs(1)
    claims = Claims(tmp_path, heartbeat_s=0.05, stale_s=1.0)
    assert claims.acquire([r1], needed=lambda c: False) == []
    assert claims.held == set()
    assert claims.acquire([r1]) == [r1]
    path = claims.path(r1.config_hash())
    os.utime(path, (time.time() - 10, time.time() - 10))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 1.0, "no heartbeat"
    claims._stop.set()  # no more background beats: the next one is ours to watch
    claims._thread.join()
    path.write_text(json.dumps(live_owner()))  # taken from us
    with pytest.warns(RuntimeWarning, match="taken over"):
        claims.beat()
    assert claims.held == set()
    claims.close()
    assert path.exists()  # not ours: left alone
    with pytest.raises(ValueError, match="heartbeat_s"):
        Claims(tmp_path, heartbeat_s=2.0, stale_s=1.0)


def test_a_sweep_that_fails_while_storing_releases_its_claims(tmp_path, monkeypatch):
    """An error in the caller's loop (here the store's write) ends the sweep; its claims go
    at once, even while the traceback (and so the sweep's frame) is still referenced."""
    from implicit_reg.engine import store as store_mod

    def broken(self, result):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.ResultStore, "write", broken)
    spec = SweepSpec(base={**BASE, "n_train": 20}, grid={"seed": [0, 1]})
    with pytest.raises(OSError, match="disk full") as info:
        run_sweep(spec, tmp_path / "sweep", progress=False, vectorize=False)
    assert info.traceback  # still held here
    assert (tmp_path / "sweep" / ".claims").is_dir()
    assert not list((tmp_path / "sweep" / ".claims").glob("*.claim"))
