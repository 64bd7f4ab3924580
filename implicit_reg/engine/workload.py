"""A config's workload: its data set, its loss and its initialized model.

:func:`build_run_model` builds ``build_model(**config.model_spec(...))`` (the
seeded initialization, ``model_options`` included) and, with ``init_from``,
overwrites it with a trained run's weights: Belkin, Hsu, Ma & Mandal (PNAS
2019, §"Neural networks") train each network of a width sweep from the
weights of the previous, smaller one. A tensor of the checkpoint of shape
(a_1, …, a_k) fills the leading block ``new[:a_1, …, :a_k]`` of the new
tensor (shape (b_1, …, b_k), every a_i ≤ b_i); the rest keeps the new
model's own seeded initialization.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from ..workloads.losses import make_loss
from .config import RunConfig

__all__ = ["load_run_data", "build_run_model", "run_loss", "copy_leading_blocks"]


@lru_cache(maxsize=4)
def _cached_dataset(name, n_train, n_test, label_noise, seed, task):
    from ..workloads.data import load_dataset

    return load_dataset(
        name, n_train=n_train, n_test=n_test, label_noise=label_noise, seed=seed, task=task
    )


def load_run_data(config: RunConfig):
    """The config's data set on its device and dtype (memoized per process; the
    tensors are never modified by training)."""
    spec = config.dataset_spec()
    data = _cached_dataset(
        spec["name"], spec["n_train"], spec["n_test"], spec["label_noise"], spec["seed"],
        spec["task"],
    )  # fmt: skip
    return data.to(torch.device(config.device), getattr(torch, config.dtype))


def run_loss(config: RunConfig, data) -> nn.Module:
    """The config's mean-reduced loss for ``data``'s targets."""
    return make_loss(config.loss, num_classes=data.num_classes)


def build_run_model(config: RunConfig, data) -> nn.Module:
    """The config's model on its device and dtype, in train mode: the seeded
    initialization, then the ``init_from`` weights if set (see the module docstring).

    Raises ``ValueError`` for model options the model does not take, a missing or
    unreadable ``init_from`` file, or one whose weights do not fit this architecture.
    """
    from ..workloads.models import build_model

    spec = config.model_spec(data.input_dim, data.output_dim)
    try:
        model = build_model(**spec)
    except TypeError as err:  # an option the model's constructor does not take
        raise ValueError(
            f"model {config.model!r} does not accept model_options {config.model_options}: {err}"
        ) from None
    model = model.to(device=torch.device(config.device), dtype=getattr(torch, config.dtype))
    if config.init_from is not None:
        from .checkpoint import read_model_state

        copy_leading_blocks(
            model, read_model_state(config.init_from), source=config.init_from,
            noise=config.init_from_noise, seed=config.seed,
        )  # fmt: skip
    return model.train()


def copy_leading_blocks(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    noise: float | None = None,
    seed: int = 0,
) -> None:
    """Copy each tensor of ``state`` into the leading block of ``model``'s tensor of that name.

    Every name of the model's state must be in ``state`` and vice versa, with the
    same number of dimensions and no dimension larger than the model's. With
    ``noise`` = σ, the entries of every tensor of two or more dimensions (a weight
    matrix) outside its copied block are drawn from N(0, σ²) (a generator seeded with
    ``seed``, in the order of the state's names), so a new unit starts with random
    incoming and outgoing weights (Belkin et al. 2019, SI); without it they keep the
    model's own initialization. Biases and buffers outside the block always keep it.
    """
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"init_from {source}: incompatible architecture: the checkpoint "
            + (f"lacks {', '.join(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"has {', '.join(extra)} that this model lacks" if extra else "")
        )
    for name, target in own.items():
        src = state[name]
        if src.dim() != target.dim() or any(a > b for a, b in zip(src.shape, target.shape)):
            raise ValueError(
                f"init_from {source}: incompatible architecture: {name} has shape "
                f"{tuple(src.shape)} in the checkpoint, which does not fit into this model's "
                f"{tuple(target.shape)} (every dimension must be <= the new one)"
            )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, target in own.items():
            src = state[name]
            block = tuple(slice(0, s) for s in src.shape)
            if noise is not None and target.dim() >= 2 and src.shape != target.shape:
                outside = torch.ones(target.shape, dtype=torch.bool)
                outside[block] = False
                draw = torch.randn(target.shape, generator=generator, dtype=torch.float64)
                target[outside.to(target.device)] = (noise * draw[outside]).to(
                    device=target.device, dtype=target.dtype
                )
            target[block].copy_(src.to(device=target.device, dtype=target.dtype))
