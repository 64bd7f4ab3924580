"""``implicit-reg demo``: GD against EGR at the same learning rate."""

from __future__ import annotations

import typer

from ..demo import optimizer_demo
from . import app


@app.command()
def demo(
    lr: float = typer.Option(0.2, help="Step size h shared by GD and EGR."),
    steps: int = typer.Option(300, help="Full-batch steps per optimizer."),
    coeff: float = typer.Option(0.5, help="μ of the strongly regularized EGR run."),
    seed: int = typer.Option(0, help="Seed for data and initialization."),
) -> None:
    """Train one small model with GD and with EGR at the same lr and print where each ended.

    Example: implicit-reg demo --lr 0.2 --steps 300
    """
    if lr <= 0 or steps < 1 or coeff < 0:
        typer.echo("error: need lr > 0, steps >= 1 and coeff >= 0", err=True)
        raise typer.Exit(2)
    rows = optimizer_demo(lr=lr, steps=steps, coeff=coeff, seed=seed)
    typer.echo(f"{'optimizer':<10}{'mu':>10}{'steps':>7}{'loss':>12}{'|grad L|^2':>14}{'|theta|':>10}")
    for r in rows:
        typer.echo(
            f"{r.optimizer:<10}{r.coeff:>10.4g}{r.steps:>7}{r.loss:>12.5g}{r.grad_norm_sq:>14.4g}{r.weight_norm:>10.4g}"
        )
