"""``implicit-reg plot``: one figure of a sweep, written to PNG, SVG or PDF."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .train import bad_input


def plot_to_file(
    sweep_dir: str,
    kind: str = "lr",
    metric: str = "test_error",
    out: str | None = None,
    hue: str | None = "auto",
    style: str | None = None,
    where: list[str] | None = None,
) -> Path:
    """Draw figure ``kind`` of ``metric`` for a sweep and save it (default:
    SWEEP_DIR/figures/<kind>_<metric>.png). ``where``: ``["width=256", ...]``."""
    from ..engine.sweep import parse_set_option
    from ..report.plots import plot_sweep, save_figure

    path = Path(out) if out is not None else Path(sweep_dir) / "figures" / f"{kind}_{metric}.png"
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):  # fail before the work
        raise ValueError(f"unknown figure format {path.suffix!r}; use .png, .svg or .pdf")
    filters = dict(parse_set_option(w) for w in where or [])
    fig = plot_sweep(sweep_dir, kind, metric, hue=hue, style=style, where=filters)
    return save_figure(fig, path)


@app.command("plot")
def plot(
    sweep_dir: str = typer.Argument(..., help="A sweep directory (or a store root of runs)."),
    kind: str = typer.Option("lr", "--kind", "-k", help="lr | params | step | gap."),
    metric: str = typer.Option(
        "test_error", "--metric", "-m", help="Final metric (for gap: the measure on x)."
    ),
    hue: str = typer.Option("auto", "--hue", help="Column for colour; 'none' for one colour."),
    style: str | None = typer.Option(None, "--style", help="Column told apart by line style."),
    where: list[str] = typer.Option(
        [], "--where", help="KEY=VALUE: plot only these runs (repeatable)."
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Output file .png/.svg/.pdf."),
) -> None:
    """Plot a finished (or partial) sweep.

    Kinds: lr (metric vs learning rate, one line per width), params (metric vs
    parameter count, n·k dashed), step (metric vs step; 2/h lines for
    lambda_max), gap (measure vs generalization gap).

    Examples:

      implicit-reg plot sweeps/lr-width --kind lr --metric test_error --out fig.png

      implicit-reg plot sweeps/lr-width --kind step --metric lambda_max --where width=256 --out eos.svg

      implicit-reg plot sweeps/lr-width --kind gap --metric trace --hue width
    """
    with bad_input():
        path = plot_to_file(
            sweep_dir, kind, metric, out, hue=None if hue.lower() == "none" else hue,
            style=style, where=where,
        )  # fmt: skip
    typer.echo(f"wrote {path}")
