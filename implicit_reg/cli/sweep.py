"""``implicit-reg sweep``: a grid of runs from a TOML file and/or options, resumable and parallel."""

from __future__ import annotations

from pathlib import Path

import typer

from ..sweep import SweepReport, SweepSpec, load_sweep_file, parse_grid_option, parse_set_option
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
) -> SweepReport:
    """The plain function behind the command (tests call it directly)."""
    from ..sweep import run_sweep

    spec = build_spec(file, sets, grids)
    out_dir = Path(out) if out is not None else Path("sweeps") / spec.name
    return run_sweep(
        spec, out_dir, workers=workers, resume=resume, retry_failed=retry_failed, progress=progress
    )


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
) -> None:
    """Run every point of a grid (Cartesian product); rerunning resumes where it stopped.

    Examples:

      implicit-reg sweep examples/sweep_lr_width.toml --workers 2

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
            return
        report = sweep_runs(
            file, out, sets=set_, grids=grid, workers=workers, resume=resume,
            retry_failed=retry_failed, progress=progress,
        )  # fmt: skip
    typer.echo(report.line())
    if report.lost:
        raise typer.Exit(1)
