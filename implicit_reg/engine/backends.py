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
"""

from __future__ import annotations

import inspect
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

from .config import RunConfig
from .plan import CPU_MAX_STEP_FLOPS, DEFAULT_MAX_MEMBERS, plan_sweep
from .record import RunResult, failed_result
from .store import ResultStore

__all__ = [
    "Backend",
    "call_backend",
    "serial_backend",
    "process_pool_backend",
    "vectorized_backend",
    "worker_threads",
]

Backend = Callable[..., Iterator[RunResult]]


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
    jobs: Sequence[list[RunConfig]],
    store: ResultStore | None,
    *,
    workers: int,
    threads: int,
) -> Iterator[RunResult]:
    """``task(job, store)`` for each job on at most ``workers`` spawned processes, each
    with ``threads`` torch threads; yields the results as the jobs finish. A worker that
    dies (a crash, the OOM killer) makes its job's runs "failed" and lost with the reason;
    the other jobs go on. ``task`` must be a module-level function (it is pickled)."""
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        futures = {pool.submit(task, job, store): job for job in jobs}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        yield from fut.result()
                    except Exception:  # the worker process itself died
                        error = traceback.format_exc()
                        for c in futures[fut]:
                            yield failed_result(c, error, lost=True)
        finally:
            for fut in futures:
                fut.cancel()


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
