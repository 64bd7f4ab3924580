"""Vectorized sweeps: runs that differ only in per-member numbers train as one ensemble.

A sweep over learning rate, seed, label noise or EGR coefficient trains many
runs of one architecture on one data set. :func:`plan_sweep` groups the
runs whose configs agree on every field except :data:`MEMBER_FIELDS` (model,
width, depth, activation, data set, sizes, task, loss, optimizer type,
momentum, batch size, budget, evaluation and probe schedule, dtype,
device, chunk size, …); each group of two or more is trained by
:func:`train_runs` as one :class:`~implicit_reg.ensemble.vectorized.VectorizedEnsemble`,
the rest one by one. :func:`vectorized_backend` wraps that as a sweep
backend (``run_sweep(..., vectorize=True)``, ``implicit-reg sweep
--vectorize``, the CLI default).

:func:`train_runs` reproduces :func:`implicit_reg.engine.train.run` member by
member: the same minibatch order (a ``torch.Generator`` seeded with the
run's ``seed``, one permutation per epoch), the same evaluations
(:data:`~implicit_reg.engine.config.BASE_METRICS` at step 0, every
``eval_every`` steps and at the end, with the same formulas), the same
stopping rules (budget, ``target_train_loss``, divergence: a NaN/inf loss
or one above ``max_loss``), the same probes (:func:`implicit_reg.probes.run_probes`
on the member's own model) and the same :class:`~implicit_reg.engine.train.RunResult`,
written by the same store. The numbers agree with a serial run to rounding
(``tests/test_vectorized_sweep.py``); ``meta.json`` also records the
ensemble it was trained in.

Not vectorized (trained serially with no user action): runs with
``checkpoint=True`` (the optimizer state is per run), models with running
statistics or dropout (:func:`~implicit_reg.ensemble.vectorized.check_vectorizable`),
groups of one, and, on CPU, groups whose forward pass costs more than
:data:`CPU_MAX_STEP_FLOPS` per member and step, where one run at a time is
faster.
"""

from __future__ import annotations

import json
import math
import socket
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from ..ensemble.vectorized import (
    VectorizedEnsemble,
    ensemble_gradient,
    ensemble_loss_fns,
    ensemble_outputs,
    member_sq_norms,
)
from .config import BASE_METRICS, RunConfig
from .optimizers import update_rule
from .store import versions
from .train import RunResult, make_loss, step_budget
from .workload import build_run_model, load_run_data

__all__ = [
    "MEMBER_FIELDS",
    "DEFAULT_MAX_MEMBERS",
    "SUPPORTED_FIELDS",
    "CPU_MAX_STEP_FLOPS",
    "step_flops",
    "SweepPlan",
    "group_key",
    "plan_sweep",
    "train_runs",
    "vectorized_backend",
]

#: config fields that may differ between the members of one ensemble
MEMBER_FIELDS = (
    "lr",
    "egr_coeff",
    "seed",
    "data_seed",
    "label_noise",
    "target_train_loss",
    "max_loss",
)
#: members per ensemble (larger groups are split); memory grows with it
DEFAULT_MAX_MEMBERS = 64
#: On CPU, a group whose forward pass costs more than this many FLOPs per member
#: and step (rows per step x FLOPs per sample) is trained one run at a time:
#: there the serial matmuls are already efficient and the batched ones, with
#: M times the activations, are slower. On 2 cores (``benchmarks/bench_vectorized.py``,
#: table 1b; ``docs/vectorized.md``) 16-member ensembles were 1.6-3.5x faster
#: up to 2 MFLOP, 0.9-1.9x between 6 and 26 MFLOP (depending on the load) and
#: 0.4-0.8x at 100 MFLOP; the limit keeps the groups where vectorizing clearly pays.
CPU_MAX_STEP_FLOPS = 4_000_000


#: the config fields whose meaning :func:`train_runs` reproduces; a run that sets
#: any other field (``egr_micro_batch``, or a field added later) away from its
#: default trains serially, so a new training option can never be ignored here
SUPPORTED_FIELDS = frozenset(
    """model width depth activation model_options init_from dataset n_train n_test label_noise task data_seed
    loss optimizer lr momentum nesterov weight_decay egr_coeff egr_method batch_size
    steps epochs target_train_loss max_loss eval_every probes probe_every probe_options
    seed device dtype chunk_size checkpoint""".split()
)


def group_key(config: RunConfig) -> str | None:
    """The fields a run must share with the other members of its ensemble, as a
    canonical string; None when the run is trained serially: ``checkpoint=True``, or
    a non-default field outside :data:`SUPPORTED_FIELDS` (``egr_micro_batch``, whose
    micro-batch penalty the ensemble step does not compute)."""
    values = config.to_dict()
    defaults = RunConfig.__dataclass_fields__
    unsupported = [
        k for k, v in values.items()
        if k not in SUPPORTED_FIELDS and v != _default(defaults[k])
    ]  # fmt: skip
    if config.checkpoint or unsupported:
        return None
    shared = {k: v for k, v in values.items() if k not in MEMBER_FIELDS}
    return json.dumps(shared, sort_keys=True)


def _default(f) -> Any:
    value = f.default
    return list(value) if isinstance(value, tuple) else value


@dataclass
class SweepPlan:
    """How a list of runs is executed: ensembles and single runs.

    ``heavy`` counts the singles whose group was too expensive per step to gain
    from vectorizing on CPU (see :data:`CPU_MAX_STEP_FLOPS`).
    """

    groups: list[list[RunConfig]] = field(default_factory=list)
    singles: list[RunConfig] = field(default_factory=list)
    heavy: int = 0

    def line(self) -> str:
        sizes = ", ".join(str(len(g)) for g in self.groups) or "none"
        heavy = (
            f" ({self.heavy} of them in groups too heavy per step to gain on CPU)"
            if self.heavy
            else ""
        )
        return (
            f"{sum(len(g) for g in self.groups)} runs in {len(self.groups)} vectorized "
            f"ensembles (members: {sizes}), {len(self.singles)} single runs{heavy}"
        )


def step_flops(config: RunConfig) -> int:
    """FLOPs of one member's forward pass in one step: rows per step (``batch_size``
    or the training-set size) x the model's FLOPs per sample, counted by
    ``torch.utils.flop_counter`` on the meta device (no computation)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..workloads.models import build_model

    data = load_run_data(config)
    model = build_model(**config.model_spec(data.input_dim, data.output_dim)).to("meta")
    sample = torch.empty(1, *data.x_train.shape[1:], device="meta")
    with FlopCounterMode(display=False) as counter:
        model(sample)
    rows = data.n_train if config.batch_size is None else min(config.batch_size, data.n_train)
    return rows * int(counter.get_total_flops())


def plan_sweep(
    configs: Sequence[RunConfig],
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_step_flops: float | None = CPU_MAX_STEP_FLOPS,
) -> SweepPlan:
    """Group the runs that can be vectorized together; the others run alone.

    Groups keep the order in which their first run appears; a group larger
    than ``max_members`` is split into near-equal ensembles. On CPU, a group
    whose :func:`step_flops` exceeds ``max_step_flops`` runs alone (None: no
    limit; other devices: no limit).
    """
    if isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 2:
        raise ValueError(f"max_members must be an integer >= 2, got {max_members!r}")
    if max_step_flops is not None and not max_step_flops > 0:
        raise ValueError(f"max_step_flops must be > 0 or None, got {max_step_flops!r}")
    by_key: dict[str, list[RunConfig]] = {}
    plan = SweepPlan()
    for config in configs:
        key = group_key(config)
        if key is None:
            plan.singles.append(config)
        else:
            by_key.setdefault(key, []).append(config)
    for group in by_key.values():
        if len(group) == 1:
            plan.singles.extend(group)
            continue
        cpu = torch.device(group[0].device).type == "cpu"
        if cpu and max_step_flops is not None and step_flops(group[0]) > max_step_flops:
            plan.singles.extend(group)
            plan.heavy += len(group)
            continue
        parts = math.ceil(len(group) / max_members)
        size = math.ceil(len(group) / parts)
        plan.groups.extend(group[i : i + size] for i in range(0, len(group), size))
    return plan


def vectorized_backend(
    fallback=None,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_step_flops: float | None = CPU_MAX_STEP_FLOPS,
):
    """A sweep backend (``configs -> Iterator[RunResult]``) that trains the
    vectorizable groups of :func:`plan_sweep` as ensembles in this process and
    hands the other runs to ``fallback`` (default: one by one in this process,
    :func:`implicit_reg.engine.sweep.serial_backend`).

    An ensemble that cannot be built or trained (e.g. a model with BatchNorm)
    is trained through ``fallback`` instead, with a warning saying why.
    """
    from .sweep import serial_backend

    fallback = fallback or serial_backend

    def backend(configs: Sequence[RunConfig]) -> Iterator[RunResult]:
        plan = plan_sweep(configs, max_members=max_members, max_step_flops=max_step_flops)
        for group in plan.groups:
            try:
                results = train_runs(group)
            except Exception as err:  # not vectorizable after all: train the runs serially
                warnings.warn(
                    f"vectorized training of {len(group)} runs failed ({type(err).__name__}: "
                    f"{err}); training them one by one",
                    RuntimeWarning,
                    stacklevel=2,
                )
                yield from fallback(group)
            else:
                yield from results
        if plan.singles:
            yield from fallback(plan.singles)

    return backend


# ---------------------------------------------------------------- one ensemble
def _bad(loss: float, bound: float) -> bool:
    """The divergence rule of :func:`implicit_reg.engine.train.run`."""
    return not math.isfinite(loss) or loss > bound


@dataclass
class _Member:
    """Bookkeeping of one run inside the ensemble (what ``train._train`` keeps in locals)."""

    config: RunConfig
    data: Any
    model: torch.nn.Module
    init_state: dict[str, Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "complete"
    stop_reason: str = "budget"
    diverged_at: int | None = None
    diverged_loss: float | None = None
    step: int = 0
    last_probe: int | None = None
    error: str | None = None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.history.extend(
            {"step": step, "metric": k, "value": float(v)} for k, v in values.items()
        )


def _stack_or_share(tensors: list[Tensor]) -> tuple[Tensor, bool]:
    """One tensor if all members have the same, else the stack ``[M, …]``; and which."""
    first = tensors[0]
    if all(t.shape == first.shape and torch.equal(t, first) for t in tensors[1:]):
        return first, False
    if any(t.shape != first.shape for t in tensors):
        raise ValueError("the members' data sets differ in shape; they cannot be vectorized")
    return torch.stack(tensors), True


class _Evaluator:
    """:func:`implicit_reg.engine.train.evaluate` for every live member at once, same formulas."""

    def __init__(self, members: list[_Member], loss_fn, chunk_size: int | None) -> None:
        self.loss_fn, self.chunk_size = loss_fn, chunk_size
        datas = [m.data for m in members]
        self.classes = datas[0].num_classes is not None
        self.x_train, self.xb_train = _stack_or_share([d.x_train for d in datas])
        self.x_test, self.xb_test = _stack_or_share([d.x_test for d in datas])
        self.y_train = torch.stack([d.y_train for d in datas])
        self.y_test = torch.stack([d.y_test for d in datas])
        self.y_clean = torch.stack([d.y_train_clean for d in datas])
        self.noisy = [self.classes and d.label_noise > 0 for d in datas]

    def _loss_and_error(self, arch, params, rows, x, x_batched, y) -> tuple[list, list]:
        """Per member: Σ_c float(L_c)·n_c / n and the error rate, as ``train._loss_and_error``."""
        n = y.shape[1]
        step = n if self.chunk_size is None else self.chunk_size
        k = len(rows)
        total, wrong = [0.0] * k, [0] * k
        x = x[rows] if x_batched else x
        y = y[rows]
        for i in range(0, n, step):
            xc = x[:, i : i + step] if x_batched else x[i : i + step]
            yc = y[:, i : i + step]
            out = ensemble_outputs(arch, params, xc, x_batched=x_batched)
            with torch.no_grad():
                losses = vmap(self.loss_fn)(out, yc).tolist()
            for j in range(k):
                total[j] += float(losses[j]) * yc.shape[1]
            if self.classes:
                truth = yc if not yc.is_floating_point() else yc.argmax(-1)
                for j, w in enumerate((out.argmax(-1) != truth).sum(1).tolist()):
                    wrong[j] += int(w)
        return [t / n for t in total], [w / n for w in wrong]

    def __call__(self, ens: VectorizedEnsemble, init: tuple[Tensor, ...]) -> dict[int, dict]:
        rows = torch.tensor(ens.live, dtype=torch.long, device=self.y_train.device)
        arch, params = ens.arch, ens.params
        tr = self._loss_and_error(arch, params, rows, self.x_train, self.xb_train, self.y_train)
        te = self._loss_and_error(arch, params, rows, self.x_test, self.xb_test, self.y_test)
        clean = None
        if any(self.noisy[m] for m in ens.live):
            clean = self._loss_and_error(
                arch, params, rows, self.x_train, self.xb_train, self.y_clean
            )[1]
        x = self.x_train[rows] if self.xb_train else self.x_train
        fns = ensemble_loss_fns(
            arch, self.loss_fn, x, self.y_train[rows], chunk_size=self.chunk_size,
            x_batched=self.xb_train, y_batched=True,
        )  # fmt: skip
        _, g = ensemble_gradient(fns, params)
        gsq = member_sq_norms(g).sqrt().tolist()
        wnorm = member_sq_norms(params).sqrt().tolist()
        init_live = tuple(p0[rows.to(p0.device)] for p0 in init)
        dist = member_sq_norms([p - p0 for p, p0 in zip(params, init_live)]).sqrt().tolist()
        out = {}
        for j, m in enumerate(ens.live):
            values = {"train_loss": tr[0][j], "test_loss": te[0][j]}
            if self.classes:
                values.update(train_error=tr[1][j], test_error=te[1][j])
            values.update(grad_norm_sq=gsq[j] ** 2, weight_norm=wnorm[j], dist_from_init=dist[j])
            if clean is not None and self.noisy[m]:
                values["train_error_clean"] = clean[j]
            out[m] = values
        return out


def train_runs(configs: Sequence[RunConfig]) -> list[RunResult]:
    """Train runs that share :func:`group_key` as one ensemble; one
    :class:`~implicit_reg.engine.train.RunResult` per config, as :func:`implicit_reg.engine.train.run`
    would return it (``run`` writes nothing here either; the sweep's store does).

    Raises ``ValueError`` if the configs cannot be vectorized together.
    """
    from ..workloads.models import count_params

    configs = list(configs)
    if not configs:
        return []
    keys = {group_key(c) for c in configs}
    if len(keys) != 1 or None in keys:
        raise ValueError(
            "these runs cannot share an ensemble: they must agree on every field except "
            f"{', '.join(MEMBER_FIELDS)}, and not ask for checkpoints"
        )
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    cfg = configs[0]
    members = []
    for c in configs:
        data = load_run_data(c)
        model = build_run_model(c, data)
        init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        members.append(_Member(config=c, data=data, model=model, init_state=init_state))
    n = members[0].data.n_train
    if any(m.data.n_train != n for m in members):
        raise ValueError("the members' training sets differ in size")
    loss_fn = make_loss(cfg.loss, num_classes=members[0].data.num_classes)
    evaluate = _Evaluator(members, loss_fn, cfg.chunk_size)
    ens = VectorizedEnsemble(
        [m.model for m in members], loss_fn, evaluate.x_train, evaluate.y_train,
        optimizer=update_rule(cfg), lr=[c.lr for c in configs],
        coeff=[c.egr_coeff for c in configs], momentum=cfg.momentum, nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay, egr_method=cfg.egr_method, batch_size=cfg.batch_size,
        seeds=[c.seed for c in configs], x_per_member=evaluate.xb_train, y_per_member=True,
        chunk_size=cfg.chunk_size, max_loss=[c.max_loss for c in configs],
    )  # fmt: skip
    init = tuple(p.clone() for p in ens.params)
    budget, per_epoch = step_budget(cfg, n)
    probe_names = [p for p in cfg.probes if p not in BASE_METRICS]

    def probe(i: int, step: int) -> None:
        member = members[i]
        member.last_probe = step
        if not probe_names or member.error is not None:
            return
        from ..probes import run_probes

        ens.load_member(i, member.model)
        try:
            values = run_probes(
                probe_names, member.model, loss_fn, member.data.train,
                chunk_size=cfg.chunk_size, seed=member.config.seed,
                init_state=member.init_state, **(cfg.probe_options or {}),
            )  # fmt: skip
        except Exception:  # this run fails, as it would alone; the others go on
            member.error = traceback.format_exc()
            member.status = member.stop_reason = "failed"
            if i in ens.live:
                ens.retire([i])
            return
        member.log(step, values)

    def diverge(i: int, step: int, loss: float) -> None:
        member = members[i]
        member.status = member.stop_reason = "diverged"
        member.diverged_at, member.diverged_loss = step, loss

    metrics = evaluate(ens, init)
    stopped = []
    for i, values in metrics.items():
        members[i].log(0, values)
        if cfg.probe_every:
            probe(i, 0)
        c = members[i].config
        if members[i].status == "failed":
            continue
        if _bad(values["train_loss"], c.max_loss):
            diverge(i, 0, values["train_loss"])
            stopped.append(i)
        elif c.target_train_loss is not None and values["train_loss"] <= c.target_train_loss:
            members[i].stop_reason = "target_train_loss"
            stopped.append(i)
    ens.retire([i for i in stopped if i in ens.live])

    step = 0
    while ens.live and step < budget:
        rows = ens.step()
        step += 1
        reached = set()
        for i, row in rows.items():
            if ens.diverged_at[i] is not None:
                diverge(i, step - 1, row["loss"])  # the step whose loss it was
                continue
            members[i].step = step
            c = members[i].config
            if cfg.batch_size is None and c.target_train_loss is not None:
                if row["loss"] <= c.target_train_loss:
                    reached.add(i)
        due = step % cfg.eval_every == 0 or step == budget
        to_eval = [i for i in ens.live if due or i in reached]
        stopped = []
        if to_eval:
            metrics = evaluate(ens, init)
            for i in to_eval:
                values = metrics[i]
                members[i].log(step, values)
                c = members[i].config
                if _bad(values["train_loss"], c.max_loss):
                    diverge(i, step, values["train_loss"])
                    stopped.append(i)
                elif c.target_train_loss is not None and values["train_loss"] <= c.target_train_loss:
                    reached.add(i)
        if stopped:
            ens.retire(stopped)
        if cfg.probe_every and step % cfg.probe_every == 0:
            for i in list(ens.live):
                probe(i, step)
        done = [i for i in reached if i in ens.live]
        for i in done:
            members[i].stop_reason = "target_train_loss"
        if done:
            ens.retire(done)

    elapsed = time.perf_counter() - started
    finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = {
        **versions(),
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "started_at": started_at,
        "finished_at": finished_at,
        "ensemble": {"members": len(members), "wall_time_s": elapsed},
    }
    results = []
    for i, member in enumerate(members):
        results.append(_result(member, i, ens, probe, per_epoch, n, count_params, meta))
    share = (time.perf_counter() - started) / len(members)
    for r in results:
        r.summary["wall_time_s"] = share
    return results


def _result(member: _Member, i, ens, probe, per_epoch, n, count_params, meta) -> RunResult:
    """The member's RunResult, with the summary ``train._train`` (or ``train.run``, for a
    failure) writes."""
    config = member.config
    if member.status == "complete" and member.last_probe != member.step:
        probe(i, member.step)  # the probes always run at the end
    if member.status == "failed":
        summary = {
            "config_hash": config.config_hash(),
            "status": "failed",
            "stop_reason": "failed",
            "error": member.error,
        }
        return RunResult(config=config, summary=summary, meta=dict(meta))
    final: dict[str, Any] = {}
    if member.status == "complete":
        for r in member.history:  # the last value of every metric
            final[r["metric"]] = r["value"]
    else:
        final = {"train_loss": float(member.diverged_loss)}
    summary = {
        "config_hash": config.config_hash(),
        "status": member.status,
        "stop_reason": member.stop_reason,
        "steps_done": member.step,
        "epochs_done": member.step / per_epoch,
        "diverged_at": member.diverged_at,
        "n_params": count_params(member.model),
        "n_train": n,
        "num_classes": member.data.num_classes,
        "output_dim": member.data.output_dim,
        "error": None,
        **final,
    }
    return RunResult(config=config, summary=summary, history=member.history, meta=dict(meta))
