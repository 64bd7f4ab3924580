"""One pool per sweep, fed job by job: ``run_on_processes`` takes the next job of a
:class:`JobFeed` whenever a worker frees, and ``claimed_results`` claims a job only when
the backend's ``stream`` takes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from implicit_reg.engine import backends
from implicit_reg.engine.backends import JobFeed, run_on_processes
from implicit_reg.engine.claims import CLAIMS_DIR, claimed_results
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.record import RunResult
from implicit_reg.engine.store import ResultStore

BASE = {"dataset": "teacher", "n_train": 20, "n_test": 10, "probes": [], "eval_every": 2,
        "steps": 3}  # fmt: skip


def configs(n: int) -> list[RunConfig]:
    return [RunConfig(**{**BASE, "seed": s}) for s in range(n)]


class SlowFeed(JobFeed):
    """Hands out its jobs, but answers "none now" twice before the first and records how
    many jobs were out (taken, result not yet seen) at each take."""

    poll_s = 0.01

    def __init__(self, jobs):
        super().__init__(jobs)
        self.refusals, self.out_at_take, self.taken, self.seen = 2, [], 0, 0

    def take(self):
        if self.refusals:
            self.refusals -= 1
            return None
        job = super().take()
        if job is not None:
            self.out_at_take.append(self.taken - self.seen)
            self.taken += 1
        return job


def test_one_pool_takes_a_job_whenever_a_worker_frees(monkeypatch):
    made = []

    class Counted(backends.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("max_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(backends, "ProcessPoolExecutor", Counted)
    runs = configs(5)
    feed = SlowFeed([[c] for c in runs])
    results = []
    for r in run_on_processes(backends._run_in_worker, feed, None, workers=2, threads=1):
        feed.seen += 1
        results.append(r)
    assert made == [2]  # one pool for all five jobs
    assert sorted(r.config.config_hash() for r in results) == sorted(c.config_hash() for c in runs)
    assert all(r.status == "complete" for r in results)
    assert max(feed.out_at_take) <= 1  # a job is taken only while fewer than 2 are out
    assert feed.refusals == 0 and feed.done


def test_claimed_results_claims_each_job_when_the_stream_takes_it(tmp_path: Path):
    runs = configs(4)
    store = ResultStore(tmp_path / "runs")
    claims_dir = tmp_path / "runs" / CLAIMS_DIR
    held_at_take: list[set[str]] = []

    def backend(configs, store=None):  # the batch path: must not be used here
        raise AssertionError("claimed_results handed a batch instead of streaming")

    def stream(feed, store=None):
        while not feed.done:
            job = feed.take()
            assert job is not None
            held_at_take.append({p.stem for p in claims_dir.glob("*.claim")})
            for c in job:
                yield RunResult(config=c, summary={"status": "complete"})

    backend.stream = stream
    got = []
    for result in claimed_results(backend, runs, store, at_once=2, grouped=False):
        got.append(result.config.config_hash())
    hashes = [c.config_hash() for c in runs]
    assert sorted(got) == sorted(hashes)
    # when a job is taken, only it is claimed (the previous one's claim was released
    # with its result): never a batch of jobs at once
    assert [len(h) for h in held_at_take] == [1, 1, 1, 1]
    assert all(h <= set(hashes) for h in held_at_take)
    assert not list(claims_dir.glob("*.claim"))


def test_a_plain_backend_still_gets_claimed_batches(tmp_path: Path):
    runs = configs(3)
    store = ResultStore(tmp_path / "runs")
    calls = []

    def backend(configs, store=None):
        calls.append(len(configs))
        for c in configs:
            yield RunResult(config=c, summary={"status": "complete"})

    out = list(claimed_results(backend, runs, store, at_once=2, grouped=False))
    assert len(out) == 3 and calls == [2, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sweep_on_the_default_backend_trains_every_run_once(tmp_path, workers):
    from implicit_reg.engine.sweep import SweepSpec, run_sweep

    base = {k: v for k, v in BASE.items() if k != "n_train"}
    spec = SweepSpec(base=base, grid={"seed": [0, 1, 2], "n_train": [20, 30]})
    report = run_sweep(spec, tmp_path / "sweep", workers=workers, progress=False)
    assert report.done == 6 and report.failed == 0
    again = run_sweep(spec, tmp_path / "sweep", workers=workers, progress=False)
    assert (again.done, again.skipped) == (0, 6)


def _die_on_seed_1(job, store):
    """A task whose worker dies (as under the OOM killer) on the run of seed 1."""
    import os

    if any(c.seed == 1 for c in job):
        os._exit(1)
    return backends._run_in_worker(job, store)


def test_a_dead_worker_loses_its_job_and_the_pool_is_renewed_for_the_rest():
    runs = configs(5)
    feed = JobFeed([[c] for c in runs])
    out = {r.config.seed: r for r in run_on_processes(_die_on_seed_1, feed, None, workers=2,
                                                      threads=1)}  # fmt: skip
    assert sorted(out) == [0, 1, 2, 3, 4]
    assert out[1].summary.get("lost") and out[1].status == "failed"
    # the job beside it may die with the pool; the jobs taken after it run on a new one
    assert out[4].status == "complete" and out[3].status == "complete"
