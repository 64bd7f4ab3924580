"""Batched curvature products: estimators one vector at a time vs in blocks vs curvlinops;
matvec and matmat against a plain double-backward HVP on a BatchNorm CNN; warm-started
sharpness tracking; peak memory of ``matmat``.

Problems (cross-entropy):

- ``small``: MLP 10→32→32→4 (tanh, 1,540 parameters), 512 Gaussian samples,
  random labels, float64, one thread;
- ``mnist1d``: MLP 40→256→256→10 (ReLU, 78k parameters) on 2,000 MNIST-1D
  samples (``mnist1d.data.make_dataset``, generated in memory), after 300
  full-batch GD steps at lr 0.2 (as ``bench_probes.py``), float64, one thread;
- ``cnn`` (issue 19): two 3×3 conv layers of 16 and 32 channels with
  BatchNorm, global average pooling and a linear head (5.4k parameters),
  2,048 random 3×16×16 inputs in chunks of 512, float32, two threads.

Table 1, per MLP: wall time of Hutchinson (99 products), Hutch++ (99),
SLQ (10 start vectors × 50 steps) and the top-5 eigenvalues, for

- "one-vector": every product a separate ``matvec`` (the operator is wrapped
  so that the estimators cannot see ``matmat``): the plain loop;
- "batched": the default ``matmat`` (block size from the memory budget, so an
  estimator's columns go in one pass; ``product="auto"``: per width class of
  block, the looped or the vmapped product, whichever its first block measured
  cheaper; the operator is kept across rounds, so the one measuring block falls in
  round 1); "batched loop" and "batched vmap": the same blocks through
  ``product="loop"`` (one forward and first backward per chunk, one second
  backward per column) and ``product="vmap"``; for top-5, block Lanczos p = 2, 5;
- "curvlinops": ``HessianLinearOperator`` with its own ``hutchinson_trace``,
  ``hutchpp_trace``, ``lanczos_approximate_spectrum`` (given the spectrum's
  boundaries, so it spends no products on estimating them) and SciPy ``eigsh``
  (k=5, tol=1e-8) on ``to_scipy()``. Skipped when curvlinops is not importable.

Table 2 (CNN): one full gradient, a hand-written double-backward HVP (the
model called directly, ``autograd.grad`` twice per chunk), ``matvec``, and
``matmat`` per column (8 columns) for both products, with the ratios the
issue asks for (matvec ÷ plain ≤ 1.1, matmat column ÷ matvec ≤ 1).

Each cell is min–max over ``--repeats`` rounds, methods interleaved within a
round: CPU seconds for the one-thread MLP tables (on a shared machine CPU time
tracks the work far better than wall time), wall seconds for the CNN. Ratios are of the minima, within this run; ``/proc/loadavg`` is printed
before and after (the machine is shared). Accuracy columns: trace estimates
against the exact trace (small problem: the trace of the explicit Hessian),
top-5 against ARPACK at tol=0.

Table 3: sharpness tracking along full-batch GD at the edge of stability (MSE
on a teacher, small MLP; 2,000 steps, λ_max probed every 100), HVPs of cold
Lanczos against Lanczos warm-started from the previous probe's eigenvector
(``run_probes(..., state=...)``), at the default tolerance and at 1e-4.

Table 4: peak memory of ``matmat`` of 32 vectors at two block sizes (4, 32) and two
data-set sizes (chunk 250), each in a fresh process.

curvlinops lives only in a separate benchmark venv, never in the package's
dependencies (``make bench-peers`` creates ``.venv-peers`` and runs this file):

    python3 -m venv .venv-peers && .venv-peers/bin/pip install torch==2.13.0
    echo torch==2.13.0 > /tmp/torch-pin.txt
    .venv-peers/bin/pip install -c /tmp/torch-pin.txt -e . curvlinops-for-pytorch
    .venv-peers/bin/python benchmarks/bench_probes_batched.py [--skip eos memory]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch
from torch import nn

from implicit_reg.probes import (
    HessianOperator,
    arpack_eigsh,
    hutchinson,
    hutchpp,
    lanczos,
    run_probes,
    slq_density,
)

try:
    import curvlinops
except ImportError as err:  # benchmark venv only, never a package dependency
    curvlinops, CURVLINOPS_ERR = None, err


class OneAtATime:
    """The operator with ``matvec`` only: every estimator falls back to one product per vector."""

    def __init__(self, op):
        self.op = op
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    @property
    def n_hvp(self):
        return self.op.n_hvp

    def matvec(self, v):
        return self.op.matvec(v)


def mlp(dims, act, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double()


def small_problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (512,), generator=g)
    return "MLP 10-32-32-4 tanh, N=512", mlp((10, 32, 32, 4), nn.Tanh), X, y


def mnist1d_problem(n=2000, steps=300, lr=0.2):
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())
    X = torch.tensor(d["x"][:n], dtype=torch.float64)
    y = torch.tensor(d["y"][:n]).long()
    model = mlp((40, 256, 256, 10), nn.ReLU)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        model.zero_grad()
        loss_fn(model(X), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
    model.zero_grad(set_to_none=True)
    return f"MLP 40-256-256-10 ReLU, MNIST-1D N={n}, {steps} GD steps", model, X, y


def timed(fn, clock=time.perf_counter):
    t = clock()
    out = fn()
    return clock() - t, out


def estimator_table(name, model, X, y, repeats, exact_trace, estimators=None, one_vector=True):
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (X, y))  # block size from the memory budget, auto
    opl = HessianOperator(model, loss_fn, (X, y), product="loop")
    opv = HessianOperator(model, loss_fn, (X, y), product="vmap")
    opr = HessianOperator(model, loss_fn, (X, y), product="rop")
    one = OneAtATime(HessianOperator(model, loss_fn, (X, y)))
    ref = bounds = None
    if not estimators or {"SLQ", "top-5"} & set(estimators):  # ARPACK: slow at 78k parameters
        ref = arpack_eigsh(HessianOperator(model, loss_fn, (X, y)), 5, tol=0.0).eigenvalues
        lo = arpack_eigsh(HessianOperator(model, loss_fn, (X, y)), 1, which="SA", tol=1e-4)
        bounds = (float(lo.eigenvalues[0]), float(ref[0]))
    cells = {
        ("Hutchinson 99", "one-vector"): lambda: (
            hutchinson(one, min_samples=99, max_samples=99).estimate
        ),
        ("Hutchinson 99", "batched"): lambda: (
            hutchinson(op, min_samples=99, max_samples=99).estimate
        ),
        ("Hutchinson 99", "batched loop"): lambda: (
            hutchinson(opl, min_samples=99, max_samples=99).estimate
        ),
        ("Hutchinson 99", "batched vmap"): lambda: (
            hutchinson(opv, min_samples=99, max_samples=99).estimate
        ),
        ("Hutchinson 99", "batched rop"): lambda: (
            hutchinson(opr, min_samples=99, max_samples=99).estimate
        ),
        ("Hutch++ 99", "one-vector"): lambda: hutchpp(one, n_hvp=99).estimate,
        ("Hutch++ 99", "batched"): lambda: hutchpp(op, n_hvp=99).estimate,
        ("Hutch++ 99", "batched loop"): lambda: hutchpp(opl, n_hvp=99).estimate,
        ("Hutch++ 99", "batched vmap"): lambda: hutchpp(opv, n_hvp=99).estimate,
        ("Hutch++ 99", "batched rop"): lambda: hutchpp(opr, n_hvp=99).estimate,
        ("SLQ 10x50", "one-vector"): lambda: slq_density(one, n_steps=50, n_runs=10),
        ("SLQ 10x50", "batched"): lambda: slq_density(op, n_steps=50, n_runs=10),
        ("SLQ 10x50", "batched loop"): lambda: slq_density(opl, n_steps=50, n_runs=10),
        ("SLQ 10x50", "batched vmap"): lambda: slq_density(opv, n_steps=50, n_runs=10),
        ("SLQ 10x50", "batched rop"): lambda: slq_density(opr, n_steps=50, n_runs=10),
        ("top-5", "one-vector"): lambda: lanczos(one, 5, block_size=1),
        ("top-5", "batched p=2"): lambda: lanczos(op, 5, block_size=2),
        ("top-5", "batched p=5"): lambda: lanczos(op, 5, block_size=5),
        ("top-5", "rop p=5"): lambda: lanczos(opr, 5, block_size=5),
    }
    if curvlinops is not None:
        from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
        from scipy.sparse.linalg import eigsh

        A = curvlinops.HessianLinearOperator(
            model, loss_fn, list(model.parameters()), [(X, y)], check_deterministic=False
        )
        cells[("Hutchinson 99", "curvlinops")] = lambda: float(curvlinops.hutchinson_trace(A, 99))
        cells[("Hutch++ 99", "curvlinops")] = lambda: float(curvlinops.hutchpp_trace(A, 99))
        cells[("SLQ 10x50", "curvlinops")] = lambda: lanczos_approximate_spectrum(
            A, 50, num_repeats=10, boundaries=bounds
        )
        cells[("top-5", "curvlinops")] = lambda: eigsh(A.to_scipy(), k=5, which="LA", tol=1e-8)[0]
    else:
        print(f"  [skip] curvlinops columns: not importable ({CURVLINOPS_ERR})")
    if estimators:
        cells = {k: f for k, f in cells.items() if k[0].split()[0] in estimators}
    if not one_vector:  # the baseline column of the ratios becomes the loop's
        cells = {k: f for k, f in cells.items() if k[1] != "one-vector"}
    times = {k: [] for k in cells}
    outs = {}
    for r in range(repeats):
        for k, fn in cells.items():
            torch.manual_seed(r)  # curvlinops draws its probes from the global RNG
            t, outs[k] = timed(fn, time.process_time)  # one thread: CPU time = work done
            times[k].append(t)
    print(
        f"\n{name}: CPU seconds (one thread), min–max of {repeats} interleaved rounds "
        f"(block size {op.block_size}; load {_load()})"
    )
    choice = {1 << (k - 1): p for k, p in sorted(op.product_choice.items())}
    print(f"auto's choice per block width class (≥ width: product): {choice}")
    base_name = "one-vector" if one_vector else "batched loop"
    print(
        f"{'estimator':<15}{'method':<14}{'seconds':>16}{'÷ ' + base_name:>16}{'÷ curvlinops':>14}  accuracy"
    )
    for (est, meth), ts in times.items():
        base = min(times[(est, base_name)])
        cl = times.get((est, "curvlinops"))
        out = outs[(est, meth)]
        if est.startswith("Hutch"):
            acc = f"estimate {out:.5g}" + (
                ""
                if exact_trace is None
                else f", rel. error {abs(out - exact_trace) / abs(exact_trace):.1e}"
            )
        elif est == "top-5":
            vals = (
                out.eigenvalues
                if hasattr(out, "eigenvalues")
                else torch.as_tensor(sorted(out)[::-1].copy())
            )
            err = float(((vals.double() - ref).abs() / ref.abs()).max())
            acc = f"max rel. error {err:.1e}" + (
                f", {out.n_hvp} HVPs" if hasattr(out, "n_hvp") else ""
            )
        else:
            acc = f"{out.n_hvp} HVPs" if hasattr(out, "n_hvp") else ""
        rng = f"{min(ts):.3f}–{max(ts):.3f}"
        r1 = f"{min(ts) / base:.2f}"
        r2 = f"{min(ts) / min(cl):.2f}" if cl else "-"
        print(f"{est:<15}{meth:<14}{rng:>16}{r1:>16}{r2:>14}  {acc}")
    if exact_trace is not None:
        print(f"exact trace {exact_trace:.6g}")


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class SmallCNN(nn.Module):
    """Issue 19's CNN: conv3×3(3→16)-BN-ReLU, conv3×3(16→32)-BN-ReLU, mean pool, linear 32→10."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def cnn_table(repeats: int, threads: int = 2, n: int = 2048, chunk: int = 512, cols: int = 8):
    """matvec and matmat per column against a plain double-backward HVP (issue 19's CNN)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SmallCNN()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    model.train()
    with torch.no_grad():
        model(X[:chunk])  # running statistics away from their initial values
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (X, y), chunk_size=chunk)
    opv = HessianOperator(model, loss_fn, (X, y), chunk_size=chunk, product="vmap")
    V = torch.randn(op.dim, cols, generator=g)
    v = V[:, 0].contiguous()
    params = list(model.parameters())
    vs = op.unflatten(v)

    def plain():  # the hand-written HVP: the model itself, autograd.grad twice per chunk
        was = model.training
        model.eval()
        acc = [torch.zeros_like(p) for p in params]
        for i in range(0, n, chunk):
            loss = loss_fn(model(X[i : i + chunk]), y[i : i + chunk]) * len(X[i : i + chunk])
            gs = torch.autograd.grad(loss, params, create_graph=True)
            for a, h in zip(acc, torch.autograd.grad(gs, params, grad_outputs=vs)):
                a.add_(h)
        model.train(was)
        return torch.cat([a.reshape(-1) for a in acc]) / n

    cells = {
        "gradient": (op.gradient, 1),
        "plain double-backward HVP": (plain, 1),
        "matvec": (lambda: op.matvec(v), 1),
        f"matmat loop, {cols} columns": (lambda: op.matmat(V), cols),
        f"matmat vmap, {cols} columns": (lambda: opv.matmat(V), cols),
    }
    if curvlinops is not None:
        A = curvlinops.HessianLinearOperator(
            model, loss_fn, params, [(X[i : i + chunk], y[i : i + chunk]) for i in range(0, n, chunk)],
            check_deterministic=False,
        )  # fmt: skip
        model.eval()  # curvlinops runs the model in the mode it finds it in
        cells[f"curvlinops, {cols} columns"] = (lambda: A @ V, cols)
    err = float((op.matvec(v) - plain()).abs().max() / plain().abs().max())
    err_mm = float((op.matmat(V) - opv.matmat(V)).abs().max() / opv.matmat(V).abs().max())
    times = {k: [] for k in cells}
    for r in range(repeats):
        keys = list(cells)[r % len(cells) :] + list(cells)[: r % len(cells)]
        for k in keys:
            fn, _ = cells[k]
            times[k].append(timed(fn)[0])
    model.train()
    torch.set_num_threads(before)
    ms = {k: 1e3 * min(t) / cells[k][1] for k, t in times.items()}
    print(
        f"\nCNN conv16-BN-conv32-BN, {op.dim} params, N={n}, chunks of {chunk}, float32, "
        f"{threads} threads: ms per product (per column for blocks), min of {repeats} "
        f"interleaved rounds (load {_load()})"
    )
    for k, t in times.items():
        print(f"  {k:<30}{ms[k]:>9.1f}  (max {1e3 * max(t) / cells[k][1]:.1f})")
    mm = ms[f"matmat loop, {cols} columns"]
    print(
        f"  matvec ÷ plain HVP {ms['matvec'] / ms['plain double-backward HVP']:.2f} (goal ≤ 1.1); "
        f"matmat column ÷ matvec {mm / ms['matvec']:.2f} (goal ≤ 1); "
        f"vmap column ÷ loop column {ms[f'matmat vmap, {cols} columns'] / mm:.2f}; "
        f"rel. diff matvec vs plain {err:.1e}, loop vs vmap {err_mm:.1e}"
    )


def eos_table(steps=2000, every=100, lr=1.48):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 10, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    teacher = mlp((10, 16, 4), nn.Tanh, seed=1)
    with torch.no_grad():
        Y = teacher(X)
    model = mlp((10, 32, 32, 4), nn.Tanh)
    loss_fn = nn.MSELoss()
    tols = {"default (√ε)": None, "1e-4": 1e-4}
    states = {k: {} for k in tols}
    cold = {k: 0 for k in tols}
    warm = {k: 0 for k in tols}
    worst = {k: 0.0 for k in tols}
    lams, ggn, sines = [], [], []
    names = ["lambda_max", "lambda_max_hvps"]
    for step in range(steps + 1):
        if step % every == 0:
            for k, tol in tols.items():
                c = run_probes(names, model, loss_fn, (X, Y), lanczos_tol=tol)
                prev = states[k].get("lambda_max.vec")
                w = run_probes(names, model, loss_fn, (X, Y), lanczos_tol=tol, state=states[k])
                if tol is None and prev is not None:  # how far the top eigenvector moved
                    cos = float(prev[:, 0].double() @ states[k]["lambda_max.vec"][:, 0].double())
                    sines.append(max(0.0, 1 - cos * cos) ** 0.5)
                cold[k] += int(c["lambda_max_hvps"])
                warm[k] += int(w["lambda_max_hvps"])
                worst[k] = max(
                    worst[k], abs(c["lambda_max"] - w["lambda_max"]) / abs(c["lambda_max"])
                )
            lams.append(c["lambda_max"])
            ggn.append(run_probes(["ggn_lambda_max"], model, loss_fn, (X, Y))["ggn_lambda_max"])
        if step == steps:
            break
        model.zero_grad()
        loss_fn(model(X), Y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
    print(
        f"\nSharpness tracking: MLP 10-32-32-4 tanh, MSE on a teacher, N=512, full-batch GD lr={lr} "
        f"(2/h = {2 / lr:.4f}), {steps} steps, λ_max every {every} ({len(lams)} probes)"
    )
    print("λ_max(H) along the run:   " + " ".join(f"{v:.3f}" for v in lams))
    print("λ_max(GGN) along the run: " + " ".join(f"{v:.3f}" for v in ggn))
    sines.sort()
    print(
        f"sin∠(previous, new top eigenvector) between probes: median {sines[len(sines) // 2]:.2g}, "
        f"min {sines[0]:.2g}, max {sines[-1]:.2g}"
    )
    print(
        f"{'Lanczos tol':<16}{'cold HVPs':>10}{'warm HVPs':>10}{'warm/cold':>10}{'max |Δλ|/λ':>13}"
    )
    for k in tols:
        print(f"{k:<16}{cold[k]:>10}{warm[k]:>10}{warm[k] / cold[k]:>10.2f}{worst[k]:>13.1e}")


MEMORY_CHILD = "--memory-child"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def memory_child(n: int, block: int) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 40, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=g)
    op = HessianOperator(
        mlp((40, 256, 256, 10), nn.ReLU),
        nn.CrossEntropyLoss(),
        (X, y),
        chunk_size=250,
        block_size=block,
    )
    V = torch.randn(op.dim, 32, generator=g, dtype=torch.float64)
    base = _status_bytes("VmRSS")
    op.matmat(V)
    print(f"{_status_bytes('VmHWM') - base}")


def memory_table() -> None:
    print(
        "\nPeak memory of matmat(V), V of 32 columns, MLP 40-256-256-10, chunk 250 (peak RSS above the RSS"
        " after building model, data and V; median of 3 fresh processes)"
    )
    print(f"{'N':>8}{'block':>8}{'peak − base MiB':>18}")
    for block in (4, 32):
        for n in (1000, 8000):
            peaks = sorted(
                int(subprocess.run([sys.executable, __file__, MEMORY_CHILD, str(n), str(block)],
                                   capture_output=True, text=True, check=True).stdout.split()[0])
                for _ in range(3)
            )  # fmt: skip
            print(f"{n:>8}{block:>8}{peaks[1] / 2**20:>18.1f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == MEMORY_CHILD:
        memory_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-mnist1d", type=int, default=2)
    ap.add_argument("--repeats-cnn", type=int, default=3)
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["small", "mnist1d", "cnn", "eos", "memory"]
    )
    ap.add_argument(
        "--estimators",
        nargs="*",
        default=None,
        choices=["Hutchinson", "Hutch++", "SLQ", "top-5"],
        help="only these rows of table 1 (default: all)",
    )
    ap.add_argument(
        "--no-one-vector",
        action="store_true",
        help="drop the one-vector rows (ratios then against the batched loop)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, threads=1 (CNN: 2), curvlinops "
        f"{'absent' if curvlinops is None else 'present'}, load {_load()}"
    )
    if "small" not in args.skip:
        name, model, X, y = small_problem()
        op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
        exact = float(op.matmat(torch.eye(op.dim, dtype=torch.float64)).diagonal().sum())
        estimator_table(
            name, model, X, y, args.repeats, exact, args.estimators, not args.no_one_vector
        )
    if "mnist1d" not in args.skip:
        name, model, X, y = mnist1d_problem()
        estimator_table(
            name, model, X, y, args.repeats_mnist1d, None, args.estimators, not args.no_one_vector
        )
    if "cnn" not in args.skip:
        cnn_table(args.repeats_cnn)
    if "eos" not in args.skip:
        eos_table()
    if "memory" not in args.skip:
        memory_table()
    print(f"\nload at the end {_load()}")


if __name__ == "__main__":
    main()
