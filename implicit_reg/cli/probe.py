"""``implicit-reg probe``: curvature and flatness probes of a saved or freshly built model.

The command is a thin wrapper around :func:`implicit_reg.engine.probing.probe_model`,
which Python users and tests call directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from ..engine.checkpoint import load_checkpoint  # noqa: F401  (the old import path)
from ..engine.probing import DEFAULT_PROBES, parse_options, probe_model
from . import app


def format_table(result: dict[str, Any]) -> str:
    spec = result["model_spec"]
    head = (
        f"{spec['name']} width={spec['width']} depth={spec['depth']} on "
        f"{result['dataset_spec']['name']} ({result['loss']}, {result['dtype']})"
    )
    lines = [head, f"  {'probe':<24}{'value':>16}"]
    for k, v in result["probes"].items():
        lines.append(f"  {k:<24}{v:>16.8g}" if math.isfinite(v) else f"  {k:<24}{v!s:>16}")
    return "\n".join(lines)


@app.command("probe")
def probe(
    checkpoint: str | None = typer.Argument(
        None, help="A training checkpoint (checkpoint.pt); omit to build a model instead."
    ),
    model: str = typer.Option("mlp", help="mlp, cnn1d, cnn, rf_relu, rf_fourier (no checkpoint)."),
    width: int = typer.Option(32, help="Hidden units / channels / random features."),
    depth: int = typer.Option(2, help="Hidden layers."),
    activation: str = typer.Option("relu", help="Activation of the built model."),
    dataset: str = typer.Option("mnist1d", help="mnist1d, teacher or mnist (no checkpoint)."),
    n_train: int = typer.Option(1000, help="Training samples the probes run on."),
    label_noise: float = typer.Option(0.0, help="Fraction of flipped training labels."),
    task: str = typer.Option("classification", help="classification or regression."),
    loss: str = typer.Option("cross_entropy", help="cross_entropy or mse (no checkpoint)."),
    seed: int = typer.Option(0, help="Seed of the model, the data and every probe."),
    dtype: str = typer.Option("float64", help="float64 or float32 (no checkpoint)."),
    probes: str = typer.Option(DEFAULT_PROBES, help="Comma-separated probe names."),
    chunk_size: int | None = typer.Option(
        None, help="Rows per chunk (peak memory); default one chunk."
    ),
    params: str | None = typer.Option(
        None,
        help="Measure only these parameters: comma-separated module names or globs, "
        "e.g. 'net.0.*' (the first layer of the package's mlp).",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Probe option KEY=VALUE, e.g. trace_hvps=99 or mode=train (repeatable)."
    ),
    json_path: str | None = typer.Option(
        None, "--json", help="Also write the results as JSON here."
    ),
) -> None:
    """Measure sharpness, trace, gradient norm and flatness of a model on its training data.

    Examples:
      implicit-reg probe runs/ab12cd34ef56/checkpoint.pt --json probes.json
      implicit-reg probe --model mlp --width 64 --dataset mnist1d --probes lambda_max,trace
      implicit-reg probe runs/ab12cd34ef56/checkpoint.pt --params 'net.0.*'
    """
    try:
        result = probe_model(
            checkpoint=checkpoint, model=model, width=width, depth=depth, activation=activation,
            dataset=dataset, n_train=n_train, label_noise=label_noise, task=task, loss=loss,
            seed=seed, dtype=dtype, probes=probes, chunk_size=chunk_size,
            options={**parse_options(set_), **({"params": params.split(",")} if params else {})},
        )  # fmt: skip
        if json_path is not None:
            out = Path(json_path)
            if not out.parent.is_dir():
                raise ValueError(f"cannot write {out}: directory {out.parent} does not exist")
            out.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    except (ValueError, KeyError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_table(result))
