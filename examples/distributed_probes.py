"""Curvature probes over data sharded across processes, and a tracker under DDP.

Run with ``torchrun --nproc-per-node 2 examples/distributed_probes.py`` (CPU: gloo;
GPUs: nccl, one per rank). Each rank holds a shard of the data (uneven shards are fine);
the probes sum their products over the ranks, so every rank prints the numbers a single
process gets on all the data. Rank 0 then recomputes them in one process, to compare.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn

from implicit_reg.integrations import CurvatureTracker
from implicit_reg.probes import (
    HessianOperator,
    gaussian_sharpness,
    grad_norm_sq,
    hutchpp,
    lanczos,
    slq_density,
)
from implicit_reg.probes.distributed import shard_rows


def model_and_data(n=1001):
    """A 20→64→64→5 tanh MLP (float64) and n teacher-labelled samples."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 5)
    ).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 20, generator=g, dtype=torch.float64)
    y = (X[:, :5] + 0.3 * torch.randn(n, 5, generator=g, dtype=torch.float64)).argmax(1)
    return model, (X, y)


def measures(model, data, group) -> dict:
    loss = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss, data, chunk_size=128, process_group=group)
    dens = slq_density(op, n_steps=30, n_runs=4, seed=0)
    return {
        "lambda_1..3": lanczos(op, 3).eigenvalues.tolist(),
        "trace (Hutch++)": hutchpp(op, n_hvp=60, seed=0).estimate,
        "SLQ mean eigenvalue": sum(float((w * t).sum()) for t, w in zip(dens.nodes, dens.weights))
        / 4,
        "|grad L|^2": grad_norm_sq(model, loss, data, chunk_size=128, process_group=group),
        "Gaussian sharpness": gaussian_sharpness(
            model, loss, data, sigma=1e-2, seed=0, process_group=group
        ).value,
    }


def main():
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.set_num_threads(1)
    model, data = model_and_data(int(os.environ.get("N_SAMPLES", 1001)))
    shard = shard_rows(data)  # this rank's rows: 501 and 500 of 1001
    t0 = time.process_time()
    two = measures(model, shard, "auto")
    cpu = [None] * world
    dist.all_gather_object(cpu, (len(shard[0]), time.process_time() - t0))
    if rank == 0:
        for r, (n, s) in enumerate(cpu):
            print(f"rank {r}: {n} rows, {s:.2f} s CPU")
        t0 = time.process_time()
        one = measures(model, data, None)
        cpu1 = time.process_time() - t0
        print(f"\n{'measure':22s} {world} processes{'':12s} 1 process{'':14s} rel. diff")
        for k, v in two.items():
            for i, (a, b) in enumerate(
                zip(*(x if isinstance(x, list) else [x] for x in (v, one[k])))
            ):
                name = k if not isinstance(v, list) else f"lambda_{i + 1}"
                print(f"{name:22s} {a:<24.16g} {b:<24.16g} {abs(a - b) / abs(b):.1e}")
        print(f"1 process on all rows: {cpu1:.2f} s CPU")

    # A tracker in a DDP run: each rank trains on its half of the batch and probes its shard
    # of the probe set; every rank logs the same full-probe-set numbers.
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    tracker = CurvatureTracker(
        ddp, nn.CrossEntropyLoss(), data, every=25, budget=None, process_group="auto",
        shard=True, measures=["loss", "lambda_max", "trace", "grad_norm_sq"],
    )  # fmt: skip
    X, y = shard
    for t in range(101):
        tracker.step(t)
        opt.zero_grad()
        nn.CrossEntropyLoss()(ddp(X), y).backward()
        opt.step()
    if rank == 0:
        cols = ["step", "loss", "lambda_max", "lambda_max_residual", "trace", "grad_norm_sq"]
        print("\nCurvatureTracker under DDP (rank 0's rows; rank 1's are identical):")
        print(tracker.table()[cols].to_string(index=False))
    rows = [None] * world
    dist.all_gather_object(rows, [{k: v for k, v in r.items() if k != "probe_seconds"
                                   and k != "overhead"} for r in tracker.rows])  # fmt: skip
    if rank == 0:
        print("rows identical on every rank:", all(r == rows[0] for r in rows))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
