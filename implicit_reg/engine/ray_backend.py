"""A sweep backend that runs on Ray: one Ray task per planned job, on this machine or a cluster.

:func:`ray_backend` returns a :data:`~implicit_reg.engine.sweep.Backend` for
:func:`~implicit_reg.engine.sweep.run_sweep`. Each job becomes one Ray task
(``num_cpus``/``num_gpus`` each) that trains it on a worker and returns a
:class:`~implicit_reg.engine.record.RunResult` per run. The jobs are those of the local
default (:func:`~implicit_reg.engine.vectorized_sweep.plan_jobs`: ensembles, width
packs and single runs, balanced for as many parallel tasks as the cluster holds) when
``run_sweep`` vectorizes (``vectorize=None``, its default, or True: it takes the
backend's ``vectorized`` attribute), one run per task with ``vectorize=False``
(``group``/``task`` set other jobs). The results come back to the driver as they
finish, and the driver writes them with the same atomic
:class:`~implicit_reg.engine.store.ResultStore` as the local backends. So the sweep
directory, the records (``meta.json`` says how each run was trained), the progress
bar and resuming are the local ones, and a sweep started on one backend is finished
by the other.

Where it runs: ``address=None`` starts Ray on this machine for the sweep
(and stops it after); ``address="HOST:6379"`` (or ``"auto"``) joins a cluster
started with ``ray start --head`` (see ``docs/ray.md``). If the driver is
already connected (``ray.init`` was called), that connection is used and left
open.

Failures, per run:

- the run raises: :func:`implicit_reg.engine.train.run` turns any exception into a
  "failed" result with its traceback, and so does the task wrapper for an
  exception raised outside ``run`` (a custom ``task``, a worker that cannot
  unpickle the task: ``ray.exceptions.RayTaskError``); such results are
  stored like any other (``--retry-failed`` redoes them).
- its worker dies (killed, out of memory, node lost): Ray reruns the task up
  to ``max_retries`` times; after that the run is reported failed and
  ``lost`` (:func:`implicit_reg.engine.record.failed_result` with ``lost=True``): counted, not stored, so a
  resumed sweep tries it again, exactly as with the process pool.
- Ctrl-C (``KeyboardInterrupt``) or any other exit of the driver loop cancels
  every outstanding task (``ray.cancel(force=True)``); the results already
  written stay on disk, complete.

Ray is optional (``pip install 'implicit-reg[ray]'``); without it
:func:`ray_backend` raises :class:`RayNotInstalledError` with that hint.
"""

from __future__ import annotations

import logging
import math
import os
import re
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .backends import Backend, call_backend, serial_backend
from .config import RunConfig
from .record import RunResult, failed_result
from .store import ResultStore

__all__ = [
    "BACKENDS",
    "RAY_INSTALL_HINT",
    "RayNotInstalledError",
    "import_ray",
    "ray_backend",
    "run_each",
    "one_per_run",
    "ensemble_groups",
    "ray_slots",
    "train_ensemble_or_each",
    "select_backend",
]

RAY_INSTALL_HINT = "the ray backend needs Ray: pip install 'implicit-reg[ray]' (or pip install ray)"

GroupTask = Callable[[Sequence[RunConfig]], Sequence[RunResult]]
Grouping = Callable[[Sequence[RunConfig]], Sequence[Sequence[RunConfig]]]


class RayNotInstalledError(ImportError):
    """Ray is not importable; the message says how to install it."""


def import_ray():
    """The ``ray`` module, or :class:`RayNotInstalledError` with the install command."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(RAY_INSTALL_HINT) from None
    return ray


def run_each(configs: Sequence[RunConfig], store: ResultStore | None = None) -> list[RunResult]:
    """The task of one run per task: each config of the group alone, in order, through
    :func:`~implicit_reg.engine.backends.serial_backend`
    (:func:`~implicit_reg.engine.train.train_one`: metadata, wall time, a raised error as a
    "failed" result), with mid-run checkpoints in ``store``, a path the workers share with
    the driver."""
    return list(serial_backend(configs, store=store))


def one_per_run(configs: Sequence[RunConfig]) -> list[list[RunConfig]]:
    """The default grouping: one Ray task per run."""
    return [[c] for c in configs]


def ensemble_groups(max_members: int | None = None, workers: int | None = None) -> Grouping:
    """The grouping of ``vectorize=True``: the jobs of the local default,
    :func:`implicit_reg.engine.vectorized_sweep.plan_jobs` (each ensemble or width pack
    one task, each other run one task; the costliest ensemble split while that shortens
    the sweep on ``workers`` parallel tasks). ``workers=None``: as many as the connected
    Ray cluster runs at once (:func:`ray_slots` of one CPU per task)."""
    from .plan import DEFAULT_MAX_MEMBERS
    from .vectorized_sweep import plan_jobs

    members = DEFAULT_MAX_MEMBERS if max_members is None else max_members

    def group(configs: Sequence[RunConfig]) -> list[list[RunConfig]]:
        slots = ray_slots(import_ray(), 1.0, 0.0) if workers is None else workers
        return plan_jobs(configs, slots, max_members=members)

    return group


def ray_slots(ray, num_cpus: float, num_gpus: float) -> int:
    """How many tasks reserving ``num_cpus`` and ``num_gpus`` the connected cluster runs at
    once (its total resources now; at least 1)."""
    total = ray.cluster_resources()
    fits = [total.get(k, 0.0) / need for k, need in (("CPU", num_cpus), ("GPU", num_gpus)) if need]
    return max(1, int(min(fits, default=1)))


def train_ensemble_or_each(
    configs: Sequence[RunConfig], store: ResultStore | None = None
) -> list[RunResult]:
    """The task of ``vectorize=True``, on a worker: one planned job as the local default
    trains it (:func:`implicit_reg.engine.vectorized_sweep.planned_backend`'s job): two or
    more runs as one ensemble (:func:`~implicit_reg.engine.train.train_runs`; one by one,
    with a warning, if they cannot be vectorized), a single run alone."""
    from .vectorized_sweep import _train_job

    return _train_job(list(configs), store)


def _execute(
    task: GroupTask, configs: Sequence[RunConfig], threads: int, root: str | None = None
) -> list[RunResult]:
    """The body of one Ray task, on a worker: ``threads`` torch threads (the task's
    CPU share, so parallel tasks never oversubscribe a node), then ``task(configs)``
    (with ``store=`` the sweep's store at ``root`` if the task takes it).
    An exception becomes a "failed" result per config, with the worker's traceback."""
    import torch

    torch.set_num_threads(threads)
    try:
        store = ResultStore(root) if root is not None else None
        results = list(call_backend(task, configs, store))
        if [r.config.config_hash() for r in results] != [c.config_hash() for c in configs]:
            raise RuntimeError("the task must return one result per config, in order")
    except Exception:
        return [failed_result(c, traceback.format_exc()) for c in configs]
    return results


def _connect(ray, address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Connect the driver; True if this call started the connection (and so must end it)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": runtime_env}
    if address is None:  # a private, short-lived instance, even if a cluster runs here
        address, kwargs["include_dashboard"] = "local", False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # it would phone home otherwise
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ValueError(
            f"cannot connect to a Ray cluster at {address!r} ({err}); start one with "
            "`ray start --head`, or leave the address out to run Ray on this machine; a "
            "cluster with token authentication also needs RAY_AUTH_MODE=token here (docs/ray.md)"
        ) from None
    return True


def ray_backend(
    *,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_retries: int = 3,
    runtime_env: dict[str, Any] | None = None,
    vectorize: bool = False,
    max_members: int | None = None,
    task: GroupTask | None = None,
    group: Grouping | None = None,
    poll_s: float = 0.5,
) -> Backend:
    """A sweep backend that trains each group of configs (default: each config) as one Ray task.

    Args:
        address: a Ray cluster (``"HOST:6379"``, or ``"auto"`` on one of its nodes);
            None starts Ray on this machine for the duration of the sweep.
        num_cpus: CPUs each task reserves (fractions allowed); its torch
            thread count is ``max(1, floor(num_cpus))``.
        num_gpus: GPUs each task reserves (e.g. 0.25 packs 4 runs per GPU); runs
            with ``device = "cuda"`` need it > 0. Ray sets ``CUDA_VISIBLE_DEVICES``,
            so ``"cuda"`` is the GPU the task was given.
        max_retries: how many times a task whose worker died is rerun (>= 0);
            an exception raised by the task is never retried.
        runtime_env: passed to ``ray.init`` (e.g. ``{"pip": [...]}``) when this
            backend connects; workers must be able to import ``implicit_reg``.
        vectorize: one task per job of the local default
            (:func:`implicit_reg.engine.vectorized_sweep.plan_jobs`, balanced for
            :func:`ray_slots` parallel tasks): an ensemble or width pack of
            :func:`implicit_reg.engine.plan.plan_sweep` trained on the worker as one
            computation, or a single run. False: one task per run. ``run_sweep``
            decides this for the backend it is given: it trains through the returned
            backend's ``vectorized`` attribute (this backend with
            ``vectorize=True``) unless called with ``vectorize=False``.
        max_members: with ``vectorize``, the largest ensemble (default:
            :data:`~implicit_reg.engine.plan.DEFAULT_MAX_MEMBERS`).
        task: what a worker runs, ``configs -> results`` (one per config, in
            order); default :func:`run_each`. It must be importable on the
            workers or picklable by value. A backend with its own ``task`` or
            ``group`` has ``vectorized = None``: ``run_sweep`` runs it as it is
            (``vectorize=True`` trains the ensembles on the driver and hands it
            the other runs, :func:`~implicit_reg.engine.backends.vectorized_backend`).
        group: how the pending configs are split into tasks (called once Ray is
            connected); default :func:`one_per_run`.
        poll_s: how often the driver wakes up while waiting (it is then
            interruptible by Ctrl-C).

    Raises:
        RayNotInstalledError: Ray is not installed.
        ValueError: a resource count or ``max_retries`` out of range.
    """
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if num_cpus == 0 and num_gpus == 0:
        raise ValueError("num_cpus and num_gpus are both 0: a task must reserve something")
    if isinstance(max_retries, bool) or not (isinstance(max_retries, int) and max_retries >= 0):
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if not poll_s > 0:
        raise ValueError(f"poll_s must be > 0, got {poll_s!r}")
    if vectorize and (task is not None or group is not None):
        raise ValueError("vectorize=True sets the task and the grouping; pass neither")
    ray = import_ray()
    threads = max(1, int(num_cpus))
    options = {
        "address": address,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "max_retries": max_retries,
        "runtime_env": runtime_env,
        "poll_s": poll_s,
    }
    custom = task is not None or group is not None
    if vectorize:
        task = train_ensemble_or_each
        members = max_members

        def group(configs: Sequence[RunConfig]) -> list[list[RunConfig]]:
            slots = ray_slots(ray, num_cpus, num_gpus)
            return ensemble_groups(members, slots)(configs)

    task = task or run_each
    group = group or one_per_run

    def backend(
        configs: Sequence[RunConfig], store: ResultStore | None = None
    ) -> Iterator[RunResult]:
        if not configs:
            return
        on_gpu = sorted({c.device for c in configs if c.device.startswith("cuda")})
        if on_gpu and num_gpus == 0:
            raise ValueError(
                f"runs with device {', '.join(on_gpu)} need GPUs: set num_gpus > 0 "
                "(--num-gpus), e.g. 1, or 0.25 to share a GPU between 4 runs"
            )
        started = _connect(ray, address, runtime_env)
        pending: list = []
        try:
            groups = [list(g) for g in group(configs) if len(g)]  # may ask Ray its size
            if sorted(c.config_hash() for g in groups for c in g) != sorted(
                c.config_hash() for c in configs
            ):
                raise ValueError("group() must put every config in exactly one group")
            remote = ray.remote(_execute).options(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                max_retries=max_retries,
                retry_exceptions=False,  # a task that raises fails the same way every time
            )
            root = str(store.root) if store is not None else None
            refs = {remote.remote(task, g, threads, root): g for g in groups}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=poll_s)
                if done and pending:  # collect everything else that is ready too
                    more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                    done += more
                for ref in done:
                    yield from _fetch(ray, ref, refs[ref], max_retries)
        finally:
            for ref in pending:  # Ctrl-C, an error, or the consumer stopped early
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    # the same backend with vectorize=True: run_sweep (unless vectorize=False) takes it, so
    # that the planned jobs train on the workers rather than on the driver; a custom task
    # or grouping is kept as it is
    backend.vectorized = (  # type: ignore[attr-defined]
        None
        if custom
        else backend
        if vectorize
        else ray_backend(vectorize=True, max_members=max_members, **options)
    )
    return backend


def _fetch(ray, ref, configs: list[RunConfig], max_retries: int) -> list[RunResult]:
    """The results of one finished task, or the "failed" results that stand for them."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # raised outside the task (e.g. unpickling it)
        remote = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the remote traceback, uncoloured
        return [
            failed_result(c, f"Traceback (most recent call last), in {remote}") for c in configs
        ]
    except ray.exceptions.RayError as err:  # the worker or node died: lost, not stored
        why = (
            f"its Ray worker died on all {max_retries + 1} tries: "
            + "".join(traceback.format_exception_only(type(err), err)).strip()
        )
        return [failed_result(c, why, lost=True) for c in configs]


BACKENDS = ("local", "ray")


def select_backend(
    name: str,
    *,
    workers: int = 1,
    address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_retries: int = 3,
) -> Backend | None:
    """The backend the sweep command's ``--backend`` names: None for "local" (then
    :func:`~implicit_reg.engine.sweep.run_sweep` picks serial or a process pool from
    ``workers``), :func:`ray_backend` for "ray". A missing Ray is a ``ValueError``
    here, saying how to install it."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "local":
        if address is not None:
            raise ValueError("--ray-address needs --backend ray")
        return None
    if workers != 1:
        raise ValueError("--workers is for --backend local; with ray, Ray schedules the runs")
    try:
        return ray_backend(
            address=address, num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries
        )
    except RayNotInstalledError as err:
        raise ValueError(str(err)) from None
