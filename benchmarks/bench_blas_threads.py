"""LAPACK time with 1 vs. all BLAS threads (why `min_norm_fit` limits threads).

On small shared machines OpenBLAS's threaded SVD can run many times slower
with 2 threads than with 1 (oversubscription against other processes and
OpenBLAS's own threading overhead in the bidiagonalization). This script
times the calls `implicit_reg.workloads.models.min_norm_fit` makes, side by side in
one run, and prints a table with the ratio against the 1-thread baseline.

    .venv/bin/python benchmarks/bench_blas_threads.py            # default sizes
    .venv/bin/python benchmarks/bench_blas_threads.py 4000x1000  # one size
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from implicit_reg.workloads.models import min_norm_fit


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(sizes: list[tuple[int, int]], repeats: int = 1) -> None:
    n_threads = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    n_threads = max(n_threads, os.cpu_count() or 1, 2)
    rng = np.random.default_rng(0)
    print(
        f"BLAS: {[i.get('internal_api') for i in threadpool_info()]}; threads compared: 1 vs {n_threads}"
    )
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("min_norm_fit rows: the columns are the *outer* thread limit; it sets 1 inside")
    print(f"{'call':<28}{'shape':>12}{'1 thread s':>12}{f'{n_threads} threads s':>14}{'ratio':>8}")
    for m, n in sizes:
        a = rng.standard_normal((m, n))
        y = rng.standard_normal(m)
        calls = {
            "np.linalg.svd (thin)": lambda a=a: np.linalg.svd(a, full_matrices=False),
            "min_norm_fit (limited)": lambda a=a, y=y: min_norm_fit(a, y),
        }
        for name, fn in calls.items():
            with threadpool_limits(1):
                t1 = _time(fn, repeats)
            if name.startswith("min_norm_fit"):
                # min_norm_fit limits threads itself: this column checks that
                # an outer multi-thread setting does not slow it down.
                with threadpool_limits(n_threads):
                    tn = _time(fn, repeats)
            else:
                with threadpool_limits(n_threads):
                    tn = _time(fn, repeats)
            print(f"{name:<28}{f'{m}x{n}':>12}{t1:>12.2f}{tn:>14.2f}{tn / t1:>8.1f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args] or [(1000, 250), (4000, 1000)]
    main(sizes)
