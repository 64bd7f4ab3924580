"""Probing a saved or a freshly built model, outside training (``implicit-reg probe``).

:func:`probe_model` runs :func:`implicit_reg.probes.run_probes` on the model of a
training checkpoint (read by :func:`implicit_reg.engine.checkpoint.load_checkpoint`,
the reader of the files the engine writes) or on a model built from options.
"""

from __future__ import annotations

from typing import Any

import torch

from ..workloads.losses import make_loss
from .checkpoint import load_checkpoint
from .config import DTYPES

__all__ = ["DEFAULT_PROBES", "parse_value", "parse_options", "probe_model"]

DEFAULT_PROBES = (
    "loss,lambda_max,lambda_min,trace,trace_stderr,grad_norm_sq,weight_norm,"
    "dist_from_init,eps_sharpness,gaussian_sharpness,geometric_complexity"
)


def parse_value(text: str) -> Any:
    """A probe option's value from the command line: int, float, none/true/false, or text."""
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
        out[key.strip()] = parse_value(value.strip())
    return out


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
    from ..probes import run_probes
    from ..workloads.data import load_dataset
    from ..workloads.models import build_model

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if checkpoint is not None:
        net, model_spec, dataset_spec, loss, init = load_checkpoint(checkpoint)
    else:
        dataset_spec = {
            "name": dataset,
            "n_train": n_train,
            "label_noise": label_noise,
            "seed": seed,
            "task": task,
        }
        model_spec = None
    data = load_dataset(**dataset_spec)
    if checkpoint is None:
        model_spec = {
            "name": model,
            "input_dim": data.input_dim,
            "output_dim": data.output_dim,
            "width": width,
            "depth": depth,
            "activation": activation,
            "seed": seed,
        }
        net = build_model(**model_spec).to(getattr(torch, dtype))
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
