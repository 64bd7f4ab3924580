"""``implicit-reg demo``: GD against EGR at the same learning rate, compared at equal loss."""

from __future__ import annotations

import typer

from ..experiments.demo import DemoResult, optimizer_demo
from . import app


@app.command()
def demo(
    lr: float = typer.Option(0.5, help="Step size h shared by GD and EGR."),
    coeff: float = typer.Option(0.3, help="μ of the strongly regularized EGR run."),
    target_loss: float = typer.Option(
        0.02, help="Each run stops when its training loss falls below this."
    ),
    steps: int = typer.Option(2000, help="Step budget per optimizer."),
    seed: int = typer.Option(0, help="Seed for data and initialization."),
) -> None:
    """Train one small model with GD and with EGR at the same lr; print where each ended.

    Each run stops when its full-batch training loss first falls below
    --target-loss, so ‖∇L‖² is compared at (about) equal loss.

    Example: implicit-reg demo --lr 0.5 --coeff 0.3
    """
    bad = []
    if not lr > 0:
        bad.append(f"--lr must be > 0 (got {lr})")
    if not coeff >= 0:
        bad.append(f"--coeff must be >= 0 (got {coeff})")
    if not target_loss > 0:
        bad.append(f"--target-loss must be > 0 (got {target_loss})")
    if steps < 1:
        bad.append(f"--steps must be >= 1 (got {steps})")
    if bad:
        typer.echo("error: " + "; ".join(bad), err=True)
        raise typer.Exit(2)
    rows = optimizer_demo(lr=lr, coeff=coeff, target_loss=target_loss, max_steps=steps, seed=seed)
    typer.echo(f"full-batch training at h = {lr:g}, each run stopped at loss < {target_loss:g}")
    typer.echo(
        f"{'optimizer':<10}{'mu':>8}{'steps':>7}{'loss':>11}{'|grad L|^2':>12}{'|theta|':>11}  where it ended"
    )
    for r in rows:
        typer.echo(_row(r, target_loss))
    gd, *egr = rows
    if not gd.diverged and gd.reached_target:
        for r in egr:
            if r.reached_target:
                change = 100 * (r.grad_norm_sq / gd.grad_norm_sq - 1)
                typer.echo(f"EGR(mu={r.coeff:g}) vs GD at equal loss: |grad L|^2 {change:+.1f}%")


def _row(r: DemoResult, target_loss: float) -> str:
    head = f"{r.optimizer:<10}{r.coeff:>8.4g}{r.steps:>7}"
    if r.diverged:
        return head + f"{'diverged':>11}{'-':>12}{'-':>11}  diverged at step {r.diverged_at}"
    where = (
        "reached the target loss"
        if r.reached_target
        else f"step budget spent, loss >= {target_loss:g}"
    )
    return head + f" {r.loss:>10.4g} {r.grad_norm_sq:>11.3e} {r.weight_norm:>10.4g}  {where}"
