"""Loss-landscape grids: batched (vmap over blocks of grid points) vs a per-point loop.

Each problem evaluates one 2-D filter-normalized grid ℓ(α, β) = L(θ + α·d₁ + β·d₂)
(:func:`implicit_reg.probes.landscape.evaluate_points`) three ways, in the same
process, interleaved within each round:

- "loop": ``batched=False``, one grid point at a time, a full pass over the
  data chunks each (the order of Li et al.'s ``plot_surface.py``);
- "batched b": the grid in vmap blocks of b points (b = 4, 16, and the
  memory-budget default), data visited once;
- "slices": :func:`implicit_reg.probes.loss_slice_2d` (once one ``HessianOperator.loss``
  per point; now the same ``evaluate_points``, so it times the same path plus its setup).

The values are checked equal (max relative difference printed) before any
timing counts. Cells are the minimum over ``--repeats`` rounds; ratios are
loop / batched within this run. ``/proc/loadavg`` is printed before and after.

Problems (one BLAS thread, float32 unless said):

- ``tiny``: MLP 10→16→4 (tanh), 256 samples, whole data per chunk;
- ``loader``: MLP 40→100→100→10 (ReLU) on 4,000 samples in 128-row batches
  (a DataLoader-style iterable, as Li et al. evaluate);
- ``mnist1d``: the same MLP on 4,000 samples, chunk chosen by the memory budget;
- ``mnist1d64``: the same in float64.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_landscape.py --grid 11 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from implicit_reg.probes import loss_slice_2d
from implicit_reg.probes.landscape import evaluate_points, random_directions


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def mlp(sizes, act=nn.ReLU):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def problem(name: str):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "tiny":
        model, n, d_in, k, dtype = mlp([10, 16, 4], nn.Tanh), 256, 10, 4, torch.float32
    else:
        dtype = torch.float64 if name == "mnist1d64" else torch.float32
        model, n, d_in, k = mlp([40, 100, 100, 10]), 4000, 40, 10
    model = model.to(dtype)
    X = torch.randn(n, d_in, generator=g).to(dtype)
    y = torch.randint(0, k, (n,), generator=g)
    data = (
        [(X[i : i + 128], y[i : i + 128]) for i in range(0, n, 128)] if name == "loader" else (X, y)
    )
    return model, data, (X, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=11, help="points per axis")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--problems", default="tiny,loader,mnist1d,mnist1d64")
    ap.add_argument("--slices", action="store_true", help="also time loss_slice_2d")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, grid {args.grid}x{args.grid}")
    print(f"loadavg before: {loadavg()}")
    loss_fn = nn.CrossEntropyLoss()
    a = np.linspace(-1, 1, args.grid)
    A, B = np.meshgrid(a, a)
    coords = np.stack([A.ravel(), B.ravel()], 1)
    for name in args.problems.split(","):
        model, data, pair = problem(name)
        dirs = random_directions(model, 2, seed=0)

        def run(model=model, data=data, dirs=dirs, **kw):
            return evaluate_points(model, loss_fn, data, dirs, coords, **kw)[0]

        methods = {"loop": dict(batched=False)}
        for b in (4, 16):
            methods[f"batched {b}"] = dict(points_per_block=b)
        methods["batched auto"] = {}
        times = {m: [] for m in methods}
        values = {}
        for _ in range(args.repeats):
            for m, kw in methods.items():  # interleaved: load drifts hit every method alike
                t = time.perf_counter()
                values[m] = run(**kw)
                times[m].append(time.perf_counter() - t)
        ref = values["loop"]
        line = [f"{name:>10}: loop {1e3 * min(times['loop']) / len(coords):6.2f} ms/pt"]
        for m in methods:
            if m == "loop":
                continue
            err = np.max(np.abs(values[m] - ref) / np.abs(ref))
            ratio = min(times["loop"]) / min(times[m])
            line.append(f"{m} x{ratio:4.2f} (rel.diff {err:.1e})")
        if args.slices:
            t = time.perf_counter()
            loss_slice_2d(model, loss_fn, pair, (dirs[0], dirs[1]), alphas=a, betas=a)
            ts = time.perf_counter() - t
            line.append(f"loss_slice_2d {1e3 * ts / len(coords):6.2f} ms/pt")
        print(" | ".join(line), flush=True)
    print(f"loadavg after: {loadavg()}")


if __name__ == "__main__":
    main()
