"""How far a vectorized ensemble member drifts from the same run trained alone.

Both go through the one training loop (``implicit_reg.engine.loop``); they
differ only in the stepper: :func:`implicit_reg.engine.train.run` (one model,
``implicit_reg.core.optim.SGD``) against :func:`implicit_reg.engine.train.train_runs`
(the members stacked: ``baddbmm`` per layer for the MLP under SGD, the fast
path of issue 19; ``torch.func.vmap`` otherwise). The update rule is the same
function on the same numbers, but batched matmuls sum in a different order,
so float32 results differ by rounding, and training can amplify a rounding
difference (large steps, edge of stability).

Setting (issue 10): 16 members, MLP 40→256→10 (ReLU) on MNIST-1D (4,000
training samples), cross-entropy, SGD with B=64 and momentum 0.9, learning
rates geometrically spaced in [0.01, 0.5], 200 steps, evaluated every 10
steps. For every member, evaluated step and metric the table gives the
median and the largest absolute difference |vectorized − serial| of the
train loss, and the largest relative difference of ‖θ‖ and ‖∇L‖², up to
each horizon, in float64 and in float32.

    .venv/bin/python benchmarks/drift_vectorized.py           # the table
    .venv/bin/python benchmarks/drift_vectorized.py --quick   # 4 members, 50 steps
    .venv/bin/python benchmarks/drift_vectorized.py --setting sweep   # the width sweep's
        # recipe at w = 47: 6 members (3 seeds x noisy/clean), 2,000 steps (50 epochs)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.train import run, train_runs


def configs(dtype: str, members: int, steps: int, setting: str = "lr") -> list[RunConfig]:
    """``setting="lr"``: the issue-10 learning-rate ensemble; ``"sweep"``: the MNIST-1D
    width sweep's recipe (40→47→47→10, n = 4,000, B = 100, lr 0.01, momentum 0.9), one
    member per seed, noisy and clean labels alternating."""
    if setting == "sweep":
        base = dict(
            model="mlp", width=47, depth=2, dataset="mnist1d", n_train=4000, n_test=1000,
            optimizer="sgd", batch_size=100, momentum=0.9, lr=0.01, steps=steps,
            eval_every=max(1, steps // 10), probes=(), dtype=dtype,
        )  # fmt: skip
        return [
            RunConfig(**base, seed=m // 2, label_noise=0.15 if m % 2 == 0 else 0.0)
            for m in range(members)
        ]
    base = dict(
        model="mlp", width=256, depth=1, dataset="mnist1d", optimizer="sgd", batch_size=64,
        momentum=0.9, steps=steps, eval_every=10, probes=(), dtype=dtype,
    )  # fmt: skip
    lrs = np.geomspace(0.01, 0.5, members)
    return [RunConfig(**base, lr=float(f"{lr:.6g}")) for lr in lrs]


def by_key(history) -> dict[tuple[int, str], float]:
    return {(r["step"], r["metric"]): r["value"] for r in history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--setting", choices=("lr", "sweep"), default="lr",
        help="lr: 16 learning rates of MLP 40-256-10; sweep: the MNIST-1D width sweep's recipe",
    )  # fmt: skip
    args = parser.parse_args()
    if args.setting == "sweep":
        members, steps = (2, 100) if args.quick else (6, 2000)
        horizons = [h for h in (100, 400, 1000, 2000) if h <= steps]
        title = f"{members} members, MLP 40-47-47-10 (n=4000), SGD B=100 lr 0.01 momentum 0.9"
    else:
        members, steps = (4, 50) if args.quick else (16, 200)
        horizons = [h for h in (50, 100, 200) if h <= steps]
        title = f"{members} members, MLP 40-256-10, SGD B=64 momentum 0.9, lr in [0.01, 0.5]"
    torch.set_num_threads(1)
    print(f"{title}, {steps} steps")
    print(f"{'dtype':<8}{'horizon':>8}{'median |dL|':>14}{'max |dL|':>12}{'max rel |theta|':>17}"
          f"{'max rel |g|^2':>15}{'worst lr':>10}")  # fmt: skip
    for dtype in ("float64", "float32"):
        cfgs = configs(dtype, members, steps, args.setting)
        started = time.perf_counter()
        vec = train_runs(cfgs)
        ser = [run(c, raise_errors=True) for c in cfgs]
        seconds = time.perf_counter() - started
        for h in horizons:
            dl, rel_w, rel_g, worst = [], [], [], (0.0, None)
            for c, v, s in zip(cfgs, vec, ser):
                a, b = by_key(v.history), by_key(s.history)
                for (step, metric), x in a.items():
                    if step > h or (step, metric) not in b:
                        continue
                    y = b[(step, metric)]
                    if metric == "train_loss":
                        dl.append(abs(x - y))
                        if abs(x - y) > worst[0]:
                            worst = (abs(x - y), c.lr if args.setting == "lr" else c.seed)
                    elif metric == "weight_norm":
                        rel_w.append(abs(x - y) / max(abs(y), 1e-300))
                    elif metric == "grad_norm_sq":
                        rel_g.append(abs(x - y) / max(abs(y), 1e-300))
            print(f"{dtype:<8}{h:>8}{statistics.median(dl):>14.2e}{max(dl):>12.2e}"
                  f"{max(rel_w):>17.2e}{max(rel_g):>15.2e}{worst[1]!s:>10}")  # fmt: skip
        print(f"         ({dtype}: {seconds:.0f} s for both)")


if __name__ == "__main__":
    main()
