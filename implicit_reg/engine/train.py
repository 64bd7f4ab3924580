"""Training: a :class:`~implicit_reg.engine.config.RunConfig` in, a
:class:`~implicit_reg.engine.record.RunResult` out; alone (:func:`run`) or as
members of one vectorized ensemble (:func:`train_runs`), through the same loop.

:func:`run` builds the config's workload (:mod:`implicit_reg.engine.workload`),
wraps the model and its optimizer in a
:class:`~implicit_reg.engine.steppers.SerialStepper` and drives it through the
one training loop, :func:`implicit_reg.engine.loop.train_loop` (its docstring
gives the schedule, the stopping rules and the checkpoints; the stepper's
gives the update rules). Divergence is a result (status ``"diverged"``); any
other exception gives status ``"failed"`` with its traceback (unless
``raise_errors=True``); no exception escapes :func:`run`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..workloads.losses import OneHotMSELoss, make_loss
from .checkpoint import mid_run_checkpoints, to_bytes
from .config import RunConfig
from .loop import SYNC_EVERY, Track, results_of, step_budget, train_loop
from .optimizers import build_optimizer
from .record import (
    STATUSES,
    RunResult,
    failed_result,
    now,
    run_meta,
    trained_alone,
    trained_in_ensemble,
)
from .steppers import EnsembleStepper, SerialStepper, batch_chunks, evaluate
from .store import ResultStore
from .workload import build_run_model, load_run_data, run_loss

__all__ = [
    "RunResult",
    "STATUSES",
    "run",
    "train_one",
    "train_runs",
    "make_loss",
    "OneHotMSELoss",
    "build_optimizer",
    "evaluate",
    "step_budget",
    "batch_chunks",
    "load_run_data",
]


def run(
    config: RunConfig, out_dir: str | Path | None = None, *, raise_errors: bool = False
) -> RunResult:
    """Train one model as ``config`` says and return its result (:func:`train_one`).

    ``out_dir``: a store root; the finished run is written atomically to
    ``out_dir/<config_hash>/`` (:class:`~implicit_reg.engine.store.ResultStore`), and
    with ``checkpoint_every`` a rerun of an unfinished run resumes from its last
    mid-run checkpoint there
    (:func:`~implicit_reg.engine.checkpoint.mid_run_checkpoints` decides where).
    Divergence gives status "diverged"; any exception gives status "failed" with the
    traceback in ``summary["error"]``, unless ``raise_errors``.
    """
    store = ResultStore(out_dir) if out_dir is not None else None
    result = train_one(config, store=store, raise_errors=raise_errors)
    if store is not None:
        store.write(result)
    return result


def train_one(
    config: RunConfig, *, store: ResultStore | None = None, raise_errors: bool = False
) -> RunResult:
    """One run trained alone, its result with metadata and wall time; nothing written but
    its mid-run checkpoints, in ``store``
    (:func:`~implicit_reg.engine.checkpoint.mid_run_checkpoints`). What the sweep
    backends call (the sweep's store writes the result); :func:`run` adds the write.
    Any exception gives status "failed" with its traceback, unless ``raise_errors``."""
    started, started_at = time.perf_counter(), now()
    try:
        result = _train_alone(config, store, raise_errors)
    except Exception:
        if raise_errors:
            raise
        result = failed_result(config, traceback.format_exc())
    result.summary["wall_time_s"] = time.perf_counter() - started
    result.meta = run_meta(started_at, trained_alone())
    return result


def _train_alone(config: RunConfig, store: ResultStore | None, raise_errors: bool) -> RunResult:
    """The training behind :func:`train_one` (exceptions propagate)."""
    data = load_run_data(config)
    model = build_run_model(config, data)
    loss_fn = run_loss(config, data)
    stepper = SerialStepper(config, data, model, loss_fn)
    tracks = [Track(config)]
    spec = config.model_spec(data.input_dim, data.output_dim)
    about = {
        "model_spec": spec,
        "dataset_spec": config.dataset_spec(),
        "loss": config.loss,
        "config": config.to_dict(),
        "status": "running",
    }
    budget, _ = step_budget(config, data.n_train)
    train_loop(
        stepper, tracks, budget=budget, loss_fn=loss_fn,
        checkpoints=mid_run_checkpoints([config], store), checkpoint_extra=about,
        raise_errors=raise_errors, sync_every=SYNC_EVERY,
    )  # fmt: skip
    (result,) = results_of(stepper, tracks, [data], [{}])
    if config.checkpoint and result.status != "failed":
        result.checkpoint = to_bytes(
            {
                **about,
                "state_dict": model.state_dict(),
                "optimizer": stepper.opt.state_dict(),
                "step": tracks[0].step,
                "status": result.status,
            }
        )
    return result


def train_runs(
    configs: Sequence[RunConfig], *, store: ResultStore | None = None
) -> list[RunResult]:
    """Train runs that share :func:`~implicit_reg.engine.plan.group_key` as one vectorized
    ensemble (:class:`~implicit_reg.engine.steppers.EnsembleStepper`) through the same loop
    as :func:`run`; one result per config, in order, nothing written (the sweep's
    store writes). With ``checkpoint_every`` and a ``store`` the ensemble's mid-run
    checkpoints go where :func:`~implicit_reg.engine.checkpoint.mid_run_checkpoints`
    puts them, and the same group trained again resumes from there.

    Each result's ``meta["trained"]`` says it was member i of an ensemble of M, and
    ``meta["ensemble"]["runs"]`` lists the members' config hashes. Raises
    ``ValueError`` if the configs cannot be vectorized together.
    """
    from .plan import MEMBER_FIELDS, group_key

    configs = list(configs)
    if not configs:
        return []
    keys = {group_key(c) for c in configs}
    if len(keys) != 1 or None in keys:
        raise ValueError(
            "these runs cannot share an ensemble: they must agree on every field except "
            f"{', '.join(MEMBER_FIELDS)}, and not ask for checkpoint=True or a serial-only field"
        )
    started, started_at = time.perf_counter(), now()
    cfg = configs[0]
    datas = [load_run_data(c) for c in configs]
    models = [build_run_model(c, d) for c, d in zip(configs, datas)]
    loss_fn = run_loss(cfg, datas[0])
    stepper = EnsembleStepper(configs, datas, models, loss_fn)
    tracks = [Track(c) for c in configs]
    budget, _ = step_budget(cfg, datas[0].n_train)
    train_loop(
        stepper, tracks, budget=budget, loss_fn=loss_fn,
        checkpoints=mid_run_checkpoints(configs, store),
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    hashes = [c.config_hash() for c in configs]
    ensemble = {"members": len(configs), "runs": hashes, "wall_time_s": elapsed}
    metas = [
        run_meta(started_at, trained_in_ensemble(i, len(configs)), ensemble=ensemble)
        for i in range(len(configs))
    ]
    results = results_of(stepper, tracks, datas, metas)
    for r in results:
        r.summary["wall_time_s"] = elapsed / len(configs)
    return results
