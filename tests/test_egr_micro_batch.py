"""The engine's explicit SGD regularizer: EGR with the penalty averaged over micro-batches.

Oracle: the modified loss L_B + Σ_j w_j·μ‖∇L_j‖² built with plain autograd
(``create_graph=True``, through :mod:`implicit_reg.core.regularizers`), never
through ``grad_and_hvp``, in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from implicit_reg.core.optim import EGR
from implicit_reg.core.regularizers import gradient_norm_penalty, sgd_implicit_regularizer
from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.steppers import batch_chunks
from implicit_reg.engine.train import run
from implicit_reg.workloads.models import build_model


def egr_micro_batch_step(opt, model, loss_fn, batch, micro_batch):
    """The serial stepper's micro-batch step: EGR.step over the engine's chunks."""
    return opt.step(chunks=batch_chunks(model, loss_fn, batch, micro_batch), penalty="per_chunk")


def _problem(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    model = build_model(
        "mlp", input_dim=5, output_dim=3, width=6, depth=2, activation="tanh", seed=seed
    ).double()
    return model, nn.CrossEntropyLoss(), (x, y)


def _oracle_step(model, loss_fn, batch, micro, lr, mu):
    """θ − h·∇(L_B + Σ_j w_j μ‖∇L_j‖²) by double backward on the explicit loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    n = len(x)
    total = loss_fn(model(x), y)
    for i in range(0, n, micro):
        lj = loss_fn(model(x[i : i + micro]), y[i : i + micro])
        w = len(x[i : i + micro]) / n
        total = total + gradient_norm_penalty(lj, params, coeff=w * mu)
    grads = torch.autograd.grad(total, params)
    return [(p - lr * g).detach() for p, g in zip(params, grads)]


@pytest.mark.parametrize("n, micro", [(12, 4), (10, 4), (9, 1)])
def test_micro_batch_step_matches_explicit_loss(n, micro):
    model, loss_fn, batch = _problem(n)
    lr, mu = 0.3, 0.7
    expected = _oracle_step(model, loss_fn, batch, micro, lr, mu)
    opt = EGR(list(model.parameters()), lr=lr, coeff=mu, method="exact", module=model)
    loss = egr_micro_batch_step(opt, model, loss_fn, batch, micro)
    with torch.no_grad():
        before = float(loss_fn(*_forward_before(n, batch)))
    assert float(loss) == pytest.approx(before, rel=1e-12)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def _forward_before(n, batch):
    model, _, _ = _problem(n)  # same seed: the parameters before the step
    return model(batch[0]), batch[1]


def test_equal_micro_batches_give_smith_et_al_average():
    """Equal micro-batches: the penalty is (h/4J)·Σ_j‖∇L_j‖² of
    ``sgd_implicit_regularizer`` when μ = h/4 (the default coefficient)."""
    model, loss_fn, batch = _problem(12, seed=1)
    params = list(model.parameters())
    lr, micro = 0.2, 3
    x, y = batch
    losses = [loss_fn(model(x[i : i + micro]), y[i : i + micro]) for i in range(0, 12, micro)]
    total = loss_fn(model(x), y) + sgd_implicit_regularizer(losses, params, lr=lr)
    grads = torch.autograd.grad(total, params)
    expected = [(p - lr * g).detach() for p, g in zip(params, grads)]
    opt = EGR(params, lr=lr, method="exact", module=model)  # coeff None: μ = h/4
    egr_micro_batch_step(opt, model, loss_fn, batch, micro)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_one_micro_batch_is_the_egr_step():
    model, loss_fn, batch = _problem(8, seed=2)
    twin, _, _ = _problem(8, seed=2)
    lr, mu = 0.25, 0.4
    g_before = torch.autograd.grad(loss_fn(twin(batch[0]), batch[1]), list(twin.parameters()))
    opt = EGR(list(model.parameters()), lr=lr, coeff=mu, method="exact", module=model)
    egr_micro_batch_step(opt, model, loss_fn, batch, micro_batch=8)
    ref = EGR(list(twin.parameters()), lr=lr, coeff=mu, method="exact", module=twin)
    ref.step(lambda: loss_fn(twin(batch[0]), batch[1]))
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    for p, g in zip(model.parameters(), g_before):  # .grad holds the batch gradient g_B
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_run_uses_micro_batches():
    base = dict(
        dataset="teacher", n_train=16, n_test=8, width=4, optimizer="egr", batch_size=8,
        egr_coeff=0.5, lr=0.1, steps=4, eval_every=2, probes=(), dtype="float64",
    )  # fmt: skip
    whole = run(RunConfig(**base), raise_errors=True)
    micro = run(RunConfig(**base, egr_micro_batch=2), raise_errors=True)
    assert whole.status == micro.status == "complete"
    assert micro.summary["train_loss"] != whole.summary["train_loss"]
    assert RunConfig(**base, egr_micro_batch=2).config_hash() != RunConfig(**base).config_hash()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(optimizer="sgd", batch_size=8, egr_micro_batch=2), "needs optimizer 'egr'"),
        (dict(optimizer="egr", egr_method="finite_difference", egr_micro_batch=2), "exact"),
        (dict(optimizer="egr", egr_micro_batch=0), "egr_micro_batch must be an integer >= 1"),
    ],
)
def test_config_rejects_bad_micro_batch(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)


def test_vectorized_sweeps_train_micro_batch_runs_serially():
    """The ensemble step has no micro-batch penalty: such runs must not be grouped."""
    from implicit_reg.engine.vectorized_sweep import group_key, plan_sweep

    base = RunConfig(optimizer="egr", batch_size=8, egr_micro_batch=2, egr_coeff=0.1)
    configs = [base.replace(seed=s) for s in range(3)]
    assert group_key(configs[0]) is None
    plan = plan_sweep(configs)
    assert plan.groups == [] and len(plan.singles) == 3
    plain = [base.replace(egr_micro_batch=None, seed=s) for s in range(3)]
    assert len(plan_sweep(plain).groups) == 1
