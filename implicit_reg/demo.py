"""The optimizer demonstration behind ``implicit-reg demo``.

Trains the same small tanh MLP, from the same initialization, on the same
synthetic teacher data with full-batch GD and with EGR at the same step h,
and reports where each ended: the training loss L, the squared gradient norm
‖∇L‖² (the quantity EGR penalizes) and the weight norm ‖θ‖.

GD implicitly follows L + (h/4)‖∇L‖² (Barrett & Dherin, ICLR 2021); EGR with
μ adds μ‖∇L‖² on top, so it should end with a smaller ‖∇L‖².
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .fullbatch import full_gradient
from .modified_gradient import flat_norm
from .optim import EGR, GD


@dataclass(frozen=True)
class DemoResult:
    optimizer: str
    coeff: float
    steps: int
    loss: float
    grad_norm_sq: float
    weight_norm: float


def _teacher_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    w = torch.randn(d, 1, generator=gen) / d**0.5
    y = torch.tanh(3 * x @ w) + 0.1 * torch.randn(n, 1, generator=gen)
    return x, y


def optimizer_demo(
    lr: float = 0.2, steps: int = 300, coeff: float = 0.5, seed: int = 0
) -> list[DemoResult]:
    """Train with GD, EGR(μ=h/4) and EGR(μ=coeff) at step ``lr``; return the end points."""
    torch.manual_seed(seed)
    x, y = _teacher_data(256, 8, seed)
    base = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    loss_fn = nn.MSELoss()
    results = []
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

        for _ in range(steps):
            opt.step(closure)
        loss, g = full_gradient(model, loss_fn, (x, y))
        results.append(
            DemoResult(
                optimizer=name,
                coeff=mu,
                steps=steps,
                loss=float(loss),
                grad_norm_sq=float(flat_norm(g) ** 2),
                weight_norm=float(flat_norm(list(model.parameters()))),
            )
        )
    return results
