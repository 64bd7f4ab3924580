"""Vectorized ensembles vs one run at a time: training, probes and torch.compile, side by side.

1. Training throughput. M members that differ only in the learning rate
   (log-spaced in [0.01, 0.5]), MLP 40→256→10 (ReLU, float32) on MNIST-1D
   (4,000 training samples generated offline by ``implicit_reg.workloads.data``),
   cross-entropy. Serial: the package's optimizers (``implicit_reg.core.optim.GD``,
   ``SGD``, ``EGR``) on each member in turn, the way a sweep trains runs one
   by one. Vectorized: one :class:`implicit_reg.ensemble.vectorized.VectorizedEnsemble`.
   Both do the same number of steps; they alternate in blocks of steps so
   that both see the same machine load, and the totals are compared.
   1b. Where it pays: serial vs vectorized per member-step over model width
   and rows per step (the sweep planner's CPU rule comes from this table).
2. Probe throughput. λ_max (Lanczos), Hutchinson trace and ‖∇L‖² of 16
   members: :mod:`implicit_reg.ensemble.probes` vs the serial probes
   (:mod:`implicit_reg.probes`) on each member.
3. torch.compile. The ensemble's gradient step (``vmap(grad_and_value)``)
   and the ensemble HVP (``grad_and_hvp(method="vjp")``), eager vs compiled:
   compile time, steady-state time per call, and the largest difference
   (compile times depend on inductor's on-disk cache: set
   ``TORCHINDUCTOR_CACHE_DIR`` to an empty directory for cold numbers). The
   "compiled" rows of table 1 use ``VectorizedEnsemble(compile=True)`` and
   include the compilations in their time.

Wall time is what a user waits for; process CPU time (all threads) is
printed next to it because it is steadier on a shared machine. Ratios are
serial/vectorized from the same run. The load average is printed: on a busy
2-core machine a second BLAS thread costs more synchronisation than it
saves, which hurts many small operations (serial) more than few large ones.

    .venv/bin/python benchmarks/bench_vectorized.py            # the full tables
    .venv/bin/python benchmarks/bench_vectorized.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time

import torch
from torch import nn

from implicit_reg.core.optim import EGR, GD, SGD
from implicit_reg.ensemble.vectorized import VectorizedEnsemble, ensemble_loss_fns, stack_models
from implicit_reg.workloads.data import load_dataset


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def mnist1d(n: int | None = None):
    data = load_dataset("mnist1d")
    x, y = data.x_train.float(), data.y_train
    return (x, y) if n is None else (x[:n], y[:n])


def mlp(seed: int = 0, width: int = 256) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, 10))


class Clock:
    """Accumulated wall and process CPU time."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


# ------------------------------------------------------------------ training
def serial_members(models, lrs, optimizer: str, loss_fn, x, y, batch_size, seeds):
    """Per member: a closure that advances it by k steps with the package's optimizer."""
    from implicit_reg.ensemble.vectorized import minibatch_indices

    runners = []
    for model, lr, seed in zip(models, lrs, seeds):
        model = copy.deepcopy(model)
        params = list(model.parameters())
        if optimizer == "gd":
            opt = GD(params, lr=lr)
        elif optimizer == "sgd":
            opt = SGD(params, lr=lr, momentum=0.9)
        else:
            opt = EGR(params, lr=lr)
        order = (
            None
            if batch_size is None
            else minibatch_indices(len(x), batch_size, torch.Generator().manual_seed(seed))
        )
        state = {"alive": True, "loss": math.nan}

        def advance(k, model=model, opt=opt, order=order, state=state):
            for _ in range(k):
                if not state["alive"]:
                    return
                if order is None:
                    xb, yb = x, y
                else:
                    idx = next(order)
                    xb, yb = x[idx], y[idx]
                if optimizer == "egr":
                    loss = opt.step(lambda xb=xb, yb=yb: loss_fn(model(xb), yb))
                else:

                    def closure(xb=xb, yb=yb):
                        opt.zero_grad()
                        out = loss_fn(model(xb), yb)
                        out.backward()
                        return out

                    loss = opt.step(closure)
                state["loss"] = float(loss.detach())
                state["alive"] = math.isfinite(state["loss"])

        runners.append((advance, state))
    return runners


def bench_training(label, *, members, steps, optimizer, threads, batch_size=None, chunk_size=None,
                   block=25, width=256, n=None, compile=False):  # fmt: skip
    torch.set_num_threads(threads)
    x, y = mnist1d(n)
    loss_fn = nn.CrossEntropyLoss()
    lrs = torch.logspace(math.log10(0.01), math.log10(0.5), members).tolist()
    seeds = list(range(members))
    models = [mlp(s, width) for s in seeds]
    runners = serial_members(models, lrs, optimizer, loss_fn, x, y, batch_size, seeds)
    ens = VectorizedEnsemble(
        models, loss_fn, x, y, optimizer=optimizer, lr=lrs, momentum=0.9 if optimizer == "sgd" else 0.0,
        batch_size=batch_size, seeds=seeds, chunk_size=chunk_size, compile=compile,
    )  # fmt: skip
    last = {}
    ser, vec = Clock(), Clock()
    done = 0
    while done < steps:
        k = min(block, steps - done)
        with ser:
            for advance, _ in runners:
                advance(k)
        with vec:
            for _ in range(k):
                if ens.live:
                    last.update({m: r["loss"] for m, r in ens.step().items()})
        done += k
    # sanity: the last losses agree (rounding only)
    diffs = [
        abs(state["loss"] - last[m]) / max(abs(state["loss"]), 1e-12)
        for m, (_, state) in enumerate(runners)
        if math.isfinite(state["loss"]) and m in last and math.isfinite(last[m])
    ]
    med = sorted(diffs)[len(diffs) // 2] if diffs else float("nan")
    print(
        f"{label:<37}{members:>4}{steps:>7}{threads:>4}{ser.wall:>10.1f}{vec.wall:>9.1f}"
        f"{ser.wall / vec.wall:>8.2f}{ser.cpu:>10.1f}{vec.cpu:>9.1f}{ser.cpu / vec.cpu:>8.2f}"
        f"{med:>10.1e}/{max(diffs, default=float('nan')):.1e}{load():>6.1f}",
        flush=True,
    )


# ----------------------------------------------------------------- crossover
def bench_crossover(threads: int, steps: int) -> None:
    """Serial vs vectorized GD per member-step across model and batch sizes."""
    from implicit_reg.engine.plan import CPU_MAX_STEP_FLOPS

    torch.set_num_threads(threads)
    x_all, y_all = mnist1d()
    loss_fn = nn.CrossEntropyLoss()
    print(f"\n1b. Where vectorizing pays: GD, MLP 40-w-10 on n MNIST-1D rows, threads={threads}, "
          f"best of 3 interleaved rounds of {steps} steps; load {load():.1f}")  # fmt: skip
    print(f"{'M':>4}{'width':>7}{'rows':>6}{'fwd MFLOP/member-step':>23}{'serial ms':>11}{'vec ms':>9}"
          f"{'ratio':>7}   (ms per member-step; the sweep planner vectorizes on CPU below "
          f"{CPU_MAX_STEP_FLOPS / 1e6:g} MFLOP)")  # fmt: skip
    cases = [(16, w, n) for w in (32, 128, 512) for n in (32, 128, 512, 2000)]
    cases += [(64, 32, 32), (64, 32, 128), (64, 128, 128)]
    for members, width, n in cases:
        x, y = x_all[:n], y_all[:n]
        models = [mlp(s, width) for s in range(members)]
        serial = [copy.deepcopy(m) for m in models]
        opts = [GD(m.parameters(), lr=0.01) for m in serial]
        ens = VectorizedEnsemble(models, loss_fn, x, y, lr=0.01)

        def serial_steps(k, serial=serial, opts=opts, x=x, y=y):
            for _ in range(k):
                for m, o in zip(serial, opts):
                    o.zero_grad()
                    loss_fn(m(x), y).backward()
                    o.step()

        def vec_steps(k, ens=ens):
            for _ in range(k):
                ens.step()

        serial_steps(1)
        vec_steps(1)
        ts, tv = [], []
        for _ in range(3):
            with Clock() as c:
                serial_steps(steps)
            ts.append(c.wall)
            with Clock() as c:
                vec_steps(steps)
            tv.append(c.wall)
        s_ms, v_ms = min(ts) / steps / members * 1e3, min(tv) / steps / members * 1e3
        flops = n * 2 * (40 * width + width * 10) / 1e6
        print(
            f"{members:>4}{width:>7}{n:>6}{flops:>23.2f}{s_ms:>11.3f}{v_ms:>9.3f}{s_ms / v_ms:>7.2f}",
            flush=True,
        )


# -------------------------------------------------------------------- probes
def bench_probes(members: int, n: int, threads: int, trace_samples: int) -> None:
    from implicit_reg.core.objective import full_gradient
    from implicit_reg.ensemble.probes import (
        ensemble_grad_norm_sq,
        ensemble_hutchinson,
        ensemble_lanczos_max,
    )
    from implicit_reg.probes import HessianOperator, hutchinson, lanczos

    torch.set_num_threads(threads)
    x, y = mnist1d(n)
    loss_fn = nn.CrossEntropyLoss()
    models = [mlp(s) for s in range(members)]
    seeds = list(range(members))
    arch, params = stack_models(models)
    fns = ensemble_loss_fns(arch, loss_fn, x, y)
    print(
        f"\n2. Probes: {members} members, MLP 40-256-10 (float32), MNIST-1D n={n}, threads={threads}, load {load():.1f}"
    )
    print(
        f"{'probe':<28}{'serial s':>10}{'vec s':>9}{'wall x':>8}{'ser cpu':>9}{'vec cpu':>9}{'cpu x':>7}{'max rel diff':>14}"
    )

    def row(name, serial_fn, vec_fn):
        s, v = Clock(), Clock()
        with s:
            a = serial_fn()
        with v:
            b = vec_fn()
        diff = max(abs(p - q) / max(abs(p), 1e-12) for p, q in zip(a, b))
        print(f"{name:<28}{s.wall:>10.2f}{v.wall:>9.2f}{s.wall / v.wall:>8.2f}{s.cpu:>9.2f}{v.cpu:>9.2f}"
              f"{s.cpu / v.cpu:>7.2f}{diff:>14.1e}", flush=True)  # fmt: skip

    def ops():
        return [HessianOperator(m, loss_fn, (x, y), mode="train") for m in models]

    row(
        "lambda_max (Lanczos)",
        lambda: [float(lanczos(op, 1, seed=s).eigenvalues[0]) for op, s in zip(ops(), seeds)],
        lambda: ensemble_lanczos_max(fns, params, seeds=seeds).eigenvalues.tolist(),
    )
    row(
        f"trace (Hutchinson, {trace_samples} HVPs)",
        lambda: [
            hutchinson(op, min_samples=trace_samples, max_samples=trace_samples, seed=s).estimate
            for op, s in zip(ops(), seeds)
        ],
        lambda: ensemble_hutchinson(
            fns, params, n_samples=trace_samples, seeds=seeds
        ).estimate.tolist(),
    )
    row(
        "grad_norm_sq",
        lambda: [
            float(sum((g.double() ** 2).sum() for g in full_gradient(m, loss_fn, (x, y))[1]))
            for m in models
        ],
        lambda: ensemble_grad_norm_sq(fns, params).tolist(),
    )


# ------------------------------------------------------------ torch.compile
def bench_compile(members: int, threads: int, calls: int) -> None:
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    from implicit_reg.core.hvp import grad_and_hvp

    torch.set_num_threads(threads)
    torch._dynamo.reset()
    x, y = mnist1d()
    loss_fn = nn.CrossEntropyLoss()
    models = [mlp(s) for s in range(members)]
    stacked, _ = stack_module_state(models)
    params = {k: v.detach() for k, v in stacked.items()}
    template = copy.deepcopy(models[0]).to("meta")
    lr = torch.logspace(-2, math.log10(0.5), members)

    def member(p, xx, yy):
        return loss_fn(functional_call(template, p, (xx,)), yy)

    def gd_step(p):
        g, loss = vmap(grad_and_value(member), in_dims=(0, None, None))(p, x, y)
        return {k: p[k] - lr.view(-1, *[1] * (p[k].dim() - 1)) * g[k] for k in p}, loss

    names = list(params)

    def total(ps):
        return vmap(member, in_dims=(0, None, None))(dict(zip(names, ps)), x, y).sum()

    primals = tuple(params.values())
    vec = tuple(torch.randn_like(p) for p in primals)

    def hvp(ps):
        return grad_and_hvp(total, ps, vec, method="vjp")[1]

    single = mlp(0)
    sp = {k: v.detach() for k, v in single.named_parameters()}

    def single_step(p):
        g, loss = grad_and_value(lambda q: loss_fn(functional_call(single, q, (x,)), y))(p)
        return {k: p[k] - 0.1 * g[k] for k in p}, loss

    print(
        f"\n3. torch.compile (inductor, CPU): MNIST-1D n=4000, MLP 40-256-10, threads={threads}, load {load():.1f}"
    )
    print(
        f"{'function':<40}{'eager ms':>10}{'compiled ms':>13}{'speed-up':>10}{'compile s':>11}{'max|diff|':>11}"
    )
    for name, fn, arg in (
        (f"ensemble GD step ({members} members)", gd_step, params),
        (f"ensemble HVP, vjp ({members} members)", hvp, primals),
        ("one model's GD step (serial path)", single_step, sp),
    ):
        fn(arg)
        t = time.perf_counter()
        for _ in range(calls):
            eager_out = fn(arg)
        eager = (time.perf_counter() - t) / calls
        compiled = torch.compile(fn)
        t = time.perf_counter()
        comp_out = compiled(arg)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(calls):
            comp_out = compiled(arg)
        comp = (time.perf_counter() - t) / calls
        a = (
            eager_out[0]
            if isinstance(eager_out, tuple) and isinstance(eager_out[0], dict)
            else eager_out
        )
        b = (
            comp_out[0]
            if isinstance(comp_out, tuple) and isinstance(comp_out[0], dict)
            else comp_out
        )
        a = list(a.values()) if isinstance(a, dict) else list(a)
        b = list(b.values()) if isinstance(b, dict) else list(b)
        diff = max(float((u - v).abs().max()) for u, v in zip(a, b))
        print(
            f"{name:<40}{eager * 1e3:>10.1f}{comp * 1e3:>13.1f}{eager / comp:>10.2f}{compile_s:>11.1f}{diff:>11.1e}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=500, help="steps of the 4- and 16-member rows")
    ap.add_argument("--steps-64", type=int, default=100, help="steps of the 64-member row")
    ap.add_argument("--egr-steps", type=int, default=100)
    ap.add_argument("--steps-small", type=int, default=500, help="steps of the 1-thread rows")
    ap.add_argument("--rows", default="all", help="comma-separated training rows (default: all)")
    ap.add_argument("--sections", default="train,crossover,probes,compile")
    ap.add_argument("--quick", action="store_true", help="a few steps of each, for a smoke test")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    steps, steps64, egr_steps, steps_small = (
        args.steps,
        args.steps_64,
        args.egr_steps,
        args.steps_small,
    )
    if args.quick:
        steps, steps64, egr_steps, steps_small = 4, 2, 2, 4
    t = args.threads
    rows = {
        "gd4": dict(label="GD full batch", members=4, steps=steps, optimizer="gd", threads=t),
        "gd16": dict(label="GD full batch", members=16, steps=steps, optimizer="gd", threads=t),
        "gd16-1thread": dict(label="GD full batch", members=16, steps=steps_small, optimizer="gd", threads=1),
        "gd16-chunks": dict(label="GD full batch, vec. chunks 1000", members=16, steps=steps_small,
                            optimizer="gd", threads=1, chunk_size=1000),
        "gd64": dict(label="GD full batch", members=64, steps=steps64, optimizer="gd", threads=t, block=10),
        "egr16": dict(label="EGR exact (mu = h/4)", members=16, steps=egr_steps, optimizer="egr",
                      threads=t, block=10),
        "sgd16": dict(label="SGD B=64, momentum 0.9", members=16, steps=steps, optimizer="sgd",
                      threads=t, batch_size=64),
        "small16": dict(label="GD, MLP 40-32-10, n=500", members=16, steps=steps,
                        optimizer="gd", threads=t, width=32, n=500),
    }  # fmt: skip
    for name in ("gd16", "sgd16", "small16"):  # the same with torch.compile (compile time included)
        rows[f"{name}-compile"] = {**rows[name], "compile": True,
                                   "label": rows[name]["label"] + ", compiled"}  # fmt: skip
    chosen = list(rows) if args.rows == "all" else args.rows.split(",")
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(rows)}")
    if "train" in sections:
        print(f"1. Training throughput: members differ in lr; MLP 40-256-10 (float32), MNIST-1D n=4000, "
              f"cross-entropy; serial = package optimizers one run at a time; load {load():.1f}")  # fmt: skip
        print(f"{'setting':<37}{'M':>4}{'steps':>7}{'thr':>4}{'serial s':>10}{'vec s':>9}{'wall x':>8}"
              f"{'ser cpu':>10}{'vec cpu':>9}{'cpu x':>8}{'loss diff med/max':>19}{'load':>6}")  # fmt: skip
        for name in chosen:
            bench_training(**rows[name])
    if "crossover" in sections:
        bench_crossover(t, 10 if not args.quick else 1)
    if "probes" in sections:
        bench_probes(16, 1000, t, 10 if not args.quick else 2)
    if "compile" in sections:
        bench_compile(16, t, 10 if not args.quick else 1)


if __name__ == "__main__":
    main()
