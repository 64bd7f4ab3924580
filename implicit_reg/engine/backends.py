"""Sweep backends: how pending runs are executed. None of them writes.

A backend is a function ``backend(configs, store=None) -> Iterator[RunResult]``
that trains the configs and yields each result as it finishes;
:func:`implicit_reg.engine.sweep.run_sweep` writes every result through
:class:`~implicit_reg.engine.store.ResultStore`, the one atomic writer, so any
backend gets resumability for free. ``store`` (when the backend accepts it) is
where runs with ``checkpoint_every`` keep their mid-run checkpoints (placed by
:func:`~implicit_reg.engine.checkpoint.mid_run_checkpoints`); a backend with only
a ``configs`` parameter is called without it.

- :func:`serial_backend`: one run after another in this process.
- :func:`process_pool_backend`: spawned worker processes.
- :func:`vectorized_backend`: the ensembles of :func:`~implicit_reg.engine.plan.plan_sweep`
  in this process (:func:`~implicit_reg.engine.train.train_runs`), the other runs
  through a fallback backend.
- :mod:`implicit_reg.engine.ray_backend`: Ray tasks, here or on a cluster.

A backend may also offer ``backend.stream(feed, store)``: the jobs of a
:class:`JobFeed`, taken one at a time as a worker frees, on one pool for the whole
sweep (:func:`run_on_processes`). Sweeps that share a directory claim their jobs
that way (:func:`implicit_reg.engine.claims.claimed_results`), one job per free
worker, instead of a batch of jobs per pool.
"""

from __future__ import annotations

import inspect
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from .config import RunConfig
from .plan import CPU_MAX_STEP_FLOPS, DEFAULT_MAX_MEMBERS, plan_sweep
from .record import RunResult, failed_result
from .store import ResultStore

__all__ = [
    "Backend",
    "JobFeed",
    "call_backend",
    "serial_backend",
    "process_pool_backend",
    "vectorized_backend",
    "worker_threads",
]

Backend = Callable[..., Iterator[RunResult]]


class JobFeed:
    """Jobs handed out one at a time: :meth:`take` gives the next job, or None when none
    can be given now (another sweep holds the rest: look again after ``poll_s``
    seconds); :attr:`done` is true once no job is left. This base class hands out a
    fixed list."""

    poll_s = 1.0

    def __init__(self, jobs: Sequence[list[RunConfig]] = ()) -> None:
        self._jobs = list(jobs)

    @property
    def done(self) -> bool:
        return not self._jobs

    def take(self) -> list[RunConfig] | None:
        return self._jobs.pop(0) if self._jobs else None


def call_backend(
    backend: Backend, configs: Sequence[RunConfig], store: ResultStore | None
) -> Iterator[RunResult]:
    """``backend(configs, store=store)``, or ``backend(configs)`` if it takes no ``store``."""
    try:
        takes_store = "store" in inspect.signature(backend).parameters
    except (TypeError, ValueError):  # a builtin or an object without a signature
        takes_store = False
    return backend(configs, store=store) if takes_store else backend(configs)


def serial_backend(
    configs: Sequence[RunConfig], store: ResultStore | None = None
) -> Iterator[RunResult]:
    """Train the configs one after another in this process
    (:func:`~implicit_reg.engine.train.train_one`)."""
    from .train import train_one

    for config in configs:
        yield train_one(config, store=store)


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker, ``max(1, cores // workers)``: workers never oversubscribe."""
    if cores is None:
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return max(1, cores // max(1, workers))


def _init_worker(threads: int) -> None:
    """Per worker: its torch thread count, and a watchdog that ends the worker when
    the sweep process is gone (killed with SIGKILL, say): orphaned workers would
    otherwise finish their run for nobody and then wait forever."""
    import threading

    import torch

    torch.set_num_threads(threads)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:  # reparented: the sweep process died
                os._exit(1)

    threading.Thread(target=watch, name="sweep-parent-watchdog", daemon=True).start()


def _run_in_worker(configs: list[RunConfig], store: ResultStore | None) -> list[RunResult]:
    from .train import train_one

    return [train_one(c, store=store) for c in configs]


def run_on_processes(
    task: Callable[[list[RunConfig], ResultStore | None], list[RunResult]],
    jobs: Sequence[list[RunConfig]] | JobFeed,
    store: ResultStore | None,
    *,
    workers: int,
    threads: int,
) -> Iterator[RunResult]:
    """``task(job, store)`` for each job on one pool of at most ``workers`` spawned
    processes, each with ``threads`` torch threads; yields the results as the jobs finish.
    ``jobs`` is a list, or a :class:`JobFeed` whose next job is taken whenever a worker is
    free (so a sweep keeps one pool, and no worker waits for another's job). A worker that
    dies (a crash, the OOM killer) makes its job's runs "failed" and lost with the reason;
    the other jobs go on. ``task`` must be a module-level function (it is pickled)."""
    feed = jobs if isinstance(jobs, JobFeed) else JobFeed(jobs)
    if feed.done:
        return
    size = workers if isinstance(jobs, JobFeed) else min(workers, len(jobs))

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=size,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        )

    pool = new_pool()
    running: dict = {}
    try:
        while True:
            starved = False  # a job is left that cannot be taken now
            while len(running) < size and not feed.done:
                job = feed.take()
                if job is None:
                    starved = True
                    break
                try:
                    running[pool.submit(task, job, store)] = job
                except BrokenProcessPool:  # a worker died: its jobs fail below; go on anew
                    pool.shutdown(wait=False)
                    pool = new_pool()
                    running[pool.submit(task, job, store)] = job
            if not running:
                if feed.done:
                    return
                time.sleep(feed.poll_s)
                continue
            done, _ = wait(
                running, timeout=feed.poll_s if starved else None, return_when=FIRST_COMPLETED
            )
            for fut in done:
                job = running.pop(fut)
                try:
                    yield from fut.result()
                except Exception:  # the worker process itself died
                    error = traceback.format_exc()
                    for c in job:
                        yield failed_result(c, error, lost=True)
    finally:
        for fut in running:
            fut.cancel()
        pool.shutdown(wait=True)


def process_pool_backend(workers: int) -> Backend:
    """A backend that trains on ``workers`` spawned processes, each with
    :func:`worker_threads` torch threads. A worker that dies (a crash, the OOM
    killer) makes its runs "failed" and lost with the reason; the others go on."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    def backend(
        configs: Sequence[RunConfig], store: ResultStore | None = None
    ) -> Iterator[RunResult]:
        if not configs:
            return
        yield from run_on_processes(
            _run_in_worker,
            [[c] for c in configs],
            store,
            workers=workers,
            threads=worker_threads(workers),
        )

    def stream(feed: JobFeed, store: ResultStore | None = None) -> Iterator[RunResult]:
        yield from run_on_processes(
            _run_in_worker, feed, store, workers=workers, threads=worker_threads(workers)
        )

    backend.stream = stream
    return backend


def vectorized_backend(
    fallback: Backend | None = None,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_step_flops: float | None = CPU_MAX_STEP_FLOPS,
) -> Backend:
    """A backend that trains the vectorizable groups of :func:`~implicit_reg.engine.plan.plan_sweep`
    as ensembles in this process and hands the other runs to ``fallback`` (default:
    :func:`serial_backend`).

    An ensemble that cannot be built or trained (e.g. a model with BatchNorm)
    is trained through ``fallback`` instead, with a warning saying why.
    """
    fallback = fallback or serial_backend

    def backend(
        configs: Sequence[RunConfig], store: ResultStore | None = None
    ) -> Iterator[RunResult]:
        from . import train

        plan = plan_sweep(configs, max_members=max_members, max_step_flops=max_step_flops)
        for group in plan.groups:
            try:
                results = train.train_runs(group, store=store)
            except Exception as err:  # not vectorizable after all: train the runs serially
                warnings.warn(
                    f"vectorized training of {len(group)} runs failed ({type(err).__name__}: "
                    f"{err}); training them one by one",
                    RuntimeWarning,
                    stacklevel=2,
                )
                yield from call_backend(fallback, group, store)
            else:
                yield from results
        if plan.singles:
            yield from call_backend(fallback, plan.singles, store)

    return backend
