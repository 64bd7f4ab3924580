"""The default sweep backend: the planned jobs (ensembles, width packs, single runs) on workers.

:func:`planned_backend` plans the pending runs with
:func:`~implicit_reg.engine.plan.plan_sweep` (seeds, label-noise draws, data
orders, lr, momentum and weight decay of one architecture as one ensemble;
widths of one family packed together) and trains every job, longest first
by :data:`~implicit_reg.engine.plan.STEP_COST`'s estimate (:func:`plan_jobs`; the
costliest ensemble is split while that shortens the sweep), in this process
(``workers=1``) or on ``workers`` spawned processes with
:func:`~implicit_reg.engine.backends.worker_threads` torch threads each.
An ensemble is :func:`~implicit_reg.engine.train.train_runs` (the one training
loop with an :class:`~implicit_reg.engine.steppers.EnsembleStepper`); a single
run goes through :func:`~implicit_reg.engine.backends.serial_backend`. An ensemble that cannot be built
is trained run by run instead, with a warning. The results, files and run
records are those of serial runs; each ``meta.json`` says how its run was trained.

Old names kept here: the planning (:mod:`implicit_reg.engine.plan`), ``train_runs``
and :func:`~implicit_reg.engine.backends.vectorized_backend`.
"""

from __future__ import annotations

import heapq
import time
import warnings
from collections.abc import Iterator, Sequence

from . import plan as _plan
from .backends import (
    Backend,
    JobFeed,
    run_on_processes,
    serial_backend,
    vectorized_backend,
    worker_threads,
)
from .config import RunConfig
from .loop import step_budget
from .plan import *  # noqa: F403
from .plan import DEFAULT_MAX_MEMBERS, STEP_COST, plan_sweep, run_step_flops
from .record import RunResult
from .store import ResultStore
from .train import train_runs

__all__ = [
    *_plan.__all__,
    "train_runs",
    "vectorized_backend",
    "planned_backend",
    "plan_jobs",
    "makespan",
    "job_cost",
]


def job_cost(job: list[RunConfig]) -> float:
    """Estimated seconds of one job: its steps × :data:`STEP_COST`'s per-step cost, with
    the evaluations amortized (:func:`~implicit_reg.engine.plan.run_step_flops`) and every
    member at the job's widest width; a single run is a job of one."""
    from .workload import load_run_data

    first = job[0]
    try:
        steps, _ = step_budget(first, load_run_data(first).n_train)
        flops = max(run_step_flops(c) for c in {c.width: c for c in job}.values())
    except Exception:  # noqa: BLE001 - a run that cannot be built fails when it is trained
        return 0.0
    c = STEP_COST
    return steps * (c["job"] + len(job) * (c["member"] + c["flop"] * flops))


def makespan(costs: Sequence[float], workers: int) -> float:
    """Wall time of jobs of these ``costs`` scheduled longest first on ``workers``
    (each job to the worker that is free first)."""
    loads = [0.0] * workers
    for cost in sorted(costs, reverse=True):
        heapq.heapreplace(loads, loads[0] + cost)
    return max(loads)


def plan_jobs(
    configs: Sequence[RunConfig],
    workers: int = 1,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_step_flops: float | None = _plan.CPU_MAX_STEP_FLOPS,
) -> list[list[RunConfig]]:
    """The jobs :func:`planned_backend` trains, longest first (:func:`job_cost`): the
    ensembles and packs of :func:`~implicit_reg.engine.plan.plan_sweep` and the single
    runs. With several workers an ensemble is halved as long as that shortens the
    :func:`makespan`, the costliest first, so that one large ensemble does not leave
    the other workers idle; when halving the costliest no longer helps, a smaller one
    may (issue 19's slice: after w = 300 is split in two, halving the pack of w = 13
    and 47 lets both workers end together)."""
    plan = plan_sweep(configs, max_members=max_members, max_step_flops=max_step_flops)
    jobs = [list(g) for g in plan.groups] + [[c] for c in plan.singles]
    jobs.sort(key=job_cost, reverse=True)
    span = makespan([job_cost(j) for j in jobs], workers)
    while workers > 1:
        for i, job in enumerate(jobs):
            if len(job) < 2:
                continue
            half = len(job) // 2
            trial = sorted([job[:half], job[half:], *jobs[:i], *jobs[i + 1 :]], key=job_cost,
                           reverse=True)  # fmt: skip
            trial_span = makespan([job_cost(j) for j in trial], workers)
            if trial_span < span:
                jobs, span = trial, trial_span
                break
        else:
            break
    return jobs


def _train_job(job: list[RunConfig], store: ResultStore | None) -> list[RunResult]:
    """One job: an ensemble through :func:`train_runs` (run by run if it cannot be built),
    or one run through :func:`~implicit_reg.engine.backends.serial_backend`."""
    if len(job) > 1:
        try:
            return train_runs(job, store=store)
        except Exception as err:  # not vectorizable after all: train the runs serially
            warnings.warn(
                f"ensemble training of {len(job)} runs failed ({type(err).__name__}: {err}); "
                "training them one by one",
                RuntimeWarning,
                stacklevel=2,
            )
    return list(serial_backend(job, store))


def planned_backend(
    workers: int = 1,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_step_flops: float | None = _plan.CPU_MAX_STEP_FLOPS,
) -> Backend:
    """A backend that trains the jobs of :func:`~implicit_reg.engine.plan.plan_sweep`,
    longest first, here (``workers=1``) or on ``workers`` processes. A worker that
    dies makes its job's runs "failed" and lost; the others go on."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")

    def backend(
        configs: Sequence[RunConfig], store: ResultStore | None = None
    ) -> Iterator[RunResult]:
        if not configs:
            return
        jobs = plan_jobs(configs, workers, max_members=max_members, max_step_flops=max_step_flops)
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                yield from _train_job(job, store)
            return
        yield from run_on_processes(
            _train_job, jobs, store, workers=workers, threads=worker_threads(workers)
        )

    def stream(feed: JobFeed, store: ResultStore | None = None) -> Iterator[RunResult]:
        """The feed's jobs (planned by the caller) as they are taken: here one after
        another, or on one pool of ``workers`` processes for the whole feed."""
        if workers == 1:
            while not feed.done:
                job = feed.take()
                if job is None:
                    time.sleep(feed.poll_s)
                else:
                    yield from _train_job(job, store)
            return
        yield from run_on_processes(
            _train_job, feed, store, workers=workers, threads=worker_threads(workers)
        )

    backend.stream = stream
    return backend
