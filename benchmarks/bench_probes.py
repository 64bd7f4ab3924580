"""λ_max to 1e-6 on a trained MLP: HVP counts and time, ours vs PyHessian vs hessian-eigenthings.

Problem: MLP 40→256→256→10 (ReLU, float64, 78k parameters) trained by full-batch
GD on MNIST-1D (generated offline with ``mnist1d.data.make_dataset``), N samples,
cross-entropy. Reference: ARPACK (``scipy.sparse.linalg.eigsh``) with tol=0.

Columns: HVPs = Hessian-vector products the method spent (ours includes the
explicit residual check); wall/CPU = seconds for the call; rel. error =
|λ − λ_ref|/λ_ref; "HVPs to 1e-6" = the first product after which the
method's own running estimate stays within 1e-6 of λ_ref (an oracle count,
same start vector). Peer rows are skipped with a message when the package is
not importable; install them only in a separate venv (see docs/probes.md).

Then: HVP cost per form as a multiple of one gradient (CPU time, one thread),
and the peak memory of a full-data probe at two data-set sizes and two chunk
sizes, each in a fresh subprocess.

    python benchmarks/bench_probes.py [--n 2000] [--steps 300] [--lr 0.2]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from implicit_reg.core.hvp import HVP_METHODS
from implicit_reg.probes import HessianOperator, arpack_eigsh, lanczos, power_iteration
from implicit_reg.probes.krylov import Run, random_unit, rows_of, step_together

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hvp import interleaved_min_times  # noqa: E402

TARGET = 1e-6


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).double()


def mnist1d(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # generated in memory, no download
    return torch.tensor(d["x"][:n], dtype=torch.float64), torch.tensor(d["y"][:n]).long()


def train(model: nn.Module, X, y, *, steps: int, lr: float) -> float:
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        model.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        return float(loss_fn(model(X), y))


def first_within(history: list[float], lam: float) -> int | str:
    """1-based index after which every estimate stays within TARGET of lam ("never": not reached)."""
    ok = [abs(h - lam) <= TARGET * abs(lam) for h in history]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return "never"


class Timer:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def lanczos_history(op, steps: int, seed: int) -> list[float]:
    """Top Ritz value after each Lanczos step (same start vector as ``lanczos(seed=seed)``)."""
    gen = torch.Generator(device=op.device).manual_seed(seed)
    run = Run(random_unit(op.dim, gen, op.device)[:, None], gen=gen)
    out = []
    for _ in range(steps):
        step_together([run], rows_of(op), steps)
        out.append(float(run.ritz()[0][-1]))
    return out


def power_history(op, steps: int, seed: int) -> list[float]:
    gen = torch.Generator(device=op.device).manual_seed(seed)
    v = random_unit(op.dim, gen, op.device)
    out = []
    for _ in range(steps):
        w = op.matvec(v)
        out.append(float(v @ w))
        v = w / w.norm()
    return out


def pyhessian_rows(model, X, y, lam, max_hist):
    try:
        import importlib

        ph = importlib.import_module(
            "pyhessian.hessian"
        )  # the module; the package attribute is the class
    except ImportError as err:
        print(
            f"  [skip] PyHessian rows: pyhessian not importable ({err}); "
            "install it in a separate venv (docs/probes.md)"
        )
        return []
    rows = []
    original = ph.hessian_vector_product
    for label, kwargs in (
        ("PyHessian power, default (tol=1e-3)", {}),
        ("PyHessian power, tol=1e-6", {"maxIter": 1000, "tol": 1e-6}),
    ):
        history = []

        def counting(gradsH, params, v, history=history):
            hv = original(gradsH, params, v)
            history.append(float(sum((h * u).sum() for h, u in zip(hv, v))))
            return hv

        ph.hessian_vector_product = counting
        try:
            torch.manual_seed(0)  # PyHessian draws its start vector from the global RNG
            m = copy.deepcopy(model)  # it calls model.eval() and leaves .grad with a graph
            with Timer() as t:
                est = ph.hessian(m, nn.CrossEntropyLoss(), data=(X, y), cuda=False).eigenvalues(
                    **kwargs
                )[0][0]
        finally:
            ph.hessian_vector_product = original
        rows.append((label, len(history), t, est, first_within(history, lam)))
    return rows


def eigenthings_rows(model, X, y, lam, m_max):
    try:
        import hessian_eigenthings as he
    except ImportError as err:
        print(
            f"  [skip] hessian-eigenthings rows: not importable ({err}); "
            "install it in a separate venv (docs/probes.md)"
        )
        return []
    rows = []
    loss = he.supervised_loss(nn.CrossEntropyLoss())

    def op_for(batches):
        op = he.HessianOperator(model, batches, loss)
        op.count = 0
        inner = op.matvec

        def mv(v):
            op.count += 1
            return inner(v)

        op.matvec = mv
        return op

    full = [(X, y)]
    op = op_for(full)
    with Timer() as t:
        res = he.lanczos(op, k=1, which="LA", seed=0)
    rows.append(
        ("eigenthings lanczos, default (k=1)", op.count, t, float(res.eigenvalues[0]), None)
    )
    # oracle: the leading m×m tridiagonal of one long run = lanczos(max_iter=m) from the same v0
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64, generator=gen)
    td = he.lanczos_tridiagonal(op_for(full), v0, m_max, reorthogonalize=True)
    a, b = td.alphas.numpy(), td.betas.numpy()
    hist = []
    for m in range(1, len(a) + 1):
        T = np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
        hist.append(float(np.linalg.eigvalsh(T)[-1]))
    m_star = first_within(hist, lam)
    if m_star != "never":
        op = op_for(full)
        with Timer() as t:
            res = he.lanczos(op, k=1, which="LA", seed=0, max_iter=max(m_star, 2))
        rows.append(
            (
                f"eigenthings lanczos, max_iter={m_star}",
                op.count,
                t,
                float(res.eigenvalues[0]),
                m_star,
            )
        )
    # unequal batch sizes: averaged per batch, not per sample
    n = len(X)
    cut = (3 * n) // 4
    op = op_for([(X[:cut], y[:cut]), (X[cut:], y[cut:])])
    with Timer() as t:
        res = he.lanczos(
            op, k=1, which="LA", seed=0, max_iter=(m_star if m_star != "never" else 30) + 10
        )
    rows.append(
        (
            f"eigenthings lanczos, batches {cut}+{n - cut}",
            op.count,
            t,
            float(res.eigenvalues[0]),
            None,
        )
    )
    return rows


def eigen_table(model, X, y, args) -> None:
    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    with Timer() as t:
        ref = arpack_eigsh(op, 1, tol=0.0)
    lam = float(ref.eigenvalues[0])
    lz_hist = lanczos_history(HessianOperator(model, nn.CrossEntropyLoss(), (X, y)), 60, seed=0)
    pw_hist = power_history(
        HessianOperator(model, nn.CrossEntropyLoss(), (X, y)), args.power_hist, seed=0
    )
    rows = [("ARPACK eigsh tol=0 (reference)", ref.n_hvp, t, lam, None)]
    for label, fn, hist in (
        ("ours: lanczos (default tol)", lambda o: lanczos(o, 1, seed=0), lz_hist),
        ("ours: lanczos tol=1e-4", lambda o: lanczos(o, 1, tol=1e-4, seed=0), lz_hist),
        (
            "ours: power_iteration (default tol)",
            lambda o: power_iteration(o, max_iter=args.power_hist, seed=0),
            pw_hist,
        ),
    ):
        o = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
        with Timer() as t:
            res = fn(o)
        rows.append((label, res.n_hvp, t, float(res.eigenvalues[0]), first_within(hist, lam)))
    rows += pyhessian_rows(model, X, y, lam, args.power_hist)
    rows += eigenthings_rows(model, X, y, lam, 60)
    ev2 = arpack_eigsh(op, 2, tol=0.0).eigenvalues
    print(
        f"\nλ_max on the trained model: λ1 = {lam:.12g}, λ2 = {float(ev2[1]):.6g} "
        f"(λ2/λ1 = {float(ev2[1]) / lam:.3f})"
    )
    print(
        f"{'method':<42}{'HVPs':>6}{'wall s':>9}{'CPU s':>8}{'λ_max':>18}{'rel. error':>12}{'HVPs to 1e-6':>14}"
    )
    for label, n_hvp, t, est, oracle in rows:
        err = (est - lam) / abs(lam)
        print(
            f"{label:<42}{n_hvp:>6}{t.wall:>9.2f}{t.cpu:>8.2f}{est:>18.12g}{err:>12.1e}"
            f"{'-' if oracle is None else oracle:>14}"
        )


def hvp_cost_table(model, X, y, repeats: int) -> None:
    v = torch.randn(
        sum(p.numel() for p in model.parameters()),
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    ops = {
        m: HessianOperator(model, nn.CrossEntropyLoss(), (X, y), chunk_size=500, method=m)
        for m in HVP_METHODS
    }
    fns = {"gradient": ops["double_backward"].gradient}
    fns.update({m: (lambda op=op: op.matvec(v)) for m, op in ops.items()})
    t = interleaved_min_times(fns, repeats)
    print(f"\nHVP cost on the trained model (CPU time, best of {repeats} interleaved rounds)")
    print(f"{'form':<18}{'ms':>9}{'× gradient':>12}")
    for k in fns:
        print(f"{k:<18}{1e3 * t[k]:>9.1f}{t[k] / t['gradient']:>12.2f}")


MEMORY_CHILD = "--memory-child"


def _status_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status, in bytes. (Not
    ``getrusage().ru_maxrss``: Linux keeps that across execve, so a child
    started from a big parent would report the parent's size.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(n: int, chunk: int | None) -> None:
    """Run in a fresh process: peak RSS growth of 3 full-data HVPs (Lanczos steps)."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 40, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=g)
    op = HessianOperator(mlp(), nn.CrossEntropyLoss(), (X, y), chunk_size=chunk)
    base = _status_bytes("VmRSS")
    lanczos(op, 1, max_iter=3, tol=0.0)
    print(f"{_status_bytes('VmHWM') - base} {base}")


def memory_table(sizes, chunks) -> None:
    print(
        "\nPeak memory of a full-data probe (3 Lanczos steps; peak RSS above the RSS after building"
        " model and data; median of 3 fresh processes)"
    )
    print(f"{'N':>8}{'chunk':>8}{'peak − base MiB':>18}")
    for chunk in chunks:
        for n in sizes:
            peaks = sorted(
                int(subprocess.run(
                    [sys.executable, __file__, MEMORY_CHILD, str(n), str(chunk)],
                    capture_output=True, text=True, check=True,
                ).stdout.split()[0])
                for _ in range(3)
            )  # fmt: skip
            print(f"{n:>8}{str(chunk):>8}{peaks[1] / 2**20:>18.1f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == MEMORY_CHILD:
        memory_child(int(sys.argv[2]), None if sys.argv[3] == "None" else int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="training samples of MNIST-1D")
    ap.add_argument("--steps", type=int, default=300, help="full-batch GD steps")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--power-hist", type=int, default=1000, help="max power iterations")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["eigen", "cost", "memory"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, y = mnist1d(args.n)
    model = mlp()
    with Timer() as t:
        loss = train(model, X, y, steps=args.steps, lr=args.lr)
    print(
        f"MLP 40-256-256-10 ReLU float64 ({sum(p.numel() for p in model.parameters())} params), "
        f"MNIST-1D N={args.n}, {args.steps} GD steps at lr={args.lr} -> loss {loss:.4f} "
        f"({t.wall:.0f} s); torch {torch.__version__}, threads={torch.get_num_threads()}"
    )
    if "eigen" not in args.skip:
        eigen_table(model, X, y, args)
    if "cost" not in args.skip:
        hvp_cost_table(model, X, y, args.repeats)
    if "memory" not in args.skip:
        memory_table(sizes=(2000, 16000), chunks=(500, None))


if __name__ == "__main__":
    main()
