"""Cost of one optimizer step as a multiple of one plain gradient step, and accuracy.

Setting (fixed by the issue): MLP 40→512→512→10 (ReLU; ``--act tanh`` for
the smooth variant), cross-entropy, 4,000 random samples, full batch,
float32, ``torch.set_num_threads(2)``. Every row is one complete step on its
own copy of the model, timed side by side in the same process: two warm-up
calls each, then ``--repeats`` rounds that run every row once in rotating
order (so all rows see the same machine load); the table gives the median
wall time and its ratio to the median of the baseline, the median
process-CPU-time ratio as a cross-check, and the floating-point operations
of the matrix products (``FlopCounterMode``), which no machine load changes.

Rows:
    gradient step   baseline: zero_grad, forward, backward, θ ← θ − h·g by hand
    GD              ``implicit_reg.core.optim.GD.step`` (torch-style closure)
    EGR exact       ``EGR(method="exact").step``: double backward
    EGR FD          ``EGR(method="finite_difference").step``: two gradients
    naive           L + μ‖∇L‖² built with create_graph=True, one backward of the sum
    func: <m>       ``modified_gradient_exact(method=m)`` on the functional loss
                    (``chunk_loss_fns``), the three HVP forms of ``grad_and_hvp``
    torch SGD       ``torch.optim.SGD(momentum=0.9)``, torch-style closure
    SGD             ``implicit_reg.core.optim.SGD(momentum=0.9)``, the same call
    EGR create_graph  EGR exact through a torch closure calling backward(create_graph=True)
    EGR chunks x4   EGR exact through ``step(chunks=...)``, 4 chunks (two passes)
    SAM / ASAM / penalty  ``core.sam`` around GD, torch-style closure (two gradients)

Accuracy: on ``--acc-rows`` rows the modified gradient g̃ = g + 2μHg of each
method, computed in float32 as timed, against the exact one in float64 (the
GD row shows how far plain g is from g̃, i.e. the size of the regularizer).

    .venv/bin/python benchmarks/bench_optim_step.py [--repeats 9] [--act relu|tanh]
    .venv/bin/python benchmarks/bench_optim_step.py --fd-sweep   # FD error vs radius
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from implicit_reg.core.hvp import grad_and_hvp
from implicit_reg.core.modified_gradient import (
    default_fd_radius,
    finite_difference_hvp,
    flat_norm,
    modified_gradient_exact,
    modified_gradient_fd,
)
from implicit_reg.core.objective import chunk_loss_fns, trainable_named_params
from implicit_reg.core.optim import EGR, GD, SGD
from implicit_reg.core.sam import ASAM, SAM, GradNormPenalty

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(act: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    a = ACTS[act]
    return nn.Sequential(nn.Linear(40, 512), a(), nn.Linear(512, 512), a(), nn.Linear(512, 10))


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 40, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# ----------------------------------------------------------------- the steps
def make_steps(base: nn.Module, x, y, lr: float, mu: float) -> dict:
    """name -> zero-argument function performing one full optimizer step."""
    loss_fn = nn.CrossEntropyLoss()
    steps = {}

    m0 = copy.deepcopy(base)
    p0 = list(m0.parameters())

    def baseline():
        for p in p0:
            p.grad = None
        loss_fn(m0(x), y).backward()
        with torch.no_grad():
            torch._foreach_add_(p0, [p.grad for p in p0], alpha=-lr)

    steps["gradient step"] = baseline

    m1 = copy.deepcopy(base)
    gd = GD(m1.parameters(), lr=lr)

    def gd_closure():
        gd.zero_grad()
        loss = loss_fn(m1(x), y)
        loss.backward()
        return loss

    steps["GD"] = lambda: gd.step(gd_closure)

    m2 = copy.deepcopy(base)
    egr = EGR(m2.parameters(), lr=lr, coeff=mu)
    steps["EGR exact"] = lambda: egr.step(lambda: loss_fn(m2(x), y))

    m3 = copy.deepcopy(base)
    egr_fd = EGR(m3.parameters(), lr=lr, coeff=mu, method="finite_difference", module=m3)
    steps["EGR FD"] = lambda: egr_fd.step(lambda: loss_fn(m3(x), y))

    m4 = copy.deepcopy(base)
    p4 = list(m4.parameters())

    def naive():
        loss = loss_fn(m4(x), y)
        grads = torch.autograd.grad(loss, p4, create_graph=True)
        total = loss + mu * sum((g * g).sum() for g in grads)
        g_mod = torch.autograd.grad(total, p4)
        with torch.no_grad():
            torch._foreach_add_(p4, list(g_mod), alpha=-lr)

    steps["naive double backward"] = naive

    for method in ("double_backward", "vjp", "jvp"):
        m = copy.deepcopy(base)
        params = tuple(trainable_named_params(m).values())

        def func_step(m=m, params=params, method=method):
            (f,) = chunk_loss_fns(m, loss_fn, (x, y))
            _, g_mod = modified_gradient_exact(f, params, mu, method=method)
            with torch.no_grad():
                torch._foreach_add_(list(params), list(g_mod), alpha=-lr)

        steps[f"func: {method}"] = func_step

    def torch_closure(model, opt, create_graph=False):
        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=create_graph)
            return loss

        return closure

    for name, make in (
        ("torch SGD", lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9)),
        ("SGD", lambda ps: SGD(ps, lr=lr, momentum=0.9)),
    ):
        m = copy.deepcopy(base)
        opt = make(m.parameters())
        steps[name] = lambda opt=opt, c=torch_closure(m, opt): opt.step(c)

    m = copy.deepcopy(base)
    egr_cg = EGR(m.parameters(), lr=lr, coeff=mu)
    steps["EGR create_graph"] = lambda c=torch_closure(m, egr_cg, True): egr_cg.step(c)

    m = copy.deepcopy(base)
    egr_ch = EGR(m.parameters(), lr=lr, coeff=mu)
    n, k = len(x), (len(x) + 3) // 4
    chunks = [
        (len(x[i : i + k]) / n, lambda m=m, i=i: loss_fn(m(x[i : i + k]), y[i : i + k]))
        for i in range(0, n, k)
    ]
    steps["EGR chunks x4"] = lambda: egr_ch.step(chunks=chunks)

    for name, cls in (("SAM", SAM), ("ASAM", ASAM), ("penalty", GradNormPenalty)):
        m = copy.deepcopy(base)
        opt = cls(m.parameters(), GD, lr=lr)
        steps[name] = lambda opt=opt, c=torch_closure(m, opt): opt.step(c)
    return steps


def time_steps(steps: dict, repeats: int) -> dict:
    """Median wall and CPU seconds per step, rows interleaved in rotating order."""
    for fn in steps.values():
        fn()
        fn()
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    keys = list(steps)
    for r in range(repeats):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in keys}


def matmul_flops(fn) -> float:
    """FLOPs of the matrix products (mm, addmm, ...) in one call, backward
    passes included, counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------ accuracy
def modified_gradients(model: nn.Module, x, y, mu: float) -> dict:
    """name -> g̃ = g + 2μHg as each row computes it (GD row: plain g)."""
    loss_fn = nn.CrossEntropyLoss()
    params = tuple(trainable_named_params(model).values())
    (f,) = chunk_loss_fns(model, loss_fn, (x, y))

    def grad_at(ps):
        ps = tuple(p.detach().requires_grad_(True) for p in ps)
        return torch.autograd.grad(f(ps), ps)

    out = {"GD": grad_at(params)}
    out["EGR exact"] = modified_gradient_exact(lambda _: loss_fn(model(x), y), params, mu)[1]
    out["EGR FD"] = modified_gradient_fd(grad_at, params, mu)[1]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    out["naive double backward"] = torch.autograd.grad(
        loss + mu * sum((g * g).sum() for g in grads), params
    )
    for method in ("double_backward", "vjp", "jvp"):
        out[f"func: {method}"] = modified_gradient_exact(f, params, mu, method=method)[1]
    return out


def accuracy(base: nn.Module, x, y, mu: float) -> dict:
    """name -> (rel. error of g̃, rel. error of the term 2μHg), float32 vs float64 exact."""
    ref_model = copy.deepcopy(base).double()
    loss_fn = nn.CrossEntropyLoss()
    (f64,) = chunk_loss_fns(ref_model, loss_fn, (x.double(), y))
    params64 = tuple(trainable_named_params(ref_model).values())
    g_ref, gm_ref = modified_gradient_exact(f64, params64, mu)
    term_ref = [a - b for a, b in zip(gm_ref, g_ref)]
    out = {}
    for name, gm in modified_gradients(copy.deepcopy(base), x, y, mu).items():
        err = flat_norm([a.double() - b for a, b in zip(gm, gm_ref)]) / flat_norm(gm_ref)
        term = [a.double() - b for a, b in zip(gm, g_ref)]
        term_err = flat_norm([a - b for a, b in zip(term, term_ref)]) / flat_norm(term_ref)
        out[name] = (float(err), float(term_err))
    return out


# ------------------------------------------------------------------ FD sweep
def relu_flips(model: nn.Module, x, direction, radius: float) -> int:
    """How many (row, unit) ReLU pre-activations change sign when θ moves by
    ``radius`` along ``direction`` (unit norm): the kinks a FD step crosses."""
    signs = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: signs.append(inp[0] > 0))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.no_grad():
            model(x)
            moved = copy.deepcopy(model)
            for p, d in zip(moved.parameters(), direction):
                p.add_(d, alpha=radius)
            moved(x)
    finally:
        for h in hooks:
            h.remove()
    half = len(signs) // 2
    return int(sum((a != b).sum() for a, b in zip(signs[:half], signs[half:])))


def fd_sweep(rows: int, seeds: int) -> None:
    """Relative error of the forward-difference H g against the exact float64
    H g, by radius r, dtype and activation (the data behind default_fd_radius)."""
    x, y = data(rows, seed=1)
    radii = [1e-9, 1e-8, 1.5e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3.45e-4, 1e-3, 1e-2]
    print(
        f"\nFD error of H·g, 40→512→512→10, {rows} rows, cross-entropy, seeds 0..{seeds - 1} (max)"
    )
    print(
        f"{'radius':>9} | {'tanh f64':>9} {'tanh f32':>9} | {'relu f64':>9} {'relu f32':>9}"
        f" | {'ReLU sign flips (mean)':>22}"
    )
    table, flips = {}, {}
    for act in ("tanh", "relu"):
        for seed in range(seeds):
            model = mlp(act, seed).double()
            loss_fn = nn.CrossEntropyLoss()
            (f64,) = chunk_loss_fns(model, loss_fn, (x.double(), y))
            g_ref, hv_ref = grad_and_hvp(f64, tuple(trainable_named_params(model).values()))
            if act == "relu":
                unit = [t / flat_norm(g_ref) for t in g_ref]
                for r in radii:
                    flips[r] = flips.get(r, 0.0) + relu_flips(model, x.double(), unit, r) / seeds
            for dtype in (torch.float64, torch.float32):
                m = copy.deepcopy(model).to(dtype)
                (f,) = chunk_loss_fns(m, loss_fn, (x.to(dtype), y))
                params = tuple(trainable_named_params(m).values())

                def grad_at(ps, f=f):
                    ps = tuple(p.detach().requires_grad_(True) for p in ps)
                    return torch.autograd.grad(f(ps), ps)

                g = grad_at(params)
                for r in radii:
                    hv = finite_difference_hvp(grad_at, params, g, g, radius=r)
                    err = float(
                        flat_norm([a.double() - b for a, b in zip(hv, hv_ref)]) / flat_norm(hv_ref)
                    )
                    key = (act, dtype, r)
                    table[key] = max(table.get(key, 0.0), err)
    for r in radii:
        cells = [table[(a, d, r)] for a in ("tanh", "relu") for d in (torch.float64, torch.float32)]
        print(
            f"{r:>9.2e} | {cells[0]:>9.1e} {cells[1]:>9.1e} | {cells[2]:>9.1e} {cells[3]:>9.1e}"
            f" | {flips[r]:>22.3g}"
        )
    print(
        f"defaults: float64 r = {default_fd_radius(torch.float64):.2e}, "
        f"float32 r = {default_fd_radius(torch.float32):.2e}"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4000, help="samples (full batch)")
    ap.add_argument("--acc-rows", type=int, default=4000, help="rows used by the accuracy check")
    ap.add_argument("--repeats", type=int, default=9, help="timed rounds after warm-up")
    ap.add_argument("--act", choices=sorted(ACTS), default="relu")
    ap.add_argument("--lr", type=float, default=0.1, help="h; μ = h/4 (the IGR coefficient)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fd-sweep", action="store_true", help="also print FD error vs radius")
    ap.add_argument("--sweep-seeds", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    mu = args.lr / 4
    x, y = data(args.rows)
    base = mlp(args.act)
    n_params = sum(p.numel() for p in base.parameters())
    steps = make_steps(base, x, y, lr=1e-3, mu=mu)  # tiny lr: the model barely moves while timed
    times = time_steps(steps, args.repeats)
    flops = {k: matmul_flops(fn) for k, fn in steps.items()}
    acc = accuracy(base, x[: args.acc_rows], y[: args.acc_rows], mu)

    wall0, cpu0 = times["gradient step"]
    print(
        f"One optimizer step vs one plain gradient step: MLP 40-512-512-10 ({args.act}, "
        f"{n_params:,} params), {args.rows} rows full batch, float32, "
        f"{torch.get_num_threads()} threads, mu = h/4 = {mu:g}"
    )
    print(
        f"median of {args.repeats} interleaved repeats after 2 warm-ups; "
        f"baseline {wall0 * 1e3:.0f} ms wall, {cpu0 * 1e3:.0f} ms CPU"
    )
    print(
        f"accuracy: {min(args.acc_rows, args.rows)} rows, each row's g~ = g + 2mu*Hg in float32 "
        "vs the exact float64 g~"
    )
    print(
        f"{'step':<24}{'wall ms':>9}{'x wall':>8}{'x CPU':>8}{'x matmul FLOPs':>16}"
        f"{'rel.err g~':>12}{'rel.err 2mu*Hg':>16}"
    )
    for k, (w, c) in times.items():
        e = acc.get(k if k != "gradient step" else "GD")
        err = f"{e[0]:>12.1e}{e[1]:>16.1e}" if e else ""
        print(
            f"{k:<24}{w * 1e3:>9.0f}{w / wall0:>8.2f}{c / cpu0:>8.2f}"
            f"{flops[k] / flops['gradient step']:>16.2f}{err}"
        )
    print("targets: EGR exact <= 2.2x, EGR FD <= 1.6x a gradient step (see docs/optimizers.md)")
    if args.fd_sweep:
        fd_sweep(args.rows, args.sweep_seeds)


if __name__ == "__main__":
    main()
