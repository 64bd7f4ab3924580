"""``implicit-reg reproduce NAME|all``: run published-result reproductions."""

from __future__ import annotations

from pathlib import Path

import typer

from ..experiments import available_experiments
from ..experiments import reproduce as run_experiment
from ..report.report import SCALES, write_index
from . import app


def _names_help() -> str:
    try:
        return "Experiment: all, " + ", ".join(available_experiments()) + "."
    except FileNotFoundError:
        return "Experiment name, or 'all'."


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def reproduce(
    name: str = typer.Argument(..., help=_names_help()),
    scale: str = typer.Option(
        "small", help="smoke (seconds), small (<= 10 min on 2 cores each) or full (paper size)."
    ),
    out: Path = typer.Option(
        None,
        help="Directory for report.md and figures (default out/reproduce/NAME); "
        "with 'all', each experiment writes into OUT/NAME.",
    ),
) -> None:
    """Run one experiment (or all) and write report.md, PNG figures and CSV data.

    Example: implicit-reg reproduce igr-toy --scale small --out out/igr-toy
    """
    if scale not in SCALES:
        _fail(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    try:
        names = list(available_experiments())
    except FileNotFoundError as e:
        _fail(str(e))
    if name != "all" and name not in names:
        _fail(f"unknown experiment {name!r}; choose one of all, {', '.join(names)}")
    if name == "all":
        root = Path("out/reproduce") if out is None else out
        targets = {n: root / n for n in names}
    else:
        targets = {name: Path("out/reproduce") / name if out is None else out}
    failed = []
    for n, target in targets.items():
        typer.echo(f"{n}: running at scale {scale} into {target} ...")
        try:
            report = run_experiment(n, scale, target)
        except Exception as e:
            if name != "all":
                if isinstance(e, ValueError):  # bad input: one line, no traceback
                    _fail(f"{n}: {e}")
                raise
            typer.echo(f"error: {n} failed: {type(e).__name__}: {e}", err=True)
            failed.append(n)
            continue
        typer.echo(f"{n}: wrote {report.path} in {report.wall_time_s:.1f} s")
    if name == "all":
        typer.echo(f"index: {write_index(root)}")
    if failed:
        typer.echo(f"error: {len(failed)} of {len(targets)} failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
