"""Cost of the engine's training loop against a plain torch loop, per optimizer step.

Settings (issue 19, one torch thread, float32):

    gd          full-batch GD, lr 0.1: MNIST-1D MLP 40→64→64→10 on n = 200
    sgd w=13    SGD lr 0.01, momentum 0.9, batch 100: MNIST-1D MLP 40→w→w→10 on
    sgd w=47    n = 4,000 (40 steps an epoch)
    sgd w=300

Rows:

    engine      ``implicit_reg.engine.train.train_one`` on the run's RunConfig (the
                one loop: data order, divergence checks, history), evaluation at
                step 0 and at the end only; the time spent in those two
                evaluations is measured and taken out, so the row is the loop's
                per-step cost (model build and bookkeeping stay in: <1%)
    plain loop  the same model, data and loss with ``torch.optim.SGD``: a
                ``torch.randperm`` per epoch, ``x[idx]``, zero_grad, forward,
                backward, step; nothing logged

Before timing, both are run once and their final parameters compared: they
must be equal bit for bit (the same computation is being timed). Then both
are timed alternately in one process, ``--repeats`` times; the table gives
median ms per step and the ratio of the medians, with ``/proc/loadavg`` before
and after (the CPU may be shared: quote ratios, not milliseconds).

    .venv/bin/python benchmarks/bench_engine_loop.py [--steps 400] [--repeats 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import torch

from implicit_reg.engine import steppers
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.train import train_one
from implicit_reg.engine.workload import build_run_model, load_run_data, run_loss

SETTINGS = {
    "gd": dict(n_train=200, width=64, optimizer="gd", lr=0.1),
    "sgd w=13": dict(
        n_train=4000, width=13, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=100
    ),
    "sgd w=47": dict(
        n_train=4000, width=47, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=100
    ),
    "sgd w=300": dict(
        n_train=4000, width=300, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=100
    ),
}


def config_of(setting: str, steps: int) -> RunConfig:
    return RunConfig(
        dataset="mnist1d", probes=(), steps=steps, eval_every=steps, **SETTINGS[setting]
    )


class _EvalTimer:
    """Wraps ``SerialStepper.evaluate`` to add up the time spent evaluating."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = steppers.SerialStepper.evaluate

    def __enter__(self) -> _EvalTimer:
        original, timer = self.original, self

        def timed(stepper, members):
            t = time.perf_counter()
            try:
                return original(stepper, members)
            finally:
                timer.seconds += time.perf_counter() - t

        steppers.SerialStepper.evaluate = timed
        return self

    def __exit__(self, *exc) -> None:
        steppers.SerialStepper.evaluate = self.original


def time_engine(config: RunConfig) -> float:
    """Seconds per step of the engine's loop (evaluations taken out)."""
    with _EvalTimer() as evals:
        t = time.perf_counter()
        result = train_one(config, raise_errors=True)
        wall = time.perf_counter() - t
    assert result.status == "complete", result.summary
    return (wall - evals.seconds) / config.steps


def plain_loop(config: RunConfig) -> tuple[float, torch.nn.Module]:
    """Seconds per step of a plain torch loop over the same model, data and order."""
    data = load_run_data(config)
    model = build_run_model(config, data)
    loss_fn = run_loss(config, data)
    x, y = data.x_train, data.y_train
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    batch = config.batch_size
    gen = torch.Generator().manual_seed(config.seed)
    t = time.perf_counter()
    if batch is None:
        for _ in range(config.steps):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    else:
        done = 0
        while done < config.steps:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                if done == config.steps:
                    break
                idx = perm[i : i + batch]
                opt.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
                done += 1
    return (time.perf_counter() - t) / config.steps, model


def check_same(config: RunConfig) -> None:
    """The engine and the plain loop end with the same parameters, bit for bit."""
    result = train_one(config.replace(checkpoint=True), raise_errors=True)
    engine = torch.load(io.BytesIO(result.checkpoint), weights_only=True)["state_dict"]
    _, model = plain_loop(config)
    for name, value in model.state_dict().items():
        if not torch.equal(engine[name], value):
            raise AssertionError(f"engine and plain loop differ in {name}: not the same run")


def loadavg() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().split(" ", 3)[:3].__str__() if path.exists() else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for setting in SETTINGS:  # imports, data sets, equality
        check_same(config_of(setting, 60))
    print(f"load (1, 5, 15 min) before: {loadavg()}; torch {torch.__version__}, 1 thread")
    print("| setting | steps | engine (ms/step) | plain loop (ms/step) | engine / plain |")
    print("|---|---|---|---|---|")
    for setting in SETTINGS:
        config = config_of(setting, args.steps)
        eng, plain = [], []
        for _ in range(args.repeats):
            eng.append(time_engine(config))
            plain.append(plain_loop(config)[0])
        e, p = statistics.median(eng), statistics.median(plain)
        print(f"| {setting} | {args.steps} | {e * 1e3:.3f} | {p * 1e3:.3f} | {e / p:.2f} |")
    print(f"load after: {loadavg()}")


if __name__ == "__main__":
    main()
