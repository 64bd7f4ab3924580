"""The runs of ``emc-across-n`` and ``label-noise-dose`` (issue 20, items 2 and 3).

Kept apart from the analyses so that the configs, whose hashes name the runs in the
store, never change when an analysis does. Both use ``double-descent-width``'s MNIST-1D
recipe (Greydanus 2020; Nakkiran et al. 2019): MLP 40 → w → w → 10 (ReLU),
cross-entropy, SGD lr 0.01, momentum 0.9, batch 100, no probes.

- ``emc-across-n``: widths × training-set sizes n (nested subsets of the 8,000-sample
  pool ``mnist1d_xl``, the same 12,000 test samples for every n), 15% label noise, two
  budgets: a fixed number of epochs (a larger n gets proportionally more steps) and a
  fixed number of steps (the same for every n; at the n where both budgets are equal the
  step arm's run *is* the epoch arm's run).
- ``label-noise-dose``: widths × label noise at ``double-descent-width``'s ``small``
  training (``mnist1d_large``, n = 4,000, 500 epochs, evaluated every 200 steps); at the
  widths where that experiment ran no probes and no dense evaluation the configs are its
  configs, hash for hash.

A run's config depends only on (width, n or noise, seed, arm): the plan adds seeds and
arms in phases (:func:`emc_phases`, :func:`dose_phases`) so that the most informative
runs finish first when a session ends mid-sweep.
"""

from __future__ import annotations

import dataclasses
import math

from implicit_reg.engine.config import RunConfig

__all__ = [
    "EmcPlan",
    "DosePlan",
    "EMC_PLANS",
    "DOSE_PLANS",
    "emc_config",
    "dose_config",
    "emc_phases",
    "dose_phases",
    "dose_order",
]


@dataclasses.dataclass(frozen=True)
class EmcPlan:
    """Widths × n × seeds, 15% label noise, an epoch arm and a step arm."""

    widths: tuple[int, ...]
    n_trains: tuple[int, ...]
    seeds: int  # seeds of the first phase; ``extra_seeds`` more come last
    extra_seeds: int = 0
    label_noise: float = 0.15
    epochs: int = 500  # epoch arm: steps = epochs · ⌈n / batch⌉
    steps: int | None = 20_000  # step arm (None: no step arm); 20,000 = 500 epochs at n = 4,000
    evals: int = 20  # evaluations per run, evenly spaced (history for EMC over training time)
    dataset: str = "mnist1d_xl"
    n_test: int | None = None  # None: all 12,000 test samples
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    depth: int = 2
    checkpoint_every: int | None = 2_000  # steps; a killed ensemble resumes from here

    def __post_init__(self) -> None:
        if not self.widths or not self.n_trains or self.seeds < 1 or self.extra_seeds < 0:
            raise ValueError(f"an EmcPlan needs widths, n_trains and seeds >= 1, got {self}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")

    def epoch_steps(self, n: int) -> int:
        """Optimizer steps of the epoch arm at n: epochs · ⌈n / batch⌉."""
        return self.epochs * math.ceil(n / self.batch_size)


@dataclasses.dataclass(frozen=True)
class DosePlan:
    """Widths × label noise × seeds at double-descent-width's ``small`` MNIST-1D training."""

    widths: tuple[int, ...]
    noises: tuple[float, ...]
    seeds: int
    extra_seeds: int = 0
    # noise levels whose runs double-descent-width already holds (its runs.csv): trained
    # last, if at all (the analysis reads them from there)
    reused_noises: tuple[float, ...] = (0.0, 0.15)
    dataset: str = "mnist1d_large"
    n_train: int = 4000
    n_test: int | None = None
    epochs: int = 500
    eval_every: int = 200
    batch_size: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    depth: int = 2
    checkpoint_every: int | None = 4_000

    def __post_init__(self) -> None:
        if not self.widths or not self.noises or self.seeds < 1 or self.extra_seeds < 0:
            raise ValueError(f"a DosePlan needs widths, noises and seeds >= 1, got {self}")
        bad = [p for p in self.noises if not 0 <= p < 1]
        if bad:
            raise ValueError(f"label noise must be in [0, 1), got {bad}")


EMC_PLANS = {
    "smoke": EmcPlan(
        widths=(4, 16), n_trains=(64, 128), seeds=1, epochs=2, steps=4, evals=2,
        dataset="mnist1d", n_test=64, batch_size=32, checkpoint_every=None,
    ),
    # issue 20, item 2: widths around the n = 4,000 threshold (double-descent-width: the
    # training error first reaches 0 at w = 62), n from 1,000 to 8,000
    "small": EmcPlan(
        widths=(21, 28, 36, 47, 62, 80), n_trains=(1000, 2000, 3000, 4000, 6000, 8000),
        seeds=3, extra_seeds=2,
    ),
    "full": EmcPlan(
        widths=(21, 28, 36, 47, 62, 80), n_trains=(1000, 2000, 3000, 4000, 6000, 8000),
        seeds=5,
    ),
}  # fmt: skip

DOSE_PLANS = {
    "smoke": DosePlan(
        widths=(4, 16), noises=(0.0, 0.3), seeds=1, reused_noises=(), dataset="mnist1d",
        n_train=64, n_test=64, epochs=2, eval_every=1, batch_size=32, checkpoint_every=None,
    ),
    # issue 20, item 3: double-descent-width's MNIST-1D widths from 13 to 136 (its
    # threshold region; 30% noise needs more units to fit than 15%)
    "small": DosePlan(
        widths=(13, 16, 21, 28, 36, 47, 62, 80, 104, 136),
        noises=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), seeds=3, extra_seeds=2,
    ),
    "full": DosePlan(
        widths=(13, 16, 21, 28, 36, 47, 62, 80, 104, 136),
        noises=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), seeds=5, reused_noises=(),
    ),
}  # fmt: skip


def emc_config(plan: EmcPlan, width: int, n: int, seed: int, arm: str) -> RunConfig:
    """The run at (width, n, seed) of ``arm`` ("epochs" or "steps").

    The step arm's run at an n where both budgets give the same number of steps is the
    epoch arm's run (same config, same hash)."""
    if arm not in ("epochs", "steps"):
        raise ValueError(f"arm must be 'epochs' or 'steps', got {arm!r}")
    if arm == "steps" and plan.steps is None:
        raise ValueError("this plan has no step arm (steps=None)")
    total = plan.epoch_steps(n)
    if arm == "steps" and plan.steps != total:
        budget = {"steps": plan.steps, "epochs": None}
        total = plan.steps
    else:
        budget = {"steps": None, "epochs": plan.epochs}
    return RunConfig(
        model="mlp", width=width, depth=plan.depth, activation="relu",
        dataset=plan.dataset, n_train=n, n_test=plan.n_test, label_noise=plan.label_noise,
        loss="cross_entropy", optimizer="sgd", lr=plan.lr, momentum=plan.momentum,
        batch_size=plan.batch_size, eval_every=max(1, total // plan.evals), probes=(),
        seed=seed, checkpoint_every=plan.checkpoint_every, **budget,
    )  # fmt: skip


def dose_config(plan: DosePlan, width: int, noise: float, seed: int) -> RunConfig:
    """The run at (width, label noise, seed): double-descent-width's ``small`` MNIST-1D
    config without probes or dense evaluation."""
    return RunConfig(
        model="mlp", width=width, depth=plan.depth, activation="relu",
        dataset=plan.dataset, n_train=plan.n_train, n_test=plan.n_test, label_noise=noise,
        loss="cross_entropy", optimizer="sgd", lr=plan.lr, momentum=plan.momentum,
        batch_size=plan.batch_size, steps=None, epochs=plan.epochs,
        eval_every=plan.eval_every, probes=(), seed=seed,
        checkpoint_every=plan.checkpoint_every,
    )  # fmt: skip


def emc_phases(plan: EmcPlan) -> list[tuple[str, list[RunConfig]]]:
    """The runs in the order they should finish: the epoch arm at the first seeds, then
    at the extra seeds (they test the location rule the first seeds suggested,
    ``emc_across_n.HOLDOUT_FROM``), then the step arm at the first and the extra seeds
    (duplicates dropped)."""
    first, extra = range(plan.seeds), range(plan.seeds, plan.seeds + plan.extra_seeds)
    arms = ("epochs", "steps") if plan.steps is not None else ("epochs",)
    phases = []
    for arm in arms:
        for seeds, tag in ((first, "first seeds"), (extra, "extra seeds")):
            cfgs = [
                emc_config(plan, w, n, s, arm)
                for n in plan.n_trains
                for w in plan.widths
                for s in seeds
            ]
            if cfgs:
                phases.append((f"{arm} arm, {tag}", cfgs))
    return _dedupe(phases)


def dose_phases(plan: DosePlan) -> list[tuple[str, list[RunConfig]]]:
    """One phase per new noise level at the first seeds, most informative first (the
    extremes of the dose range, then the middle: :func:`dose_order`), then the extra
    seeds, then the noise levels that double-descent-width holds (retrained in this
    sweep's own store, last). A level finished is a whole width curve: a session that
    ends mid-plan leaves complete levels, not every level without its widest widths."""
    new = dose_order([p for p in plan.noises if p not in plan.reused_noises], plan.reused_noises)
    old = [p for p in plan.noises if p in plan.reused_noises]
    first, extra = range(plan.seeds), range(plan.seeds, plan.seeds + plan.extra_seeds)

    def level(p: float, seeds: range) -> list[RunConfig]:
        return [dose_config(plan, w, p, s) for w in plan.widths for s in seeds]

    phases = [(f"{p:.0%} noise, first seeds", level(p, first)) for p in new]
    phases += [(f"{p:.0%} noise, extra seeds", level(p, extra)) for p in new]
    phases += [(f"{p:.0%} noise (stored), first seeds", level(p, first)) for p in old]
    phases += [(f"{p:.0%} noise (stored), extra seeds", level(p, extra)) for p in old]
    return _dedupe([(t, c) for t, c in phases if c])


def dose_order(noises: list[float], have: tuple[float, ...] = ()) -> list[float]:
    """``noises`` ordered so that each next level is the one farthest from every level
    already held (``have``, then those before it): the dose range is spanned first and
    filled in after (with 0% and 15% held: 30%, then 20%, 5% and 10%; ties go to the
    higher noise)."""
    held, out, left = list(have), [], sorted(noises)
    while left:
        nxt = max(left, key=lambda p: (min((abs(p - q) for q in held), default=p), p))
        out.append(nxt)
        held.append(nxt)
        left.remove(nxt)
    return out


def _dedupe(phases: list[tuple[str, list[RunConfig]]]) -> list[tuple[str, list[RunConfig]]]:
    seen: set[str] = set()
    out = []
    for tag, cfgs in phases:
        keep = []
        for c in cfgs:
            h = c.config_hash()
            if h not in seen:
                seen.add(h)
                keep.append(c)
        if keep:
            out.append((tag, keep))
    return out


def train_phases(
    phases: list[tuple[str, list[RunConfig]]],
    directory,
    *,
    only: int | None = None,
    pack: bool = False,
) -> int:
    """Train the phases one after the other into the sweep directory ``directory``
    (resumable: finished runs are skipped; a killed ensemble continues from its last
    mid-run checkpoint), one process, one torch thread; a line per phase on stdout.
    ``only``: train phase ``only`` (0-based) alone. ``pack``: cut each group into width
    packs by :data:`PACK_COST` (:func:`_packed`); else one job per group (:func:`_by_group`).
    Returns the number of runs trained now (the others were in the store).

    These backends, not the engine's planner (``plan_sweep``: :data:`STEP_COST` on
    :func:`~implicit_reg.engine.plan.run_step_flops`), cut the jobs: the planner cuts
    6 of the 16 phases of the two ``small`` plans differently (it packs emc's n = 3k/4k
    groups 15 + 3 instead of 18, and dose's extra-seed levels 14 + 6 instead of 14 + 4 + 2),
    and a float32 member padded to another width is not guaranteed to round the same (not
    measured), so the committed runs might not retrain bit for bit."""
    import time
    from pathlib import Path

    import torch

    from implicit_reg.engine.sweep import run_sweep

    torch.set_num_threads(1)
    trained = 0
    for i, (tag, cfgs) in enumerate(phases):
        if only is not None and i != only:
            continue
        t0 = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] phase {i} ({tag}): {len(cfgs)} runs", flush=True)
        backend = _packed if pack else _by_group
        report = run_sweep(cfgs, Path(directory), progress=False, backend=backend)
        print(f"  {report.line()} in {time.time() - t0:.0f} s", flush=True)
        trained += report.done
    return trained


#: members per ensemble job
MAX_MEMBERS = 64


def _train_groups(configs, store, cut):
    """Train ``configs`` as a sweep backend: the runs that may share an ensemble
    (:func:`~implicit_reg.engine.plan.group_key`), sorted by width, cut into jobs by
    ``cut(group)``; a job of one run, and runs that share no ensemble, train alone."""
    from implicit_reg.engine.plan import group_key
    from implicit_reg.engine.sweep import serial_backend
    from implicit_reg.engine.train import train_runs

    groups: dict[str | None, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(group_key(c), []).append(c)
    for key, group in groups.items():
        if key is None:
            yield from serial_backend(group, store)
            continue
        group = sorted(group, key=lambda c: (c.width, c.seed, c.label_noise))
        for job in cut(group):
            if len(job) == 1:
                yield from serial_backend(job, store)
            else:
                yield from train_runs(job, store=store)


def _split(runs: list[RunConfig]) -> list[list[RunConfig]]:
    """``runs`` in equal consecutive jobs of at most :data:`MAX_MEMBERS`."""
    size = math.ceil(len(runs) / math.ceil(len(runs) / MAX_MEMBERS))
    return [runs[i : i + size] for i in range(0, len(runs), size)]


def _by_group(configs, store=None):
    """A sweep backend: each ensemble group cut into jobs of at most :data:`MAX_MEMBERS`,
    each trained by :func:`~implicit_reg.engine.train.train_runs` (every width of a job
    padded to its widest, exactly inert). On 2 loaded cores one 18-member job of all six
    widths took 22.5-25 ms per step, six 3-member jobs 29.6 ms (n = 4,000, load 11)."""
    yield from _train_groups(configs, store, _split)


#: the per-step cost model of a packed job measured here (n = 4,000, batch 100, 2 loaded
#: cores, load 11): one 18-member job of widths 21-80 took 22.5 ms per step, six 3-member
#: jobs 29.6 ms, which gives about 3.5 ms per job and 0.5 ms per forward MFLOP of the
#: members' padded models (the engine's STEP_COST, fitted on an idle machine, packs less)
PACK_COST = {"job": 3.5e-3, "member": 0.0, "flop": 0.5e-9}


def _packed(configs, store=None):
    """A sweep backend: each ensemble group cut into width packs by
    :func:`~implicit_reg.engine.plan.pack_widths` with :data:`PACK_COST` (at most
    :data:`MAX_MEMBERS` each), trained narrowest first."""
    from implicit_reg.engine.plan import pack_widths, step_flops

    def cut(group):
        flops = {c.width: step_flops(c) for c in group}
        for pack in pack_widths(group, flops, cost=PACK_COST):
            yield from _split(pack)

    yield from _train_groups(configs, store, cut)


def main(argv: list[str] | None = None) -> None:
    """``python -m implicit_reg.experiments._emc_plan {emc,dose} SCALE DIR [--phase K]``."""
    import argparse

    parser = argparse.ArgumentParser(
        description="train the runs of emc-across-n or label-noise-dose"
    )
    parser.add_argument("which", choices=("emc", "dose"))
    parser.add_argument("scale", choices=sorted(EMC_PLANS))
    parser.add_argument("directory")
    parser.add_argument("--phase", type=int, default=None)
    args = parser.parse_args(argv)
    if args.which == "emc":
        phases = emc_phases(EMC_PLANS[args.scale])
    else:
        phases = dose_phases(DOSE_PLANS[args.scale])
    # the emc runs train one job per group (as they were started); the dose groups span
    # widths 13-136, where padding everything to the widest would double the work
    train_phases(phases, args.directory, only=args.phase, pack=args.which == "dose")


if __name__ == "__main__":
    main()
