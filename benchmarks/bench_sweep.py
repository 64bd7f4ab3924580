"""The MNIST-1D model-wise sweep, per width: engine, plain loop, ensembles, packs, hand-written.

Setting (issue 19): the MLP 40→w→w→10 of ``double-descent-width`` (its ``small``
scale: widths read from its config, n = 4,000, batch 100, SGD lr 0.01, momentum
0.9, float32), 6 members per width (3 seeds × noisy and clean labels), one torch
thread. Columns, in ms per optimizer step per member (per run for the serial ones):

- ``engine``: the engine's serial stepper (``SerialStepper.step``), losses read
  every 32 steps as the loop does;
- ``plain``: a plain torch loop (``nn`` model, ``torch.optim.SGD``, ``x[idx]``);
- ``generic``: the ``vmap(functional_call)`` ensemble (``VectorizedEnsemble``);
- ``fast``: the engine's ensemble stepper (``EnsembleStepper``: stacked
  ``baddbmm``, ``_foreach`` SGD, ``idx[M, B]``), 6 members of one width;
- ``packed``: the jobs ``run_sweep(workers=2)`` makes of the whole sweep (``plan_jobs``:
  ensembles, widths packed),
  each job's step time divided by its members, shown at each of its widths;
- ``hand``: the hand-written batched matmul (stacked ``baddbmm``, one
  ``cross_entropy``, ``torch.optim.SGD(foreach=True)`` on the stacked tensors).

Each method runs ``--steps`` steps after a warm-up, in ``--reps`` interleaved
rounds; the minimum over rounds is kept (the machine is shared: the load
average is printed). Ratios are to ``hand`` from the same run.

The projected wall time of the whole sweep (19 widths × 3 seeds × noisy and
clean × 500 epochs = 20,000 steps per run, with its full evaluations every 200
steps and, at the three dense widths, light evaluations of the losses and errors
every 40 steps, ``error_every``) adds measured evaluation costs and schedules
the jobs longest first on 2 workers of one thread each; the final probes at
every third width are not included. It is also projected under the schedule
before light evaluations (full evaluations every 40 steps at the dense widths),
from the same measurements. Every time is CPU seconds of this one-thread process
(``time.process_time``): on a machine shared with other work, wall time measures
the neighbours; a projection in CPU seconds is the wall time of an idle machine
with one thread per worker.

    .venv/bin/python benchmarks/bench_sweep.py            # all widths (a few minutes)
    .venv/bin/python benchmarks/bench_sweep.py --quick    # 3 widths, few steps (smoke)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from implicit_reg.engine.loop import step_budget
from implicit_reg.engine.steppers import EnsembleStepper, SerialStepper, evaluate
from implicit_reg.engine.sweep import run_sweep
from implicit_reg.engine.vectorized_sweep import makespan, plan_jobs
from implicit_reg.engine.workload import build_run_model, load_run_data, run_loss
from implicit_reg.ensemble.vectorized import VectorizedEnsemble
from implicit_reg.experiments.double_descent_width import CONFIGS, Config

SYNC = 32  # the loop reads the losses every 32 steps


def sweep_configs(cfg: Config, widths) -> list:
    """The MNIST-1D runs of the sweep (noisy and clean) at ``widths``."""
    out = []
    for key in ("mnist1d", "mnist1d_clean"):
        setting, noise = cfg.setting(key), cfg.noise(key)
        out += [setting.run_config(w, s, noise) for w in widths for s in range(cfg.seeds)]
    return out


def timed(fn, steps: int, warmup: int = 5) -> float:
    """CPU seconds per call of ``fn`` over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    start = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - start) / steps


def engine_step(config):
    data = load_run_data(config)
    stepper = SerialStepper(config, data, build_run_model(config, data), run_loss(config, data))
    pending = []

    def step():
        pending.append(stepper.step()[0])
        if len(pending) == SYNC:
            torch.stack(pending).tolist()
            pending.clear()

    return step


def plain_step(config):
    data = load_run_data(config)
    model = build_run_model(config, data)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)
    x, y, batches = data.x_train, data.y_train, []

    def step():
        if not batches:
            batches.extend(torch.randperm(len(x), generator=gen).split(config.batch_size))
        idx = batches.pop(0)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    return step


def members(configs):
    datas = [load_run_data(c) for c in configs]
    return datas, [build_run_model(c, d) for c, d in zip(configs, datas)]


def fast_step(configs):
    datas, models = members(configs)
    stepper = EnsembleStepper(configs, datas, models, run_loss(configs[0], datas[0]))
    assert stepper.fast
    pending = []

    def step():
        pending.append(stepper.step())
        if len(pending) == SYNC:
            torch.stack(pending).tolist()
            pending.clear()

    return step, stepper


def generic_step(configs):
    datas, models = members(configs)
    c = configs[0]
    ens = VectorizedEnsemble(
        models, run_loss(c, datas[0]), datas[0].x_train, torch.stack([d.y_train for d in datas]),
        optimizer="sgd", lr=c.lr, momentum=c.momentum, batch_size=c.batch_size,
        seeds=[x.seed for x in configs], y_per_member=True,
    )  # fmt: skip
    return ens.step


def hand_step(configs):
    """The hand-written batched matmul of issue 19 (its own initialization: timing only)."""
    c, m = configs[0], len(configs)
    datas = [load_run_data(x) for x in configs]
    x, y = datas[0].x_train, torch.stack([d.y_train for d in datas])
    dims = [x.shape[1], c.width, c.width, 10]
    params = []
    for a, b in zip(dims[:-1], dims[1:]):
        params += [
            (torch.randn(m, a, b) / a**0.5).requires_grad_(),
            torch.zeros(m, 1, b).requires_grad_(),
        ]
    opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, foreach=True)
    gens = [torch.Generator().manual_seed(x.seed) for x in configs]
    rows, batches = torch.arange(m)[:, None], []

    def step():
        if not batches:
            perms = torch.stack([torch.randperm(len(x), generator=g) for g in gens])
            batches.extend(perms.split(c.batch_size, dim=1))
        idx = batches.pop(0)
        h = x[idx]
        for j in range(0, len(params) - 2, 2):
            h = torch.relu(torch.baddbmm(params[j + 1], h, params[j]))
        out = torch.baddbmm(params[-1], h, params[-2])
        loss = F.cross_entropy(out.flatten(0, 1), y[rows, idx].flatten()) * m
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def end_to_end(configs: list, out: Path) -> None:
    """Train ``configs`` as ``implicit-reg reproduce`` does (``run_sweep``, 2 workers of one
    thread, the planner's jobs, evaluations and probes) into the new directory ``out``;
    print the wall time, the load average around it and the training time the runs recorded."""
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--end-to-end needs a new directory; {out} is not empty")
    load0, start = os.getloadavg(), time.perf_counter()
    report = run_sweep(configs, out, workers=2, progress=False)
    wall = time.perf_counter() - start
    recorded = sum(
        json.loads(p.read_text()).get("wall_time_s") or 0.0 for p in out.glob("runs/*/summary.json")
    )
    print(f"end to end: {report.line()} in {wall / 60:.1f} min wall on 2 workers; "
          f"runs recorded {recorded / 60:.1f} min of training; loadavg before {load0}, "
          f"after {os.getloadavg()}")  # fmt: skip


def sweep_slice(cfg: Config, out: Path, steps: int, reps: int) -> None:
    """The issue's slice: widths 13, 47, 300 × seeds 0–5 (clean labels), 50 epochs, full
    evaluations every 200 steps, no probes, trained by ``implicit-reg sweep --workers 2``
    (a subprocess: start-up, planning, data and evaluations included) into the new
    directory ``out``; against the hand-written batched matmul's CPU time for the same
    steps, halved for 2 cores (no evaluations, no start-up)."""
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--slice needs a new directory; {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    setting = cfg.setting("mnist1d")
    base = setting.run_config(13, 0, 0.0, epochs=50, eval_every=200, error_every=None, probes=())
    fields = {k: v for k, v in dataclasses.asdict(base).items()
              if v is not None and k not in ("width", "seed")}  # fmt: skip
    toml = ["[base]"] + [f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                         for k, v in fields.items()]  # fmt: skip
    toml += ["[grid]", "width = [13, 47, 300]", "seed = [0, 1, 2, 3, 4, 5]"]
    spec = out / "slice.toml"
    spec.write_text("\n".join(toml) + "\n")
    cmd = [sys.executable, "-m", "implicit_reg", "sweep", str(spec), "--out", str(out / "sweep"),
           "--workers", "2", "--no-progress"]  # fmt: skip
    load0, start = os.getloadavg(), time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    configs = [base.replace(width=w, seed=s) for w in (13, 47, 300) for s in range(6)]
    per_run, _ = step_budget(configs[0], 4000)
    hand = 0.0
    for w in (13, 47, 300):
        group = [c for c in configs if c.width == w]
        t = min(timed(hand_step(group), steps) for _ in range(reps))
        hand += t * per_run  # one step of all 6 members, per_run times
    print(f"slice: 18 runs in {wall:.1f} s wall (implicit-reg sweep --workers 2, start-up "
          f"included); hand-written batched matmul {hand:.1f} CPU-s = {hand / 2:.1f} s on "
          f"2 cores; ratio {wall / (hand / 2):.2f}; loadavg before {load0}, after "
          f"{os.getloadavg()}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 widths, 20 steps, 1 round (smoke)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--generic", action="store_true", help="time the vmap ensemble too (slow)")
    ap.add_argument("--crossover", type=int, nargs="*", default=[600, 1200],
                    help="extra widths where fast and engine are compared")  # fmt: skip
    ap.add_argument("--slice", type=Path, metavar="DIR", default=None,
                    help="instead: the issue's sweep slice (widths 13, 47, 300 x 6 seeds, 50 "
                    "epochs, evaluations every 200 steps) through run_sweep(workers=2) into DIR, "
                    "start-up included, against the hand-written batched matmul of the same "
                    "steps on 2 cores")  # fmt: skip
    ap.add_argument("--end-to-end", type=Path, metavar="DIR", default=None,
                    help="instead: train the whole sweep with run_sweep(workers=2) into DIR "
                    "(a new directory), probes included, and print its wall time")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = CONFIGS["small"]
    widths = list(cfg.mnist1d.widths)
    if args.end_to_end is not None:
        end_to_end(sweep_configs(cfg, widths), args.end_to_end)
        return
    steps, reps = args.steps, args.reps
    if args.slice is not None:
        sweep_slice(cfg, args.slice, steps, reps)
        return
    if args.quick:
        widths, steps, reps, args.crossover = (
            [widths[0], widths[len(widths) // 2], widths[-1]],
            20,
            1,
            [],
        )
    print(f"# bench_sweep: MNIST-1D 40→w→w→10, n=4000, batch 100, SGD lr 0.01 mom 0.9, float32, "
          f"1 thread, {steps} steps x {reps} rounds; loadavg {os.getloadavg()}")  # fmt: skip
    configs = sweep_configs(cfg, widths)
    by_width = {w: [c for c in configs if c.width == w] for w in widths}
    packs = plan_jobs(configs, workers=2)  # what run_sweep(workers=2) trains
    best: dict[tuple, float] = {}
    cols = ["engine", "plain", "fast", "hand"] + (["generic"] if args.generic else [])
    for _ in range(reps):
        for w in widths:
            group = by_width[w]
            makers = {
                "engine": lambda g=group: (engine_step(g[0]), 1),
                "plain": lambda g=group: (plain_step(g[0]), 1),
                "fast": lambda g=group: (fast_step(g)[0], len(g)),
                "hand": lambda g=group: (hand_step(g), len(g)),
                "generic": lambda g=group: (generic_step(g), len(g)),
            }
            for col in cols:
                fn, m = makers[col]()
                t = timed(fn, steps if col != "generic" else max(10, steps // 5)) / m
                best[(col, w)] = min(best.get((col, w), float("inf")), t)
        for i, pack in enumerate(packs):
            if len(pack) == 1:
                fn, m = engine_step(pack[0]), 1
            else:
                fn, m = fast_step(pack)[0], len(pack)
            t = timed(fn, steps)
            best[("pack", i)] = min(best.get(("pack", i), float("inf")), t)
    pack_of = {c.config_hash(): i for i, p in enumerate(packs) for c in p}
    head = f"{'w':>5} " + " ".join(f"{c:>8}" for c in [*cols, "packed"])
    print("\nms per step per member (ratio to hand)")
    print(head)
    sums = dict.fromkeys([*cols, "packed"], 0.0)
    for w in widths:
        i = pack_of[by_width[w][0].config_hash()]
        packed = best[("pack", i)] / len(packs[i])
        row = {c: best[(c, w)] for c in cols} | {"packed": packed}
        for c, v in row.items():
            sums[c] += v
        hand = row["hand"]
        print(f"{w:>5} " + " ".join(f"{1e3 * v:8.3f}" for v in row.values())
              + "   " + " ".join(f"{c}={v / hand:.2f}" for c, v in row.items() if c != "hand"))  # fmt: skip
    print(f"{'sum':>5} " + " ".join(f"{1e3 * v:8.3f}" for v in sums.values())
          + "   " + " ".join(f"{c}={v / sums['hand']:.2f}" for c, v in sums.items() if c != "hand"))  # fmt: skip
    # the planner's cost model (engine.plan.STEP_COST): a 6-member step t(w) = J + 6·c_f·F(w)
    from implicit_reg.engine.plan import step_flops

    fl = torch.tensor([float(step_flops(by_width[w][0])) for w in widths], dtype=torch.float64)
    t6 = torch.tensor([6 * best[("fast", w)] for w in widths], dtype=torch.float64)
    design = torch.stack([torch.ones_like(fl), fl], 1)
    j, slope = torch.linalg.lstsq(design, t6[:, None]).solution.flatten().tolist()
    print(f"cost fit, 6-member fast step: J = {1e3 * j:.3f} ms per job-step, "
          f"c_f = {slope / 6:.2e} s per forward FLOP per member (STEP_COST)")  # fmt: skip
    print("packs:", ", ".join(
        f"w={sorted({c.width for c in p})} x{len(p)}: {1e3 * best[('pack', i)]:.2f} ms/step"
        for i, p in enumerate(packs)))  # fmt: skip

    # evaluation costs (CPU seconds, min of --reps), once per width: serial evaluate() and
    # the ensemble's evaluator, full and light (the losses and errors alone)
    ev_serial, ev_fast = {}, {}
    for _ in range(reps):
        for w in widths:
            c = by_width[w][0]
            data = load_run_data(c)
            model = build_run_model(c, data)
            init = [p.detach().clone() for p in model.parameters()]
            loss = run_loss(c, data)
            for light in (False, True):
                start = time.process_time()
                evaluate(model, loss, data, chunk_size=c.chunk_size, init_params=init, light=light)
                t = time.process_time() - start
                ev_serial[w, light] = min(ev_serial.get((w, light), float("inf")), t)
        for i, pack in enumerate(packs):
            if len(pack) > 1:
                _, stepper = fast_step(pack)
                for light in (False, True):
                    start = time.process_time()
                    stepper.evaluate(stepper.live, light=light)
                    t = time.process_time() - start
                    ev_fast[i, light] = min(ev_fast.get((i, light), float("inf")), t)

    # the projected sweep: every run of the sweep at these widths
    def run_cost(c, per_step: float, per_eval: float, per_light: float, old: bool = False) -> float:
        """One run's (or job's) seconds: steps, full evaluations, light ones; ``old``: the
        schedule before light evaluations (full ones every ``error_every`` steps)."""
        steps_run, _ = step_budget(c, 4000)
        every = c.error_every if old and c.error_every else c.eval_every
        full = steps_run // every + 1
        light = 0
        if c.error_every and not old:
            light = steps_run // c.error_every - steps_run // math.lcm(c.eval_every, c.error_every)
        return steps_run * per_step + full * per_eval + light * per_light

    def projection(old: bool) -> tuple[list, list, list, list]:
        serial_jobs = [
            run_cost(c, best[("engine", c.width)], ev_serial[c.width, False],
                     ev_serial[c.width, True], old)
            for c in configs
        ]  # fmt: skip
        serial_train = [run_cost(c, best[("engine", c.width)], 0.0, 0.0) for c in configs]
        packed_jobs, packed_train = [], []
        for i, pack in enumerate(packs):
            if len(pack) == 1:
                packed_jobs.append(serial_jobs[configs.index(pack[0])])
                packed_train.append(serial_train[configs.index(pack[0])])
            else:
                packed_jobs.append(
                    run_cost(pack[0], best[("pack", i)], ev_fast[i, False], ev_fast[i, True], old)
                )
                packed_train.append(run_cost(pack[0], best[("pack", i)], 0.0, 0.0))
        return serial_jobs, serial_train, packed_jobs, packed_train

    print("evaluation, ms per member, full/light: " + ", ".join(
        f"w={w}: {1e3 * ev_serial[w, False]:.0f}/{1e3 * ev_serial[w, True]:.0f}" for w in widths)
        + " (serial); packs: " + ", ".join(
        f"{1e3 * ev_fast[i, False] / len(p):.0f}/{1e3 * ev_fast[i, True] / len(p):.0f}"
        for i, p in enumerate(packs) if (i, False) in ev_fast))  # fmt: skip
    for old in (False, True):
        serial_jobs, serial_train, packed_jobs, packed_train = projection(old)
        what = "full evaluations every 40 steps at the dense widths (before)" if old else (
            "light evaluations at the dense widths (error_every)")  # fmt: skip
        print(f"\nprojected wall time of the MNIST-1D small sweep ({len(configs)} runs at "
              f"{len(widths)} widths; 2 workers x 1 thread, probes excluded; {what}):")  # fmt: skip
        print(f"  engine, one run at a time: {makespan(serial_jobs, 2) / 60:7.1f} min "
              f"(CPU {sum(serial_jobs) / 60:.1f} min, of it training {sum(serial_train) / 60:.1f})")  # fmt: skip
        print(f"  planned jobs (ensembles, packs): {makespan(packed_jobs, 2) / 60:7.1f} min "
              f"(CPU {sum(packed_jobs) / 60:.1f} min, of it training {sum(packed_train) / 60:.1f}; "
              f"{len(packs)} jobs)")  # fmt: skip
    for w in args.crossover:
        group = sweep_configs(cfg, [w])
        t_eng = min(timed(engine_step(group[0]), max(10, steps // 5)) for _ in range(reps))
        t_fast = min(timed(fast_step(group)[0], max(10, steps // 5)) for _ in range(reps)) / len(
            group
        )
        print(f"crossover check w={w}: engine {1e3 * t_eng:.2f} ms, fast {1e3 * t_fast:.2f} ms "
              f"per member, fast/engine = {t_fast / t_eng:.2f}")  # fmt: skip
    print(f"# loadavg at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
