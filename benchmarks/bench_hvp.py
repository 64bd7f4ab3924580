"""HVP cost: double backward vs torch.func vjp(grad) vs jvp(grad), as a multiple of one gradient.

Model: MLP 40→256→256→10 (tanh and ReLU), cross-entropy, N samples in chunks.
Each row is one full-data HVP through ``HessianOperator.matvec`` (the path
every probe uses), timed side by side with one full-data gradient
(``HessianOperator.gradient``) in the same process; the best of several
interleaved rounds of process CPU time is reported, with one thread by
default: on a shared, loaded machine CPU time tracks the work done far better
than wall time. The fastest form is ``implicit_reg.core.hvp.DEFAULT_METHOD``.

    .venv/bin/python benchmarks/bench_hvp.py [--n 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from implicit_reg.core.hvp import DEFAULT_METHOD, HVP_METHODS
from implicit_reg.probes import HessianOperator


def mlp(act: type[nn.Module], dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(40, 256), act(), nn.Linear(256, 256), act(), nn.Linear(256, 10)
    ).to(dtype)


def interleaved_min_times(fns: dict, repeats: int) -> dict:
    """Best-of-``repeats`` CPU time (``time.process_time``) of each function, run in rotating order each round,
    so every function sees the same (shared, noisy) machine load."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t = time.process_time()
            fns[k]()
            times[k].append(time.process_time() - t)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--chunk-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = work)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"HVP cost, MLP 40-256-256-10, N={args.n}, chunk={args.chunk_size}, "
        f"threads={torch.get_num_threads()}, best of {args.repeats} interleaved rounds; default={DEFAULT_METHOD}"
    )
    print(
        f"{'dtype':<9}{'act':<6}{'method':<17}{'grad ms':>9}{'HVP ms':>9}{'HVP/grad':>10}{'max|diff|':>12}"
    )
    for dtype in (torch.float32, torch.float64):
        for act in (nn.Tanh, nn.ReLU):
            model = mlp(act, dtype)
            g = torch.Generator().manual_seed(1)
            X = torch.randn(args.n, 40, generator=g, dtype=dtype)
            y = torch.randint(0, 10, (args.n,), generator=g)
            v = torch.randn(sum(p.numel() for p in model.parameters()), generator=g, dtype=dtype)
            ops = {
                m: HessianOperator(
                    model, nn.CrossEntropyLoss(), (X, y), chunk_size=args.chunk_size, method=m
                )
                for m in HVP_METHODS
            }
            fns = {"grad": ops[DEFAULT_METHOD].gradient}
            fns.update({m: (lambda op=op, v=v: op.matvec(v)) for m, op in ops.items()})
            t = interleaved_min_times(fns, args.repeats)
            ref = ops["double_backward"].matvec(v)
            for m in HVP_METHODS:
                diff = float((ops[m].matvec(v) - ref).abs().max())
                print(
                    f"{str(dtype)[6:]:<9}{act.__name__:<6}{m:<17}{1e3 * t['grad']:>9.1f}"
                    f"{1e3 * t[m]:>9.1f}{t[m] / t['grad']:>10.2f}{diff:>12.2e}"
                )


if __name__ == "__main__":
    main()
