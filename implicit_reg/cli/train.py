"""``implicit-reg train``: one run from options and/or a config file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from ..engine.config import OPTIMIZERS, RunConfig
from ..workloads.losses import LOSSES
from . import app


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """Turn a ``ValueError`` into one line on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except ValueError as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` into typed config fields."""
    from ..engine.sweep import parse_set_option

    return dict(parse_set_option(s) for s in items or [])


def merge_sets(options: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """The named options with the ``--set`` fields added; a field given both ways is an error."""
    twice = sorted(k for k, v in sets.items() if options.get(k) is not None)
    if twice:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in twice)
        raise ValueError(f"{names} given both as an option and with --set; give it once")
    return {**options, **sets}


def build_config(config_file: str | None = None, **overrides: Any) -> RunConfig:
    """A validated config: the file (if any), then the overrides that are not None."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        return RunConfig.from_file(config_file, **given)
    return RunConfig.from_dict(given)


def format_summary(summary: dict[str, Any]) -> str:
    """The final numbers of one run, one per line."""
    skip = {"error", "config_hash"}
    lines = []
    for k, v in summary.items():
        if k in skip or v is None:
            continue
        lines.append(f"  {k:<22}{v:.6g}" if isinstance(v, float) else f"  {k:<22}{v}")
    return "\n".join(lines)


@app.command("train")
def train(
    config: str | None = typer.Option(
        None, "--config", "-c", help="Run config file (.toml or .json), e.g. a run's config.json."
    ),
    model: str | None = typer.Option(None, help="mlp, cnn1d, cnn, rf_relu or rf_fourier."),
    width: int | None = typer.Option(None, help="Hidden units / channels / random features."),
    depth: int | None = typer.Option(None, help="Hidden layers."),
    dataset: str | None = typer.Option(None, help="mnist1d, teacher or mnist."),
    n_train: int | None = typer.Option(None, help="Training-set size (default: the data set's)."),
    label_noise: float | None = typer.Option(None, help="Fraction of flipped training labels."),
    loss: str | None = typer.Option(None, help=", ".join(LOSSES) + "."),
    optimizer: str | None = typer.Option(None, help=", ".join(OPTIMIZERS) + " (gd: full batch)."),
    lr: float | None = typer.Option(None, help="Step size h > 0."),
    batch_size: int | None = typer.Option(None, help="Minibatch size (sgd)."),
    steps: int | None = typer.Option(None, help="Step budget."),
    epochs: int | None = typer.Option(None, help="Epoch budget."),
    seed: int | None = typer.Option(None, help="Seed for init, batch order and probes."),
    probes: str | None = typer.Option(None, help="Comma-separated probe names ('' for none)."),
    probe_every: int | None = typer.Option(None, help="Probe every N steps (0: at the end only)."),
    checkpoint: bool | None = typer.Option(
        None, "--checkpoint/--no-checkpoint", help="Save model + optimizer state."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE for any config field (repeatable)."
    ),
    out: str = typer.Option(
        "runs", "--out", "-o", help="Store root; the run goes to OUT/<config hash>/."
    ),
) -> None:
    """Train one model and write its config, history and summary to OUT/<config hash>/.

    Examples:

      implicit-reg train --dataset mnist1d --width 64 --lr 0.1 --steps 500

      implicit-reg train --optimizer sgd --batch-size 32 --lr 0.05 --epochs 20 --set momentum=0.9

      implicit-reg train --config runs/1a2b3c4d5e6f/config.json --set seed=1
    """
    with bad_input():
        options = dict(
            model=model, width=width, depth=depth, dataset=dataset, n_train=n_train,
            label_noise=label_noise, loss=loss, optimizer=optimizer, lr=lr, batch_size=batch_size,
            steps=steps, epochs=epochs, seed=seed, probes=probes, probe_every=probe_every,
            checkpoint=checkpoint,
        )  # fmt: skip
        cfg = build_config(config, **merge_sets(options, parse_sets(set_)))
    from ..engine.train import run

    result = run(cfg, out)
    path = Path(out) / cfg.config_hash()
    typer.echo(f"run {cfg.config_hash()}: {result.status} -> {path}")
    typer.echo(format_summary(result.summary))
    if result.status == "failed":
        last = (result.summary.get("error") or "").strip().splitlines()[-1:]
        typer.echo(
            f"error: the run failed: {' '.join(last)} (traceback in {path / 'summary.json'})",
            err=True,
        )
        raise typer.Exit(1)
