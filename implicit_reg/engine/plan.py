"""Sweep planning: which runs train together as one ensemble, and which widths share a pack.

A sweep over learning rate, seed, label noise or EGR coefficient trains many
runs of one architecture on one data set. :func:`plan_sweep` groups the runs
whose configs agree on every field except :data:`MEMBER_FIELDS` (model,
depth, activation, data set, sizes, task, loss, update rule, batch size,
budget, evaluation and probe schedule, dtype, device, chunk size, …); each
group of two or more is trained as one ensemble
(:func:`implicit_reg.engine.train.train_runs`), the rest one by one.

Runs that the fast ensemble trains (:data:`FAST_MODELS` under GD or SGD:
:class:`~implicit_reg.ensemble.batched.BatchedEnsemble`, at batched-matmul
speed) may also differ in :data:`FAST_MEMBER_FIELDS`: momentum, weight decay
and width. Runs of different widths are packed (each member padded to the
widest of its pack, exactly inert padding): :func:`pack_widths` splits a
group, sorted by width, into packs where padding costs less than the
per-step overhead of one more job, by the cost model of :data:`STEP_COST`
(measured by ``benchmarks/bench_sweep.py``).

Not vectorized (trained serially with no user action): runs with
``checkpoint=True`` (the optimizer state is per run), runs that set a field
outside :data:`SUPPORTED_FIELDS` (``egr_micro_batch``, ``lr_decay_every``),
runs of optimizer ``"adam"`` outside the fast ensemble, models with running statistics or dropout
(:func:`~implicit_reg.ensemble.vectorized.check_vectorizable`), groups of one, and,
on CPU, ``vmap`` groups whose forward pass costs more than :data:`CPU_MAX_STEP_FLOPS`
per member and step, where one run at a time is faster (the fast ensemble has
no such limit within the sizes measured: see :data:`FAST_MAX_STEP_FLOPS`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import RunConfig
from .workload import load_run_data

__all__ = [
    "MEMBER_FIELDS",
    "FAST_MODELS",
    "FAST_MEMBER_FIELDS",
    "FAST_MAX_STEP_FLOPS",
    "STEP_COST",
    "is_fast",
    "pack_widths",
    "DEFAULT_MAX_MEMBERS",
    "SUPPORTED_FIELDS",
    "CPU_MAX_STEP_FLOPS",
    "step_flops",
    "run_step_flops",
    "SweepPlan",
    "group_key",
    "plan_sweep",
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


#: the config fields whose meaning the ensemble stepper reproduces; a run that sets
#: any other field (``egr_micro_batch``, ``lr_decay_every``, or a field added later)
#: away from its default trains serially, so a new training option is never ignored
SUPPORTED_FIELDS = frozenset(
    """model width depth activation model_options init_from dataset n_train n_test label_noise task data_seed
    loss optimizer lr momentum nesterov weight_decay egr_coeff egr_method batch_size
    steps epochs target_train_loss max_loss eval_every eval_at error_every probes probe_every probe_options
    adam_beta1 adam_beta2 adam_eps
    seed device dtype chunk_size checkpoint checkpoint_every keep_checkpoints save_params""".split()
)


#: the config models whose ensembles train stacked (:mod:`implicit_reg.ensemble.stacked`)
FAST_MODELS = ("mlp", "rf_relu", "rf_fourier", "cnn")
#: fields that may differ, besides :data:`MEMBER_FIELDS`, between members of a fast ensemble
#: (``width`` only where widths are packed: not the CNN, whose packs are of one width)
FAST_MEMBER_FIELDS = ("momentum", "weight_decay", "width")
#: the fast models whose members of different widths are packed (zero-padded) together
PACKED_MODELS = ("mlp", "rf_relu", "rf_fourier")
#: per fast model, the forward FLOPs per member and step above which its runs train one at a
#: time on CPU (default :data:`FAST_MAX_STEP_FLOPS`). The CNN (``benchmarks/bench_cnn.py``,
#: 6 members, batch 128, Adam, one thread, load 7): the grouped-convolution ensemble per
#: member against one run at a time 0.58x at k = 1, 0.83x at k = 2, 0.91x at k = 4,
#: 1.17x at k = 8: the crossover sits between k = 4 and 8 (1.8e8 and 7.1e8 FLOPs).
FAST_MODEL_MAX_STEP_FLOPS = {"cnn": 3e8}
#: On CPU, fast (stacked) groups above this many forward FLOPs per member and step train one
#: run at a time. ``benchmarks/bench_sweep.py`` (one thread, load 11 on 2 cores) measured the
#: fast ensemble per member against the serial engine at 0.25-0.89x over the MNIST-1D sweep's
#: widths (up to 21 MFLOP: w = 300, batch 100), 0.99x at w = 600 (80 MFLOP) and 1.09x at
#: w = 1,200 (300 MFLOP; 1.04x in a second run): the crossover is near w = 600, where the
#: limit sits.
FAST_MAX_STEP_FLOPS = 80_000_000
#: The cost of one optimizer step of a fast job, in seconds, on one CPU thread:
#: ``job`` per job and step (dispatch, gather, loss, update), ``member`` per member and
#: step beyond its FLOPs, and ``flop`` per forward FLOP of a member's (padded) model and
#: step (forward and backward). Least-squares fit of 6-member steps over the MNIST-1D
#: sweep's 19 widths by ``benchmarks/bench_sweep.py`` (load average 10 on 2 cores, which
#: inflates both; their ratio, about 1.2e7 FLOP of padding per job and step, decides packs).
STEP_COST = {"job": 1.7e-3, "member": 0.0, "flop": 1.43e-10}


def is_fast(config: RunConfig) -> bool:
    """Whether ``config``'s ensemble trains stacked: a :data:`FAST_MODELS` model under GD or SGD."""
    from ..ensemble.batched import FAST_RULES
    from .optimizers import update_rule

    return config.model in FAST_MODELS and update_rule(config) in FAST_RULES


def group_key(config: RunConfig) -> str | None:
    """The fields a run must share with the other members of its ensemble, as a
    canonical string; None when the run is trained serially: ``checkpoint=True``, or
    a non-default field outside :data:`SUPPORTED_FIELDS` (``egr_micro_batch``, whose
    micro-batch penalty the ensemble step does not compute). A fast run's key leaves out
    :data:`FAST_MEMBER_FIELDS` and names its update rule instead."""
    from .optimizers import update_rule

    values = config.to_dict()
    defaults = RunConfig.__dataclass_fields__
    unsupported = [
        k for k, v in values.items()
        if k not in SUPPORTED_FIELDS and v != _default(defaults[k])
    ]  # fmt: skip
    fast = is_fast(config)
    if config.checkpoint or unsupported or (update_rule(config) == "adam" and not fast):
        return None  # Adam: only the fast ensemble has its step
    free = MEMBER_FIELDS + (FAST_MEMBER_FIELDS if fast else ())
    if fast and config.model not in PACKED_MODELS:
        free = tuple(f for f in free if f != "width")
    shared = {k: v for k, v in values.items() if k not in free}
    shared["update_rule"] = update_rule(config)
    return json.dumps(shared, sort_keys=True)


def pack_widths(
    configs: Sequence[RunConfig], flops: dict[int, float], *, cost: dict[str, float] = STEP_COST
) -> list[list[RunConfig]]:
    """Split one fast group into packs of consecutive widths (sorted ascending).

    With the cost per step of a job ``J + Σ_m (c_m + c_f·F(w_pack))`` (:data:`STEP_COST`;
    F(w) = ``flops[w]``, a member's forward FLOPs per step at width w, evaluations
    amortized: :func:`run_step_flops`), the members
    already in a pack, padded from its widest width w to the next width w' > w, cost
    ``n·c_f·(F(w') − F(w))`` more per step; the next width joins the pack when that is
    at most J, the per-step cost of training it as a job of its own."""
    by_width: dict[int, list[RunConfig]] = {}
    for c in sorted(configs, key=lambda c: c.width):
        by_width.setdefault(c.width, []).append(c)
    packs: list[list[RunConfig]] = []
    top = None
    for w, members in by_width.items():
        if packs and len(packs[-1]) * cost["flop"] * (flops[w] - flops[top]) <= cost["job"]:
            packs[-1].extend(members)
        else:
            packs.append(list(members))
        top = w
    return packs


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
    or the training-set size) x the model's FLOPs per sample: for an MLP
    (:func:`implicit_reg.probes.rop.mlp_plan`) 2·in·out per linear layer, what
    ``torch.utils.flop_counter`` counts for it; for other models counted by
    ``torch.utils.flop_counter`` on the meta device (no computation; its first use in a
    process imports ``torch._dynamo``, about a second, which the MLPs of a sweep's
    planning skip)."""
    from ..probes.rop import MLPPlan, mlp_plan
    from ..workloads.models import build_model

    data = load_run_data(config)
    model = build_model(**config.model_spec(data.input_dim, data.output_dim)).to("meta")
    rows = data.n_train if config.batch_size is None else min(config.batch_size, data.n_train)
    plan = mlp_plan(model, "eval")
    if isinstance(plan, MLPPlan):
        shapes = {k: p.shape for k, p in model.named_parameters()}
        return rows * sum(2 * shapes[s[1]].numel() for s in plan.steps if s[0] == "linear")
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.empty(1, *data.x_train.shape[1:], device="meta")
    with FlopCounterMode(display=False) as counter:
        model(sample)
    return rows * int(counter.get_total_flops())


def run_step_flops(config: RunConfig) -> float:
    """:func:`step_flops` with the run's evaluations amortized over its steps, the FLOPs
    the planner's cost model (:data:`STEP_COST`) charges per member and step.

    An evaluation runs the forward pass over the training set twice (loss and error;
    the gradient) and the test set once, and a backward pass over the training set
    (about two forward passes): 4·n_train + n_test rows every ``eval_every`` steps,
    against 3 forward-pass equivalents (forward and backward) of the step's rows."""
    data = load_run_data(config)
    rows = data.n_train if config.batch_size is None else min(config.batch_size, data.n_train)
    eval_rows = (4 * data.n_train + len(data.x_test)) / config.eval_every
    if config.error_every:  # the light ones: the two forward passes, no gradient
        eval_rows += (data.n_train + len(data.x_test)) / config.error_every
    return step_flops(config) * (1 + eval_rows / (3 * rows))


def plan_sweep(
    configs: Sequence[RunConfig],
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_step_flops: float | None = CPU_MAX_STEP_FLOPS,
    max_fast_step_flops: float | None = FAST_MAX_STEP_FLOPS,
) -> SweepPlan:
    """Group the runs that can be vectorized together; the others run alone.

    Groups keep the order in which their first run appears; a group larger
    than ``max_members`` is split into near-equal ensembles. A fast group
    (:func:`is_fast`) is split into width packs (:func:`pack_widths`); a pack of
    one run trains alone. On CPU, a ``vmap`` group whose :func:`step_flops`
    exceeds ``max_step_flops``, and the runs of a fast group whose step_flops
    exceeds ``max_fast_step_flops``, run alone (None: no limit; other devices:
    no limit)."""
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
        if is_fast(group[0]):
            flops, cost = {}, {}
            for w in {c.width for c in group}:
                try:
                    flops[w] = step_flops(next(c for c in group if c.width == w))
                    cost[w] = run_step_flops(next(c for c in group if c.width == w))
                except Exception:  # noqa: BLE001 - a model that cannot be built: its runs
                    flops[w] = math.inf  # train alone and fail there, with their traceback
            limit = math.inf if max_fast_step_flops is None else max_fast_step_flops
            if max_fast_step_flops == FAST_MAX_STEP_FLOPS:
                limit = FAST_MODEL_MAX_STEP_FLOPS.get(group[0].model, limit)
            heavy = [
                c for c in group if flops[c.width] == math.inf or (cpu and flops[c.width] > limit)
            ]
            plan.singles.extend(heavy)
            plan.heavy += len(heavy)
            light = [c for c in group if c not in heavy]
            for pack in pack_widths(light, cost):
                if len(pack) == 1:
                    plan.singles.extend(pack)
                    continue
                plan.groups.extend(_split(pack, max_members))
            continue
        if cpu and max_step_flops is not None and step_flops(group[0]) > max_step_flops:
            plan.singles.extend(group)
            plan.heavy += len(group)
            continue
        plan.groups.extend(_split(group, max_members))
    return plan


def _split(group: list[RunConfig], max_members: int) -> list[list[RunConfig]]:
    """``group`` in near-equal consecutive parts of at most ``max_members``."""
    parts = math.ceil(len(group) / max_members)
    size = math.ceil(len(group) / parts)
    return [group[i : i + size] for i in range(0, len(group), size)]
