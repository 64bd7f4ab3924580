"""Cost of the engine's training loop against a plain torch loop, per SGD step.

Setting: belkin-network's `small` runs (MNIST, n = 1,000, 784→H→10 ReLU, the
summed squared loss, SGD with momentum 0.95, batch 100, one torch thread),
H = 8 and H = 100, ``--epochs`` epochs (default 200, i.e. 2,000 steps). Rows:

    engine       ``implicit_reg.engine.train.run`` on the run's RunConfig (data order,
                 divergence check, evaluation every 100 epochs, history)
    plain loop   the same model, data and loss with ``torch.optim.SGD``: randperm,
                 zero_grad, forward, backward, step; nothing logged

Both rows are timed in the same process, alternating, ``--repeats`` times; the
table gives the median ms per step and the ratio engine / plain loop. The
engine row includes what a run costs besides the steps (two evaluations on
the 1,000 training and 4,000 test digits), which is why the ratio is an upper
bound on the per-step overhead.

    .venv/bin/python benchmarks/bench_engine_loop.py [--epochs 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from implicit_reg.engine.train import run
from implicit_reg.engine.workload import build_run_model, load_run_data, run_loss
from implicit_reg.experiments import belkin_network as bn


def time_engine(config) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        run(config, Path(d) / "run")
        return time.perf_counter() - t


def time_plain(config) -> float:
    data = load_run_data(config)
    model = build_run_model(config, data)
    loss_fn = run_loss(config, data)
    x, y = data.x_train, data.y_train
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(config.seed)
    t = time.perf_counter()
    for _ in range(config.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), config.batch_size):
            idx = perm[i : i + config.batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = dataclasses.replace(bn.CONFIGS["small"], epochs=args.epochs)
    time_engine(dataclasses.replace(bn.run_config(cfg, 8, 0), epochs=1))  # imports, data cache
    print("| H | steps | engine (ms/step) | plain loop (ms/step) | engine / plain |")
    print("|---|---|---|---|---|")
    for width in (8, 100):
        config = bn.run_config(cfg, width, 0)
        steps = config.epochs * -(-config.n_train // config.batch_size)
        eng, plain = [], []
        for _ in range(args.repeats):
            eng.append(time_engine(config))
            plain.append(time_plain(config))
        e, p = statistics.median(eng), statistics.median(plain)
        print(
            f"| {width} | {steps:,} | {e / steps * 1e3:.3f} | {p / steps * 1e3:.3f} | {e / p:.2f} |"
        )


if __name__ == "__main__":
    main()
