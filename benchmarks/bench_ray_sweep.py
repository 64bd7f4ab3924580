"""Wall time of one small sweep on each backend, side by side in one run.

The same sweep (MLPs on the teacher data set, full-batch GD) runs

- locally, one run after another, with 1 torch thread (the baseline: each
  worker of the other rows has 1 thread too) and with torch's default count
  (all cores; on a loaded machine oversubscription makes this much slower),
- locally on a process pool of 2 workers (``--workers 2``),
- on Ray started for the sweep (``--backend ray``: ``ray.init`` included),
- on Ray already running (a second sweep on the same instance: what a
  sweep against a cluster pays once workers are up).

Each row is a fresh sweep directory, so every row trains every run. The
table gives seconds and the ratio against the local serial sweep. On tiny
runs Ray's start-up and per-task overhead dominate; it pays when the runs are
long or when the cluster has more cores than this machine.

    .venv/bin/python benchmarks/bench_ray_sweep.py              # 8 runs x 200 steps
    .venv/bin/python benchmarks/bench_ray_sweep.py --steps 50   # smaller
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from implicit_reg.engine.sweep import SweepSpec, run_sweep


def sweep_spec(steps: int) -> SweepSpec:
    base = {"dataset": "teacher", "n_train": 256, "n_test": 256, "steps": steps, "probes": []}
    base["eval_every"] = max(1, steps // 4)
    grid = {"width": [16, 64], "lr": [0.05, 0.1], "seed": [0, 1]}
    return SweepSpec(base=base, grid=grid, name="bench")


def timed(label: str, fn, rows: list[tuple[str, float]]) -> None:
    t0 = time.perf_counter()
    report = fn()
    seconds = time.perf_counter() - t0
    if report.complete != report.total:
        raise SystemExit(f"{label}: {report.line()}")
    rows.append((label, seconds))
    print(f"  {label}: {seconds:.1f} s", flush=True)


def main(steps: int) -> None:
    spec = sweep_spec(steps)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"sweep: {spec.size} runs x {steps} steps, {cores} cores")
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_sweep(spec.configs()[:1], root / "warmup", progress=False)  # imports, data cache
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        timed("local, serial, 1 thread", lambda: run_sweep(spec, root / "s1", progress=False), rows)
        torch.set_num_threads(threads)
        timed(
            f"local, serial, {threads} threads",
            lambda: run_sweep(spec, root / "serial", progress=False),
            rows,
        )
        timed(
            "local, 2 processes",
            lambda: run_sweep(spec, root / "pool", workers=2, progress=False),
            rows,
        )
        try:
            import ray

            from implicit_reg.engine.ray_backend import ray_backend
        except ImportError:
            print("  ray: not installed (pip install 'implicit-reg[ray]'), rows skipped")
        else:
            timed(
                "ray, started for the sweep",
                lambda: run_sweep(spec, root / "ray_cold", backend=ray_backend(), progress=False),
                rows,
            )
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
            try:
                run_sweep(spec, root / "ray_warmup", backend=ray_backend(), progress=False)
                timed(
                    "ray, already running",
                    lambda: run_sweep(
                        spec, root / "ray_warm", backend=ray_backend(), progress=False
                    ),
                    rows,
                )
            finally:
                ray.shutdown()
    base = rows[0][1]
    print(f"\n{'backend':<28} {'wall s':>8} {'x serial, 1 thread':>19}")
    for label, seconds in rows:
        print(f"{label:<28} {seconds:>8.1f} {seconds / base:>19.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="GD steps per run")
    main(parser.parse_args().steps)
