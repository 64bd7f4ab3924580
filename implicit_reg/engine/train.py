"""One training run: :class:`~implicit_reg.engine.config.RunConfig` in, :class:`RunResult` out.

The loop (h = ``lr``, N = training-set size, t = steps done):

- ``gd``: full-batch gradient descent, θ ← θ − h∇L(θ) with
  L(θ) = (1/N)Σ_i ℓ(f_θ(x_i), y_i), the gradient accumulated over chunks of
  ``chunk_size`` rows by :func:`implicit_reg.core.objective.full_gradient` (the
  result does not depend on the chunk size). With momentum or weight decay
  the update is :class:`implicit_reg.core.optim.SGD`'s, on the full batch.
- ``sgd``: minibatches of ``batch_size`` drawn without replacement, a fresh
  permutation of the N samples each epoch from a ``torch.Generator`` seeded
  with ``seed`` (the last batch of an epoch may be smaller).
- ``egr``: :class:`implicit_reg.core.optim.EGR`, GD on L + μ‖∇L‖² with the
  gradient g + 2μ·Hg (Barrett & Dherin, ICLR 2021), μ = h/4 by default. Over
  several chunks, exact EGR needs the *full* g before Hg, so it runs two
  passes: g = Σ_c ∇(w_c L_c), then Hv = Σ_c H_c v with v = μg through
  :func:`implicit_reg.core.hvp.grad_and_hvp` (``vec=v``), and applies the same
  update as ``EGR.step``. Finite-difference EGR takes the chunked gradient
  as a torch-style closure. With ``egr_micro_batch`` the penalty is the
  mean of μ‖∇L_j‖² over micro-batches j of each (mini)batch, Smith et al.'s
  explicit SGD regularizer (:func:`egr_micro_batch_step`).

Evaluation every ``eval_every`` steps, at step 0 and at the end logs
:data:`~implicit_reg.engine.config.BASE_METRICS` (train/test loss and error in eval
mode, ‖∇L‖² over the full training set, ‖θ‖, ‖θ − θ₀‖ over the trainable
parameters); with label noise also ``train_error_clean`` (error against the
clean labels). The probes in ``probes`` (:func:`implicit_reg.probes.run_probes`)
run every ``probe_every`` steps (0: never during training) and always at the end.

Stopping: the step budget (``steps`` and/or ``epochs``, the smaller wins);
``target_train_loss``, checked against the full training loss at every
full-batch step (the loss L(θ_t) that step computed) and at every
evaluation; divergence: a NaN/inf loss or one above ``max_loss`` ends the run
with status ``"diverged"`` and ``diverged_at`` = the step whose loss it was.
Any other exception gives status ``"failed"`` with its traceback (unless
``raise_errors=True``); no exception escapes :func:`run`.
"""

from __future__ import annotations

import io
import math
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.hvp import grad_and_hvp
from ..core.modified_gradient import flat_norm, igr_coeff
from ..core.objective import (
    chunk_loss_fns,
    full_gradient,
    iter_chunks,
    num_samples,
    trainable_named_params,
)
from ..core.optim import EGR, GD, SGD
from ..core.sam import ASAM, SAM, GradNormPenalty
from ..workloads.losses import OneHotMSELoss, make_loss
from .config import BASE_METRICS, RunConfig
from .store import ResultStore, versions

__all__ = [
    "RunResult",
    "STATUSES",
    "run",
    "make_loss",
    "OneHotMSELoss",
    "build_optimizer",
    "evaluate",
    "step_budget",
    "egr_chunked_exact_step",
    "egr_micro_batch_step",
    "load_run_data",
]

STATUSES = ("complete", "diverged", "failed")


@dataclass
class RunResult:
    """What one run produced: the wide ``summary``, the long ``history`` rows
    ``{"step", "metric", "value"}``, run metadata, and optionally the
    serialized checkpoint (``torch.save`` bytes)."""

    config: RunConfig
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    checkpoint: bytes | None = None

    @property
    def status(self) -> str:
        return self.summary["status"]

    def history_frame(self):
        """The history as a long-form ``pandas.DataFrame`` (step, metric, value)."""
        import pandas as pd

        return pd.DataFrame(self.history, columns=["step", "metric", "value"])

    def metric(self, name: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric."""
        return [(r["step"], r["value"]) for r in self.history if r["metric"] == name]


# ---------------------------------------------------------------------- data
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
        spec["name"],
        spec["n_train"],
        spec["n_test"],
        spec["label_noise"],
        spec["seed"],
        spec["task"],
    )
    return data.to(torch.device(config.device), getattr(torch, config.dtype))


# ----------------------------------------------------------------- optimizer
def build_optimizer(config: RunConfig, params: list[Tensor], model: nn.Module | None = None):
    """The torch optimizer for ``config.optimizer``."""
    if config.optimizer == "egr":
        return EGR(
            params, lr=config.lr, coeff=config.egr_coeff, method=config.egr_method, module=model
        )
    if config.optimizer in ("sam", "asam", "penalty"):  # around GD, or SGD with its settings
        plain = config.momentum == 0 and config.weight_decay == 0
        base = {"lr": config.lr} if plain else {
            "lr": config.lr, "momentum": config.momentum, "nesterov": config.nesterov,
            "weight_decay": config.weight_decay,
        }  # fmt: skip
        cls, extra = {
            "sam": (SAM, {}),
            "asam": (ASAM, {} if config.asam_eta is None else {"eta": config.asam_eta}),
            "penalty": (
                GradNormPenalty, {} if config.sam_alpha is None else {"alpha": config.sam_alpha}
            ),
        }[config.optimizer]  # fmt: skip
        return cls(params, GD if plain else SGD, config.rho, module=model, **extra, **base)
    if config.optimizer == "gd" and config.momentum == 0 and config.weight_decay == 0:
        return GD(params, lr=config.lr)
    return SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def step_budget(config: RunConfig, n_train: int) -> tuple[int, int]:
    """``(total steps, steps per epoch)``: the smaller of ``steps`` and
    ``epochs × ⌈N/B⌉`` (full batch: one step per epoch)."""
    per_epoch = 1 if config.batch_size is None else math.ceil(n_train / config.batch_size)
    budgets = []
    if config.steps is not None:
        budgets.append(config.steps)
    if config.epochs is not None:
        budgets.append(config.epochs * per_epoch)
    return min(budgets), per_epoch


def egr_chunked_exact_step(
    opt: EGR,
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: tuple[Tensor, Tensor],
    chunk_size: int | None,
) -> Tensor:
    """One exact EGR step over a batch processed in chunks; returns L(θ) before the step.

    The modified gradient g̃ = g + 2H(μ ⊙ g) needs the full-batch g before any
    Hessian product, so: pass 1 accumulates g = Σ_c ∇(w_c L_c) with
    w_c = n_c/N; pass 2 accumulates H(μ⊙g) = Σ_c ∇²(w_c L_c)(μ⊙g) through
    :func:`implicit_reg.core.hvp.grad_and_hvp` with ``vec = μ⊙g``. The update is
    ``EGR.step``'s: θ ← θ − h·g̃, and ``.grad`` is left holding g.
    """
    named = trainable_named_params(model)
    params = list(named.values())
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    lrs = [groups[id(p)]["lr"] for p in params]
    mus = [
        igr_coeff(groups[id(p)]["lr"]) if groups[id(p)]["coeff"] is None else groups[id(p)]["coeff"]
        for p in params
    ]
    loss, g = full_gradient(model, loss_fn, batch, chunk_size)  # pass 1
    v = tuple(m * gi for m, gi in zip(mus, g))
    hv = [torch.zeros_like(p) for p in params]
    primal = tuple(p.detach().requires_grad_(True) for p in params)
    for f in chunk_loss_fns(model, loss_fn, batch, chunk_size):  # pass 2
        _, hv_c = grad_and_hvp(f, primal, vec=v)
        for acc, h in zip(hv, hv_c):
            acc.add_(h)
    with torch.no_grad():
        for p, gi, h, lr in zip(params, g, hv, lrs):
            p.add_(gi + 2.0 * h, alpha=-lr)
            p.grad = gi.clone()
    return loss


def egr_micro_batch_step(
    opt: EGR,
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    batch: tuple[Tensor, Tensor],
    micro_batch: int,
) -> Tensor:
    """One EGR step whose penalty is averaged over micro-batches; returns L_B(θ) before the step.

    The explicit SGD regularizer of Smith, Dherin, Barrett & De (ICLR 2021,
    arXiv 2101.12176): over an epoch of m minibatches SGD follows
    L + (h/4m)·Σ_k‖∇L_k‖². To add it to training on larger batches, split each
    batch B into consecutive micro-batches j of ``micro_batch`` rows and step
    on the gradient of

        L_B(θ) + Σ_j w_j·μ‖∇L_j(θ)‖²,     w_j = n_j/|B|,

    θ ← θ − h·(g_B + 2·Σ_j w_j·H_j(μ⊙g_j)), where L_B is the batch mean loss,
    L_j the micro-batch mean loss, g_j = ∇L_j and H_j = ∇²L_j (μ per group, h/4
    by default). With equal micro-batches Σ_j w_j = (1/J)·Σ_j, Smith et al.'s
    average. One pass: for f_j = w_j·L_j, :func:`implicit_reg.core.hvp.grad_and_hvp`
    with the direction μ⊙g_j returns (w_j·g_j, w_j·H_j(μ⊙g_j)). ``.grad`` is
    left holding g_B.
    """
    named = trainable_named_params(model)
    params = list(named.values())
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    lrs = [groups[id(p)]["lr"] for p in params]
    mus = [
        igr_coeff(groups[id(p)]["lr"]) if groups[id(p)]["coeff"] is None else groups[id(p)]["coeff"]
        for p in params
    ]
    n = num_samples(batch)
    g = [torch.zeros_like(p) for p in params]
    hv = [torch.zeros_like(p) for p in params]
    losses: list[Tensor] = []
    primal = tuple(p.detach().requires_grad_(True) for p in params)
    for f, (xj, _) in zip(
        chunk_loss_fns(model, loss_fn, batch, micro_batch), iter_chunks(batch, micro_batch)
    ):
        w = len(xj) / n

        def f_logged(p, f=f):
            out = f(p)
            losses.append(out.detach())
            return out

        gj, hj = grad_and_hvp(
            f_logged, primal, vec=lambda wg, w=w: tuple(m * x / w for m, x in zip(mus, wg))
        )
        for acc_g, acc_h, a, b in zip(g, hv, gj, hj):
            acc_g.add_(a)
            acc_h.add_(b)
    with torch.no_grad():
        for p, gi, h, lr in zip(params, g, hv, lrs):
            p.add_(gi + 2.0 * h, alpha=-lr)
            p.grad = gi.clone()
    return torch.stack(losses).sum()


def _gradient_step(
    config: RunConfig,
    opt: torch.optim.Optimizer,
    model: nn.Module,
    loss_fn: nn.Module,
    batch: tuple[Tensor, Tensor],
) -> Tensor:
    """One optimizer step on ``batch`` (full data or a minibatch); returns the
    batch loss at the parameters before the step."""
    chunk = config.chunk_size
    chunked = chunk is not None and chunk < len(batch[0])
    params = list(trainable_named_params(model).values())

    def set_grad() -> Tensor:  # torch-style: gradient of the batch mean, in chunks
        loss, g = full_gradient(model, loss_fn, batch, chunk)
        for p, gi in zip(params, g):
            p.grad = gi
        return loss

    if config.optimizer in ("sam", "asam", "penalty"):
        return opt.step(set_grad)  # two gradients per step through the torch-style closure
    if config.optimizer != "egr":
        loss = set_grad()
        opt.step()
        return loss
    if config.egr_micro_batch is not None:
        return egr_micro_batch_step(opt, model, loss_fn, batch, config.egr_micro_batch)
    if not chunked:
        x, y = batch
        return opt.step(lambda: loss_fn(model(x), y))  # EGR's closure: no backward
    if config.egr_method == "finite_difference":
        return opt.step(set_grad)  # EGR accepts a torch-style closure for finite differences
    return egr_chunked_exact_step(opt, model, loss_fn, batch, chunk)


# ---------------------------------------------------------------- evaluation
def _loss_and_error(model, loss_fn, x, y, chunk_size, classes: bool) -> tuple[float, float]:
    """Mean loss and error rate over (x, y), in chunks, without autograd."""
    n = len(x)
    total, wrong = 0.0, 0
    with torch.no_grad():
        for xc, yc in iter_chunks((x, y), chunk_size):
            out = model(xc)
            total += float(loss_fn(out, yc)) * len(xc)
            if classes:
                truth = yc if not yc.is_floating_point() else yc.argmax(1)
                wrong += int((out.argmax(1) != truth).sum())
    return total / n, wrong / n


def evaluate(model, loss_fn, data, *, chunk_size, init_params) -> dict[str, float]:
    """The base metrics at the current parameters (model left as found).

    Losses and errors in eval mode; ‖∇L‖² in the mode the model is in
    (train, for the training objective), via
    :func:`implicit_reg.core.objective.full_gradient`, which leaves ``.grad`` and
    the buffers untouched.
    """
    classes = data.num_classes is not None
    was_training = model.training
    model.eval()
    try:
        tr_loss, tr_err = _loss_and_error(model, loss_fn, *data.train, chunk_size, classes)
        te_loss, te_err = _loss_and_error(model, loss_fn, *data.test, chunk_size, classes)
        clean = None
        if classes and data.label_noise > 0:
            _, clean = _loss_and_error(
                model, loss_fn, data.x_train, data.y_train_clean, chunk_size, classes
            )
    finally:
        model.train(was_training)
    _, g = full_gradient(model, loss_fn, data.train, chunk_size)
    params = list(trainable_named_params(model).values())
    out = {"train_loss": tr_loss, "test_loss": te_loss}
    if classes:
        out.update(train_error=tr_err, test_error=te_err)
    out.update(
        grad_norm_sq=float(flat_norm(g)) ** 2,
        weight_norm=float(flat_norm(params)),
        dist_from_init=float(flat_norm([p.detach() - p0 for p, p0 in zip(params, init_params)])),
    )
    if clean is not None:
        out["train_error_clean"] = clean
    return out


def _bad(loss: float, bound: float) -> bool:
    return not math.isfinite(loss) or loss > bound


# ----------------------------------------------------------------------- run
def run(
    config: RunConfig, out_dir: str | Path | None = None, *, raise_errors: bool = False
) -> RunResult:
    """Train one model as ``config`` says and return (and, with ``out_dir``, store) the result.

    ``out_dir`` is a store root: the run is written atomically to
    ``out_dir/<config_hash>/`` (see :mod:`implicit_reg.engine.store`). Divergence
    gives status "diverged"; any exception gives status "failed" with the
    traceback in ``summary["error"]``, unless ``raise_errors``.
    """
    started = time.perf_counter()
    meta = {
        **versions(),
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        result = _train(config)
    except Exception:
        if raise_errors:
            raise
        result = RunResult(
            config=config,
            summary={
                "config_hash": config.config_hash(),
                "status": "failed",
                "stop_reason": "failed",
                "error": traceback.format_exc(),
            },
        )
    result.summary["wall_time_s"] = time.perf_counter() - started
    meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result.meta = meta
    if out_dir is not None:
        ResultStore(out_dir).write(result)
    return result


def _train(config: RunConfig) -> RunResult:
    from ..workloads.models import build_model, count_params

    data = load_run_data(config)
    dtype = getattr(torch, config.dtype)
    spec = config.model_spec(data.input_dim, data.output_dim)
    model = build_model(**spec).to(device=torch.device(config.device), dtype=dtype)
    model.train()
    loss_fn = make_loss(config.loss, num_classes=data.num_classes)
    params = list(trainable_named_params(model).values())
    init_params = [p.detach().clone() for p in params]
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(config, params, model)
    n = data.n_train
    budget, _ = step_budget(config, n)
    gen = torch.Generator().manual_seed(config.seed)  # minibatch order only
    order: list[Tensor] = []  # batches left in the current epoch

    history: list[dict[str, Any]] = []

    def log(step: int, values: dict[str, float]) -> None:
        history.extend({"step": step, "metric": k, "value": float(v)} for k, v in values.items())

    last_probe = [None]

    # probes that are also base metrics are logged at every evaluation already
    probe_names = [p for p in config.probes if p not in BASE_METRICS]

    def probe(step: int) -> None:
        last_probe[0] = step
        if probe_names:
            from ..probes import run_probes

            values = run_probes(
                probe_names, model, loss_fn, data.train,
                chunk_size=config.chunk_size, seed=config.seed, init_state=init_state,
                **(config.probe_options or {}),
            )  # fmt: skip
            log(step, values)

    def next_batch() -> tuple[Tensor, Tensor]:
        if config.batch_size is None:
            return data.train
        if not order:
            perm = torch.randperm(n, generator=gen).to(data.x_train.device)
            order.extend(perm.split(config.batch_size))
        idx = order.pop(0)
        return data.x_train[idx], data.y_train[idx]

    status, stop_reason, diverged_at, diverged_loss = "complete", "budget", None, None
    step = 0
    metrics = evaluate(model, loss_fn, data, chunk_size=config.chunk_size, init_params=init_params)
    log(0, metrics)
    if config.probe_every:
        probe(0)
    if _bad(metrics["train_loss"], config.max_loss):
        status, stop_reason, diverged_at, diverged_loss = (
            "diverged",
            "diverged",
            0,
            metrics["train_loss"],
        )
    elif config.target_train_loss is not None and metrics["train_loss"] <= config.target_train_loss:
        stop_reason, budget = "target_train_loss", 0
    while status == "complete" and step < budget:
        loss = float(_gradient_step(config, opt, model, loss_fn, next_batch()))
        if _bad(loss, config.max_loss):
            status, stop_reason, diverged_at, diverged_loss = "diverged", "diverged", step, loss
            break
        step += 1
        reached = (
            config.batch_size is None
            and config.target_train_loss is not None
            and loss <= config.target_train_loss
        )
        if step % config.eval_every == 0 or step == budget or reached:
            metrics = evaluate(
                model, loss_fn, data, chunk_size=config.chunk_size, init_params=init_params
            )
            log(step, metrics)
            if _bad(metrics["train_loss"], config.max_loss):
                status, stop_reason = "diverged", "diverged"
                diverged_at, diverged_loss = step, metrics["train_loss"]
                break
            if (
                config.target_train_loss is not None
                and metrics["train_loss"] <= config.target_train_loss
            ):
                reached = True
        if config.probe_every and step % config.probe_every == 0:
            probe(step)
        if reached:
            stop_reason = "target_train_loss"
            break

    final: dict[str, float] = {}
    if status == "complete":
        if last_probe[0] != step:
            probe(step)  # the probes always run at the end
        for r in history:  # the last value of every metric
            final[r["metric"]] = r["value"]
    else:
        final = {"train_loss": float(diverged_loss)}

    summary: dict[str, Any] = {
        "config_hash": config.config_hash(),
        "status": status,
        "stop_reason": stop_reason,
        "steps_done": step,
        "epochs_done": step
        / (1 if config.batch_size is None else math.ceil(n / config.batch_size)),
        "diverged_at": diverged_at,
        "n_params": count_params(model),
        "n_train": n,
        "num_classes": data.num_classes,
        "output_dim": data.output_dim,
        "error": None,
        **final,
    }
    checkpoint = None
    if config.checkpoint:
        buf = io.BytesIO()
        torch.save(
            {
                "model_spec": spec,
                "dataset_spec": config.dataset_spec(),
                "loss": config.loss,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "config": config.to_dict(),
                "step": step,
                "status": status,
            },
            buf,
        )
        checkpoint = buf.getvalue()
    return RunResult(config=config, summary=summary, history=history, checkpoint=checkpoint)
