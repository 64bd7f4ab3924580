"""``implicit-reg demo`` trains through the engine: its runs equal an independent plain loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from implicit_reg.experiments import demo
from implicit_reg.workloads.models import build_model


def _plain_gd(lr: float, target: float, max_steps: int, seed: int = 0):
    """The oracle: ``torch.optim.SGD`` on the full batch, stopped after the first step whose
    loss L(θ_t) is below ``target``; (steps, loss, ‖∇L‖², ‖θ‖) at the parameters it ends at."""
    data = demo.demo_data(seed)
    model = build_model(
        "mlp", input_dim=demo.INPUT_DIM, output_dim=2, width=64, depth=2, activation="tanh",
        seed=seed,
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data.train
    steps = 0
    for _ in range(max_steps):
        steps += 1
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if loss.item() < target:
            break
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    sq = sum(float(g.pow(2).sum()) for g in grads)
    norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
    return steps, loss.item(), sq, norm


def test_the_gd_run_is_a_plain_torch_sgd_loop_with_the_same_stopping_rule():
    threads = torch.get_num_threads()
    try:
        gd, *_ = demo.optimizer_demo(lr=0.5, target_loss=0.3, max_steps=400)
        steps, loss, sq, norm = _plain_gd(0.5, 0.3, 400)
    finally:
        torch.set_num_threads(threads)
    assert gd.reached_target and not gd.diverged
    assert gd.steps == steps, (gd.steps, steps)
    assert gd.loss == pytest.approx(loss, rel=1e-5)
    assert gd.grad_norm_sq == pytest.approx(sq, rel=1e-4)
    assert gd.weight_norm == pytest.approx(norm, rel=1e-6)


def test_the_runs_are_engine_configs_that_differ_only_in_the_optimizer():
    gd = demo.demo_config("gd", lr=0.5, coeff=0.3)
    egr = demo.demo_config("egr", lr=0.5, coeff=0.3)
    assert gd.egr_coeff is None and egr.egr_coeff == 0.3
    differ = {k for k, v in gd.to_dict().items() if egr.to_dict().get(k) != v}
    assert differ == {"optimizer", "egr_coeff"}
    assert (gd.activation, gd.width, gd.depth, gd.target_train_loss) == ("tanh", 64, 2, 0.02)


def test_the_demo_trains_through_the_engine_loop(monkeypatch):
    """Replace the engine's loop: the demo's numbers must change with it (no loop of its own)."""
    calls = []

    def no_training(stepper, tracks, **kwargs):
        calls.append(len(tracks))
        for track in tracks:
            track.log(0, {m: 0.0 for m in ("train_loss", "grad_norm_sq", "weight_norm")})

    monkeypatch.setattr(demo, "train_loop", no_training)
    rows = demo.optimizer_demo(max_steps=5)
    assert calls == [1, 1, 1]
    assert all(r.loss == 0.0 and r.steps == 0 for r in rows)
