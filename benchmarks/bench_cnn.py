"""The stacked CNN ensemble against one run at a time, a hand-written batched CNN and vmap.

Setting (issue 20 item 4, ``cnn-digits``): Nakkiran et al.'s CNN family
(:class:`~implicit_reg.workloads.models.CNN`, channels k, 2k, 4k, 8k, BatchNorm)
on 28 × 28 digits, n = 4,000 (random pixels: speed does not depend on them),
minibatch 128, Adam lr 1e-4, float32, M members of one width, one torch
thread. Columns, in ms per optimizer step per member:

- ``plain``: a plain torch loop of the serial CNN (``nn`` model in train mode,
  ``torch.optim.Adam(foreach=True)``, ``x[idx]``), one member after another;
- ``hand``: a hand-written batched CNN: ``nn.Conv2d(M·c_in, M·c_out, groups=M)``,
  ``nn.BatchNorm2d(M·c)``, ReLU and pools as modules, the readout as one ``bmm``,
  one ``cross_entropy``, ``torch.optim.Adam(foreach=True)`` over the modules;
- ``fast``: the package's :class:`~implicit_reg.ensemble.batched.BatchedEnsemble`
  (:class:`~implicit_reg.ensemble.stacked.StackedCNN`: the same grouped
  convolutions over stacked parameters, ``_foreach`` Adam, ``idx[M, B]``);
- ``vmap``: ``torch.func.vmap(functional_call)`` over the stacked parameters, BatchNorm
  in train mode on batch statistics only (running statistics would need batched
  buffers; this is the cheapest form vmap could take), the gradient only
  (no update), so it is a lower bound of a vmap ensemble's step.

Each method runs ``--steps`` steps after a warm-up, in ``--reps`` interleaved rounds;
the minimum over rounds is kept (the machine is shared: the load average is
printed). Ratios are to ``plain`` and ``hand`` from the same run.

Measured here (2 shared cores, one thread, CPU time; k = 1-8 in one run at load 7,
k = 16 in another at load 11), ms per step per member:

    k    plain    hand    fast    vmap   fast/plain  fast/hand  vmap/hand
    1    17.3     10.7    10.1    13.6     0.58        0.95       1.28
    2    22.9     18.9    19.0    25.3     0.83        1.01       1.34
    4    36.4     38.0    33.2    58.2     0.91        0.87       1.53
    8    71.7     82.6    83.7   112.1     1.17        1.01       1.36
    16  165.9    296.2   285.2   405.9     1.72        0.96       1.37

The stacked ensemble is the hand-written grouped convolution's speed (0.87-1.01x) and
faster than vmap everywhere; it beats one run at a time up to k = 4 only (a grouped
convolution of M groups is slower on CPU than M small ones at 8k ≥ 64 channels), which
is where the planner uses it (``engine.plan.FAST_MODEL_MAX_STEP_FLOPS``). The float32
drift (``--drift 10``, k = 2, 3 members, real digits, lr 1e-3): the largest per-step loss
difference from the serial runs 9.3e-4 within the first epoch, 3.9e-3 within 3, 2.1e-2
within 10; after 10 epochs ‖θ_fast − θ_serial‖/‖θ‖ ≤ 2.0e-2 and 70 of 3,000 test
predictions differ (Adam turns float32 rounding of near-zero gradients into steps of
size ≈ lr; in float64 the two agree to 1e-14, ``tests/test_stacked_cnn.py``).

    .venv/bin/python benchmarks/bench_cnn.py                 # k = 1, 2, 4, 8, 16
    .venv/bin/python benchmarks/bench_cnn.py --widths 1 2 --steps 5 --reps 1   # smoke
    .venv/bin/python benchmarks/bench_cnn.py --widths 2 --drift 10   # the float32 bound
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from implicit_reg.ensemble.batched import BatchedEnsemble
from implicit_reg.ensemble.vectorized import MinibatchOrder
from implicit_reg.workloads.models import build_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sweep import timed  # noqa: E402

N, SIDE, BATCH, LR = 4000, 28, 128, 1e-4


def members(k: int, m: int) -> list[nn.Module]:
    return [
        build_model("cnn", input_dim=SIDE * SIDE, output_dim=10, width=k, seed=s) for s in range(m)
    ]


def plain_step(k: int, m: int, x, y):
    """One step of each of the M serial runs, one after another (per call)."""
    runs = []
    for i, model in enumerate(members(k, m)):
        opt = torch.optim.Adam(model.parameters(), lr=LR, foreach=True)
        runs.append((model, opt, MinibatchOrder(N, BATCH, torch.Generator().manual_seed(i)), y[i]))

    def step():
        for model, opt, order, yi in runs:
            idx = next(order)
            loss = F.cross_entropy(model(x.index_select(0, idx)), yi.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


class HandCNN(nn.Module):
    """M members of the CNN as one module: grouped convolutions, stacked BatchNorm."""

    def __init__(self, k: int, m: int) -> None:
        super().__init__()
        self.m = m
        layers, c_in = [], 1
        for j, c in enumerate((k, 2 * k, 4 * k, 8 * k)):
            layers += [
                nn.Conv2d(m * c_in, m * c, 3, padding=1, bias=False, groups=m),
                nn.BatchNorm2d(m * c),
                nn.ReLU(),
            ]
            if j in (1, 2):
                layers.append(nn.MaxPool2d(2))
            c_in = c
        layers.append(nn.AdaptiveMaxPool2d(1))
        self.features = nn.Sequential(*layers)
        self.weight = nn.Parameter(torch.randn(m, 8 * k, 10) / (8 * k) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(m, 1, 10))

    def forward(self, xb: torch.Tensor) -> torch.Tensor:  # [M, B, s²] -> [M, B, 10]
        h = xb.view(self.m, xb.shape[1], SIDE, SIDE).transpose(0, 1).contiguous()
        h = self.features(h).view(xb.shape[1], self.m, -1).transpose(0, 1)
        return torch.baddbmm(self.bias, h, self.weight)


def hand_step(k: int, m: int, x, y):
    model = HandCNN(k, m)
    opt = torch.optim.Adam(model.parameters(), lr=LR, foreach=True)
    gens = [torch.Generator().manual_seed(i) for i in range(m)]
    rows = torch.arange(m)[:, None]
    pending: list[torch.Tensor] = []

    def step():
        if not pending:
            perms = torch.stack([torch.randperm(N, generator=g) for g in gens])
            pending.extend(perms.split(BATCH, dim=1))
        idx = pending.pop(0)
        out = model(x[idx])
        loss = F.cross_entropy(out.flatten(0, 1), y[rows, idx].flatten())
        opt.zero_grad(set_to_none=True)
        (loss * m).backward()
        opt.step()

    return step


def fast_step(k: int, m: int, x, y):
    ens = BatchedEnsemble(
        members(k, m), nn.CrossEntropyLoss(), x, y, optimizer="adam", lr=LR,
        batch_size=BATCH, seeds=list(range(m)), y_per_member=True,
    )  # fmt: skip
    return ens.step


def vmap_step(k: int, m: int, x, y):
    model = members(k, 1)[0]
    stacked = {n: torch.stack([dict(mm.named_parameters())[n].detach() for mm in members(k, m)])
               for n, _ in model.named_parameters()}  # fmt: skip
    for mod in model.modules():  # batch statistics only: no buffers to batch
        if isinstance(mod, nn.BatchNorm2d):
            mod.track_running_stats = False
            mod.running_mean = mod.running_var = mod.num_batches_tracked = None
    gens = [torch.Generator().manual_seed(i) for i in range(m)]
    pending: list[torch.Tensor] = []
    rows = torch.arange(m)[:, None]

    def loss_of(params, xb, yb):
        return F.cross_entropy(functional_call(model, params, (xb,)), yb)

    g = vmap(grad(loss_of))

    def step():
        if not pending:
            perms = torch.stack([torch.randperm(N, generator=gg) for gg in gens])
            pending.extend(perms.split(BATCH, dim=1))
        idx = pending.pop(0)
        g(stacked, x[idx], y[rows, idx])

    return step


METHODS = {"plain": plain_step, "hand": hand_step, "fast": fast_step, "vmap": vmap_step}


def drift(k: int, m: int, epochs: int, lr: float) -> None:
    """The float32 bound: the stacked ensemble against its members' serial runs (plain
    loop, ``torch.optim.Adam``) on the real digits (20% label noise), per-step losses
    and, at the end, relative parameter distance and eval-mode test predictions."""
    from implicit_reg.workloads.data import load_dataset

    d = load_dataset("mnist", n_train=N, label_noise=0.2, seed=0)
    x, y = d.x_train, d.y_train.expand(m, N)
    ens = BatchedEnsemble(
        members(k, m), nn.CrossEntropyLoss(), x, y, optimizer="adam", lr=lr,
        batch_size=BATCH, seeds=list(range(m)), y_per_member=True,
    )  # fmt: skip
    steps = epochs * (-(-N // BATCH))
    fast = torch.stack([ens.step() for _ in range(steps)], 1)
    worst_theta, flips = 0.0, 0
    diffs = torch.zeros(m, steps, dtype=torch.float64)
    for i, model in enumerate(members(k, m)):
        opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
        order = MinibatchOrder(N, BATCH, torch.Generator().manual_seed(i))
        for t in range(steps):
            idx = next(order)
            loss = F.cross_entropy(model(x[idx]), y[i][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            diffs[i, t] = abs(loss.item() - float(fast[i, t]))
        mine = ens.member_params(i)
        num = sum(float((mine[n] - p.detach()).pow(2).sum()) for n, p in model.named_parameters())
        den = sum(float(p.detach().pow(2).sum()) for p in model.parameters())
        worst_theta = max(worst_theta, (num / den) ** 0.5)
        model.eval()
        with torch.no_grad():
            flips += int(
                (
                    model(d.x_test).argmax(1) != ens.outputs(d.x_test, x_batched=False)[i].argmax(1)
                ).sum()
            )
    per = -(-N // BATCH)
    horizons = sorted({e for e in (1, 3, 10, 30, epochs) if e <= epochs})
    by_epoch = ", ".join(f"{e}: {float(diffs[:, : e * per].max()):.1e}" for e in horizons)
    print(
        f"float32 drift, k = {k}, {m} members, {epochs} epochs ({steps} Adam steps, lr {lr:g}): "
        f"max |loss difference| per step within epochs {by_epoch}; at the end max "
        f"||θ_fast − θ_serial||/||θ|| {worst_theta:.2e}, test predictions that differ {flips} "
        f"of {m * len(d.x_test)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--drift",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="measure the float32 drift over EPOCHS instead (real digits)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.drift:
        drift(args.widths[0], 3, args.drift, 1e-3)
        return
    torch.manual_seed(0)
    x = torch.rand(N, SIDE * SIDE)
    y = torch.randint(0, 10, (args.members, N))
    m = args.members
    print(
        f"load average {os.getloadavg()[0]:.1f}; {m} members, batch {BATCH}, one thread, CPU time"
    )
    print(
        f"{'k':>3} "
        + " ".join(f"{name:>8}" for name in METHODS)
        + "  fast/plain fast/hand vmap/hand"
    )
    for k in args.widths:
        steps = {name: make(k, m, x, y) for name, make in METHODS.items()}
        best = {name: float("inf") for name in METHODS}
        for _ in range(args.reps):
            for name, fn in steps.items():
                best[name] = min(best[name], timed(fn, args.steps, warmup=3) / m)
        ms = {name: 1e3 * t for name, t in best.items()}
        print(
            f"{k:>3} " + " ".join(f"{ms[n]:8.2f}" for n in METHODS)
            + f"  {ms['fast'] / ms['plain']:10.2f} {ms['fast'] / ms['hand']:9.2f}"
            + f" {ms['vmap'] / ms['hand']:9.2f}",
            flush=True,
        )  # fmt: skip


if __name__ == "__main__":
    main()
