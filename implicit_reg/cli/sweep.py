"""``implicit-reg sweep``: a grid of runs from a TOML file and/or options, resumable and parallel."""

from __future__ import annotations

from pathlib import Path

import typer

from ..engine.ray_backend import select_backend
from ..engine.sweep import (
    Backend,
    SweepReport,
    SweepSpec,
    load_sweep_file,
    parse_grid_option,
    parse_set_option,
)
from . import app
from .train import bad_input


def build_spec(
    file: str | None, sets: list[str] | None = None, grids: list[str] | None = None
) -> SweepSpec:
    """The spec of a file, with ``--set`` fields added to [base] and ``--grid`` axes to [grid]
    (a ``--grid`` axis replaces the file's axis or base value of the same field)."""
    spec = load_sweep_file(file) if file is not None else SweepSpec(name="sweep")
    base, grid = dict(spec.base), dict(spec.grid)
    for text in sets or []:
        key, value = parse_set_option(text)
        grid.pop(key, None)
        base[key] = value
    for text in grids or []:
        key, values = parse_grid_option(text)
        base.pop(key, None)
        grid[key] = values
    if not base and not grid:
        raise ValueError("nothing to sweep: give a sweep file and/or --set/--grid options")
    return SweepSpec(base=base, grid=grid, name=spec.name, description=spec.description)


def sweep_runs(
    file: str | None,
    out: str | None = None,
    *,
    sets: list[str] | None = None,
    grids: list[str] | None = None,
    workers: int = 1,
    resume: bool = True,
    retry_failed: bool = False,
    progress: bool = True,
    backend: Backend | None = None,
    vectorize: bool | None = None,
) -> SweepReport:
    """The plain function behind the command (tests call it directly); ``backend``
    overrides ``workers`` (e.g. :func:`implicit_reg.engine.ray_backend.ray_backend`);
    ``vectorize`` as in :func:`~implicit_reg.engine.sweep.run_sweep` (None, the default:
    the planned jobs of :mod:`implicit_reg.engine.plan`; False: one run at a time)."""
    from ..engine.sweep import run_sweep

    spec = build_spec(file, sets, grids)
    out_dir = Path(out) if out is not None else Path("sweeps") / spec.name
    return run_sweep(
        spec, out_dir, workers=workers, resume=resume, retry_failed=retry_failed,
        progress=progress, backend=backend, vectorize=vectorize,
    )  # fmt: skip


@app.command("sweep")
def sweep(
    file: str | None = typer.Argument(
        None, help="Sweep file (.toml): [base] fields and [grid] lists."
    ),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Sweep directory (default: sweeps/<name>)."
    ),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE added to [base] (repeatable)."),
    grid: list[str] = typer.Option(
        [], "--grid", help="KEY=V1,V2,... or KEY=geom:START:STOP:NUM (repeatable)."
    ),
    workers: int = typer.Option(1, "--workers", "-w", help="Parallel worker processes (spawned)."),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Skip runs already complete on disk."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="With --resume, redo failed runs too."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the grid and the run count, run nothing."
    ),
    backend: str = typer.Option(
        "local",
        "--backend",
        help="local (this machine, --workers processes) or ray (one Ray "
        "task per planned job, here or on a cluster; needs the ray extra, see docs/ray.md).",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster to join (HOST:6379 or auto); default: start "
        "Ray on this machine for the sweep.",
    ),
    num_cpus: float = typer.Option(1.0, "--num-cpus", help="Ray: CPUs per task."),
    num_gpus: float = typer.Option(
        0.0, "--num-gpus", help="Ray: GPUs per task (0.25: four tasks share a GPU)."
    ),
    max_retries: int = typer.Option(
        3, "--max-retries", help="Ray: reruns of a task whose worker died."
    ),
    vectorize: bool = typer.Option(
        True,
        "--vectorize/--no-vectorize",
        help="Plan the sweep (the default): runs that differ only in lr, seed, data seed, "
        "label noise, EGR coefficient or stopping thresholds train as one ensemble "
        "(MLP and random features under GD/SGD: also momentum, weight decay, and widths "
        "packed together), at most 64 members; the jobs run longest first on the "
        "--workers processes or as Ray tasks. The files are the same (meta.json says "
        "how each run was trained); the numbers equal serial runs to rounding (float64: "
        "1e-10 relative), and float32 training can amplify rounding over long runs "
        "(docs/vectorized.md). --no-vectorize trains every run alone, one per task.",
    ),
) -> None:
    """Run every point of a grid (Cartesian product); rerunning resumes where it stopped.

    Complete runs are skipped; a run with --set checkpoint_every=K continues
    from its last mid-run checkpoint instead of step 0.

    Examples:

      implicit-reg sweep examples/sweep_lr_width.toml --workers 2

      implicit-reg sweep examples/sweep_lr_width.toml --backend ray --ray-address HEAD:6379

      implicit-reg sweep --set dataset=teacher --set steps=200 --grid lr=0.01,0.1,1 --grid width=geom:4:1024:9 --out sweeps/quick

      implicit-reg summary sweeps/quick    (then: implicit-reg plot sweeps/quick --kind lr)
    """
    with bad_input():
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if dry_run:
            spec = build_spec(file, set_, grid)
            configs = spec.configs()
            typer.echo(f"sweep {spec.name!r}: {len(configs)} runs")
            for key, values in spec.grid.items():
                typer.echo(f"  {key}: {values}")
            if vectorize:
                from ..engine.plan import plan_sweep

                typer.echo(f"  vectorized: {plan_sweep(configs).line()}")
            return
        chosen = select_backend(
            backend, workers=workers, address=ray_address, num_cpus=num_cpus,
            num_gpus=num_gpus, max_retries=max_retries,
        )  # fmt: skip
        report = sweep_runs(
            file, out, sets=set_, grids=grid, workers=workers, resume=resume,
            retry_failed=retry_failed, progress=progress, backend=chosen, vectorize=vectorize,
        )  # fmt: skip
    typer.echo(report.line())
    if report.lost:
        raise typer.Exit(1)
