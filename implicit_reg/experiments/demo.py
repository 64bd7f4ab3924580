"""The optimizer demonstration behind ``implicit-reg demo``.

Trains the same small tanh MLP, from the same initialization, on the same
synthetic classification data (a tanh teacher, 10% of the labels flipped)
with full-batch GD and with EGR at the same step h, and stops each run when
its training loss first falls below a common target. It then reports where
each ended: the training loss L, the squared gradient norm ‖∇L‖² (the
quantity EGR penalizes), the weight norm ‖θ‖ and the number of steps.

Why stop at a target loss: GD implicitly follows L + (h/4)‖∇L‖²
(Barrett & Dherin, ICLR 2021) and EGR with μ adds μ‖∇L‖² on top, so the
claim is "smaller ‖∇L‖² at equal training loss". After a fixed number of
steps the runs sit at different losses (EGR descends more slowly) and their
‖∇L‖² mostly reflects how far each got, not where it went. A run whose loss
becomes NaN or inf is reported as diverged, with the step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.modified_gradient import flat_norm
from ..core.objective import full_gradient
from ..core.optim import EGR, GD

__all__ = ["DemoResult", "optimizer_demo", "demo_data"]


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


def demo_data(n: int = 256, d: int = 8, noise: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Binary labels of a random tanh teacher, a fraction ``noise`` flipped."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, 1, generator=gen) / d**0.5
    y = (torch.tanh(3 * x @ w) > 0).long().squeeze(1)
    flip = torch.rand(n, generator=gen) < noise
    y[flip] = 1 - y[flip]
    return x, y


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
    (the initial loss is ln 2 ≈ 0.69, so 100 means blown up) ends the run as diverged. Full
    batch, cross-entropy, float32.
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
    x, y = demo_data(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    base = nn.Sequential(
        nn.Linear(x.shape[1], width),
        nn.Tanh(),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, 2),
    )
    with torch.no_grad():  # seeded init without touching the global RNG
        for m in base:
            if isinstance(m, nn.Linear):
                bound = 1 / m.in_features**0.5
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 4.9k-parameter model: more threads only add overhead
    try:
        for name, mu in (("GD", 0.0), ("EGR", lr / 4), ("EGR", coeff)):
            model = copy.deepcopy(base)
            if name == "GD":
                opt = GD(model.parameters(), lr=lr)

                def closure(model=model, opt=opt):  # torch's contract: backward inside
                    opt.zero_grad()
                    loss = loss_fn(model(x), y)
                    loss.backward()
                    return loss
            else:
                opt = EGR(model.parameters(), lr=lr, coeff=mu)

                def closure(model=model):  # EGR's contract: return the loss, no backward
                    return loss_fn(model(x), y)

            results.append(
                _train(
                    name,
                    mu,
                    lr,
                    model,
                    opt,
                    closure,
                    loss_fn,
                    (x, y),
                    target_loss,
                    max_steps,
                    max_loss,
                )
            )
    finally:
        torch.set_num_threads(threads)
    return results


def _train(
    name, mu, lr, model, opt, closure, loss_fn, data, target_loss, max_steps, max_loss
) -> DemoResult:
    nan = float("nan")
    reached = False
    for step in range(max_steps):
        loss = float(opt.step(closure).detach())  # L(θ) before this step
        if not loss <= max_loss:  # NaN, inf or too large
            return DemoResult(name, mu, lr, step, nan, nan, nan, False, diverged_at=step)
        if loss < target_loss:
            reached = True
            break
    loss, g = full_gradient(model, loss_fn, data)  # where the run stopped
    if not float(loss) <= max_loss:
        return DemoResult(name, mu, lr, step + 1, nan, nan, nan, False, diverged_at=step + 1)
    return DemoResult(
        optimizer=name,
        coeff=mu,
        lr=lr,
        steps=step + 1,
        loss=float(loss),
        grad_norm_sq=float(flat_norm(g) ** 2),
        weight_norm=float(flat_norm(list(model.parameters()))),
        reached_target=reached,
    )
