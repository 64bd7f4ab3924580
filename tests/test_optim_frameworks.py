"""The optimizers inside other people's training loops: a real Lightning ``Trainer`` and ignite.

Each framework trains two epochs (3 minibatches each, no shuffling) and the
weights must equal those of the plain loop that calls the optimizer the
documented way.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.core.optim import EGR, GD, SGD
from implicit_reg.core.sam import SAM

F64 = torch.float64
BATCH, N, EPOCHS = 8, 24, 2


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).to(F64)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 4, generator=g, dtype=F64), torch.randn(N, 1, generator=g, dtype=F64)


def _loader():
    return DataLoader(TensorDataset(*_data()), batch_size=BATCH, shuffle=False)


MAKE = {
    "gd": lambda ps: GD(ps, lr=0.1),
    "sgd": lambda ps: SGD(ps, 0.05, 0.9, 0, 1e-3),
    "egr": lambda ps: EGR(ps, lr=0.1),
    "sam": lambda ps: SAM(ps, SGD, rho=0.05, lr=0.05, momentum=0.9),
}


def _plain_loop(kind):
    model = _model()
    opt = MAKE[kind](model.parameters())
    loss_fn = nn.MSELoss()
    for _ in range(EPOCHS):
        for x, y in _loader():
            if kind == "egr":
                opt.step(lambda x=x, y=y: loss_fn(model(x), y))  # closure without backward
            elif kind == "sam":

                def closure(x=x, y=y):
                    opt.zero_grad()
                    loss = loss_fn(model(x), y)
                    loss.backward()
                    return loss

                opt.step(closure)
            else:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
    return model


@pytest.mark.parametrize("kind", ["gd", "sgd", "egr", "sam"])
def test_lightning_trainer_equals_the_plain_loop(kind):
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _model()
            self.loss_fn = nn.MSELoss()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.loss_fn(self.net(x), y)

        def configure_optimizers(self):
            return MAKE[kind](self.net.parameters())

        if kind == "egr":  # Lightning's recipe for second-order optimizers

            def backward(self, loss, *args, **kwargs):
                loss.backward(create_graph=True)

    module = Module()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, _loader())
    ref = _plain_loop(kind)
    assert trainer.global_step == EPOCHS * N // BATCH
    for p, q in zip(ref.parameters(), module.net.parameters()):
        assert torch.equal(p, q), kind


@pytest.mark.parametrize("kind", ["gd", "sgd", "egr", "sam"])
def test_ignite_equals_the_plain_loop(kind):
    ignite_engine = pytest.importorskip("ignite.engine")
    model = _model()
    opt = MAKE[kind](model.parameters())
    loss_fn = nn.MSELoss()
    if kind in ("gd", "sgd"):
        trainer = ignite_engine.create_supervised_trainer(model, opt, loss_fn)
    else:  # two-evaluation optimizers: an update function that hands step a closure

        def update(engine, batch):
            model.train()
            x, y = batch

            def closure():
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward(create_graph=kind == "egr")
                return loss

            return opt.step(closure).item()

        trainer = ignite_engine.Engine(update)
    trainer.run(_loader(), max_epochs=EPOCHS)
    ref = _plain_loop(kind)
    for p, q in zip(ref.parameters(), model.parameters()):
        assert torch.equal(p, q), kind
