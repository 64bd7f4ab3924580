"""The optimizer demonstration behind ``implicit-reg demo``.

Trains the same small tanh MLP, from the same initialization, on the same
synthetic classification data (``load_dataset("teacher")``: Gaussian inputs
labeled by a random tanh teacher MLP, two classes, 10% of the training labels
flipped) with full-batch GD and with EGR at the same step h, and stops each
run when its training loss first falls below a common target. It then
reports where each ended: the training loss L, the squared gradient norm
‖∇L‖² (the quantity EGR penalizes), the weight norm ‖θ‖ and the number of
steps.

Every run is a :class:`~implicit_reg.engine.config.RunConfig` trained by the
engine's one loop (:func:`implicit_reg.engine.loop.train_loop` driving a
:class:`~implicit_reg.engine.steppers.SerialStepper`, as
:func:`implicit_reg.engine.train.run` does), so the step, the stopping rule
(``target_train_loss``: the loss L(θ_t) of step t is below the target; the run
ends at θ_{t+1}, where the metrics are measured) and the divergence rule
(``max_loss``) are the engine's. Only the data set is built here, because its
teacher options (8 inputs, 2 classes) are not fields of ``RunConfig``.

Why stop at a target loss: GD implicitly follows L + (h/4)‖∇L‖²
(Barrett & Dherin, ICLR 2021) and EGR with μ adds μ‖∇L‖² on top, so the
claim is "smaller ‖∇L‖² at equal training loss". After a fixed number of
steps the runs sit at different losses (EGR descends more slowly) and their
‖∇L‖² mostly reflects how far each got, not where it went. A run whose loss
becomes NaN, inf or larger than ``max_loss`` is reported as diverged, with the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine.config import RunConfig
from ..engine.loop import Track, results_of, step_budget, train_loop
from ..engine.steppers import SerialStepper
from ..engine.workload import build_run_model, run_loss
from ..workloads.data import Dataset, load_dataset

__all__ = ["DemoResult", "optimizer_demo", "demo_data", "demo_config"]

#: the demo's data: n training (and n test) points in d dimensions, two classes
N_SAMPLES, INPUT_DIM, LABEL_NOISE = 256, 8, 0.1


@dataclass(frozen=True)
class DemoResult:
    """Where one run ended. ``loss``/``grad_norm_sq``/``weight_norm`` are
    NaN when the run diverged (``diverged_at`` is then the step)."""

    optimizer: str
    coeff: float
    lr: float
    steps: int  # steps taken
    loss: float
    grad_norm_sq: float
    weight_norm: float
    reached_target: bool
    diverged_at: int | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def demo_data(seed: int = 0) -> Dataset:
    """The teacher data of the demo: :data:`N_SAMPLES` train and test points in
    :data:`INPUT_DIM` dimensions labeled by a random tanh teacher (two hidden
    layers of 64), exactly :data:`LABEL_NOISE` of the training labels flipped."""
    return load_dataset(
        "teacher", n_train=N_SAMPLES, n_test=N_SAMPLES, label_noise=LABEL_NOISE, seed=seed,
        input_dim=INPUT_DIM, num_classes=2,
    )  # fmt: skip


def demo_config(
    optimizer: str,
    *,
    lr: float,
    coeff: float | None = None,
    target_loss: float = 0.02,
    max_steps: int = 2000,
    seed: int = 0,
    width: int = 64,
    max_loss: float = 100.0,
) -> RunConfig:
    """One demo run as a config: a width-``width`` tanh MLP with two hidden layers,
    full-batch ``optimizer`` ("gd" or "egr" with μ = ``coeff``) at step ``lr``,
    stopped at ``target_loss`` or after ``max_steps``, no probes, float32."""
    return RunConfig(
        model="mlp", width=width, depth=2, activation="tanh",
        dataset="teacher", n_train=N_SAMPLES, n_test=N_SAMPLES, label_noise=LABEL_NOISE,
        data_seed=seed, optimizer=optimizer, lr=lr,
        egr_coeff=coeff if optimizer == "egr" else None,
        steps=max_steps, target_train_loss=target_loss, max_loss=max_loss,
        eval_every=max_steps, probes=(), seed=seed,
    )  # fmt: skip


def optimizer_demo(
    lr: float = 0.5,
    coeff: float = 0.3,
    target_loss: float = 0.02,
    max_steps: int = 2000,
    seed: int = 0,
    width: int = 64,
    max_loss: float = 100.0,
) -> list[DemoResult]:
    """Train with GD, EGR(μ = h/4) and EGR(μ = ``coeff``) at step ``lr``.

    Each run stops at the first step whose training loss is below
    ``target_loss`` (or after ``max_steps``); the result describes the
    parameters it stopped at. A loss that is NaN, inf or above ``max_loss``
    (the initial loss is about ln 2 ≈ 0.69, so 100 means blown up) ends the run as
    diverged. Full batch, cross-entropy, float32; all three runs start from the
    same seeded initialization.
    """
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (math.isfinite(coeff) and coeff >= 0):
        raise ValueError(f"coeff must be a finite number >= 0, got {coeff!r}")
    if not (math.isfinite(target_loss) and target_loss > 0):
        raise ValueError(f"target_loss must be a finite number > 0, got {target_loss!r}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
    if not max_loss > target_loss:
        raise ValueError(f"max_loss must be > target_loss, got {max_loss!r}")
    data = demo_data(seed)
    settings = dict(
        lr=lr, target_loss=target_loss, max_steps=max_steps, seed=seed, width=width,
        max_loss=max_loss,
    )  # fmt: skip
    runs = (("GD", "gd", 0.0), ("EGR", "egr", lr / 4), ("EGR", "egr", coeff))
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4.9k-parameter model: more threads only add overhead
    try:
        for name, optimizer, mu in runs:
            config = demo_config(optimizer, coeff=mu, **settings)
            results.append(_result(name, mu, config, _train(config, data)))
    finally:
        torch.set_num_threads(threads)
    return results


def _train(config: RunConfig, data: Dataset) -> dict:
    """``config`` trained on ``data`` by the engine's loop (what ``engine.train.run``
    does with a data set of its own choosing); the run's summary."""
    model = build_run_model(config, data)
    loss_fn = run_loss(config, data)
    stepper = SerialStepper(config, data, model, loss_fn)
    tracks = [Track(config)]
    budget, _ = step_budget(config, data.n_train)
    train_loop(stepper, tracks, budget=budget, loss_fn=loss_fn, raise_errors=True)
    (result,) = results_of(stepper, tracks, [data], [{}])
    return result.summary


def _result(name: str, mu: float, config: RunConfig, summary: dict) -> DemoResult:
    nan = float("nan")
    if summary["status"] == "diverged":
        step = int(summary["diverged_at"])
        return DemoResult(name, mu, config.lr, step, nan, nan, nan, False, diverged_at=step)
    return DemoResult(
        optimizer=name,
        coeff=mu,
        lr=config.lr,
        steps=int(summary["steps_done"]),
        loss=float(summary["train_loss"]),
        grad_norm_sq=float(summary["grad_norm_sq"]),
        weight_norm=float(summary["weight_norm"]),
        reached_target=summary["stop_reason"] == "target_train_loss",
    )
