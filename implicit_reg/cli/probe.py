"""``implicit-reg probe``: curvature and flatness probes of a saved or freshly built model.

The command is a thin wrapper around :func:`probe_model`, which Python users
and tests call directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import typer

from . import app

DEFAULT_PROBES = (
    "loss,lambda_max,lambda_min,trace,trace_stderr,grad_norm_sq,weight_norm,"
    "dist_from_init,eps_sharpness,gaussian_sharpness,geometric_complexity"
)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["trace_hvps=60", "mode=train"]`` → ``{"trace_hvps": 60, "mode": "train"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict, dict, str, dict]:
    """(model, model_spec, dataset_spec, loss name, initial state) from a training checkpoint.

    The model is rebuilt with ``implicit_reg.workloads.models.build_model(**model_spec)``
    in the dtype of the saved weights; the initial state is the same build
    before loading (``build_model`` is deterministic in its seed).
    """
    from ..workloads.models import build_model

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is bad input here
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}") from None
    missing = [k for k in ("model_spec", "dataset_spec", "loss", "state_dict") if k not in ckpt]
    if not isinstance(ckpt, dict) or missing:
        raise ValueError(f"{path} is not an implicit-reg checkpoint (missing {missing})")
    state = ckpt["state_dict"]
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    model = build_model(**ckpt["model_spec"]).to(dtype)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model, dict(ckpt["model_spec"]), dict(ckpt["dataset_spec"]), ckpt["loss"], init


def probe_model(
    *,
    checkpoint: str | None = None,
    model: str = "mlp",
    width: int = 32,
    depth: int = 2,
    activation: str = "relu",
    dataset: str = "mnist1d",
    n_train: int | None = 1000,
    label_noise: float = 0.0,
    task: str = "classification",
    loss: str = "cross_entropy",
    seed: int = 0,
    dtype: str = "float64",
    probes: str = DEFAULT_PROBES,
    chunk_size: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :func:`implicit_reg.probes.run_probes` on a checkpoint or a freshly built model.

    With ``checkpoint`` the model, data set and loss come from the file and
    ``dist_from_init`` measures from the model's initialization (rebuilt from
    its seed); otherwise ``build_model(model, width=..., seed=...)`` on
    ``load_dataset(dataset, ...)``, at initialization. Returns a JSON-ready
    dict with the specs, the options and ``{"probes": {name: value}}``.
    """
    from ..engine.train import make_loss
    from ..probes import run_probes
    from ..workloads.data import load_dataset
    from ..workloads.models import build_model

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if checkpoint is not None:
        net, model_spec, dataset_spec, loss, init = load_checkpoint(checkpoint)
    else:
        dataset_spec = {"name": dataset, "n_train": n_train, "label_noise": label_noise,
                        "seed": seed, "task": task}
        model_spec = None
    data = load_dataset(**dataset_spec)
    if checkpoint is None:
        model_spec = {"name": model, "input_dim": data.input_dim, "output_dim": data.output_dim,
                      "width": width, "depth": depth, "activation": activation, "seed": seed}
        net = build_model(**model_spec).to(DTYPES[dtype])
        init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    param_dtype = next(net.parameters()).dtype
    data = data.to(dtype=param_dtype)
    names = [n.strip() for n in probes.split(",") if n.strip()]
    if not names:
        raise ValueError("no probe names given")
    values = run_probes(
        names, net, make_loss(loss, num_classes=data.num_classes), data.train,
        chunk_size=chunk_size, seed=seed, init_state=init, **(options or {}),
    )  # fmt: skip
    return {
        "source": str(checkpoint) if checkpoint else "built",
        "model_spec": model_spec,
        "dataset_spec": dataset_spec,
        "loss": loss,
        "dtype": str(param_dtype).removeprefix("torch."),
        "chunk_size": chunk_size,
        "options": options or {},
        "probes": values,
    }


def format_table(result: dict[str, Any]) -> str:
    spec = result["model_spec"]
    head = (f"{spec['name']} width={spec['width']} depth={spec['depth']} on "
            f"{result['dataset_spec']['name']} ({result['loss']}, {result['dtype']})")
    lines = [head, f"  {'probe':<24}{'value':>16}"]
    for k, v in result["probes"].items():
        lines.append(f"  {k:<24}{v:>16.8g}" if math.isfinite(v) else f"  {k:<24}{v!s:>16}")
    return "\n".join(lines)


@app.command("probe")
def probe(
    checkpoint: str | None = typer.Argument(
        None, help="A training checkpoint (checkpoint.pt); omit to build a model instead."
    ),
    model: str = typer.Option("mlp", help="mlp, cnn1d, rf_relu or rf_fourier (no checkpoint)."),
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
    chunk_size: int | None = typer.Option(None, help="Rows per chunk (peak memory); default one chunk."),
    set_: list[str] = typer.Option(
        [], "--set", help="Probe option KEY=VALUE, e.g. trace_hvps=99 or mode=train (repeatable)."
    ),
    json_path: str | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Measure sharpness, trace, gradient norm and flatness of a model on its training data.

    Examples:
      implicit-reg probe runs/ab12cd34ef56/checkpoint.pt --json probes.json
      implicit-reg probe --model mlp --width 64 --dataset mnist1d --probes lambda_max,trace
    """
    try:
        result = probe_model(
            checkpoint=checkpoint, model=model, width=width, depth=depth, activation=activation,
            dataset=dataset, n_train=n_train, label_noise=label_noise, task=task, loss=loss,
            seed=seed, dtype=dtype, probes=probes, chunk_size=chunk_size,
            options=parse_options(set_),
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
