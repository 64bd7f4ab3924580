"""CurvatureMonitor in a real ``lightning.Trainer`` run (CPU, a tiny MLP with BatchNorm and
dropout): the λ_max it logs through the Trainer's CSVLogger equals the package's probe and a
dense float64 eigendecomposition on the same weights; mid-training the model, ``.grad``, BN
statistics, modes and RNG are untouched, and the run is bit for bit the one without it; the
budget spaces the probes."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.probes import HessianOperator, preconditioned_sharpness, run_probes

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from implicit_reg.integrations.lightning import CurvatureMonitor  # noqa: E402

F64 = torch.float64
N, BATCH = 32, 8


def _data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, 3, generator=g, dtype=F64)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()


class Net(L.LightningModule):
    def __init__(self, on_step=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2), nn.Linear(6, 3)
        ).to(F64)
        self.loss_fn = nn.CrossEntropyLoss()
        self.on_step = on_step

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.on_step is not None:
            self.on_step()
        return self.loss_fn(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def _fit(module, callbacks, tmp_path=None, max_steps=6):
    torch.manual_seed(7)  # the dropout masks of the run
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=CSVLogger(tmp_path) if tmp_path is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(*_data()), batch_size=BATCH))
    return trainer


class Weights(L.Callback):
    """Keeps a copy of the module at every step (placed after the monitor)."""

    def __init__(self):
        self.at = {}

    def on_train_start(self, trainer, pl_module):
        self.at[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.on_train_start(trainer, pl_module)


def _dense_lambda_max(state, X, y):
    """λ_max of the eval-mode Hessian from torch.func.hessian on a flat θ (float64)."""
    model = Net().net
    model.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    model.eval()

    def loss(t):
        params, i = {}, 0
        for k, s in zip(names, shapes):
            params[k] = t[i : i + math.prod(s)].view(s)
            i += math.prod(s)
        return nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (X,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return float(torch.linalg.eigvalsh(hessian(loss)(theta))[-1])


def test_the_logged_lambda_max_is_the_package_probe_on_the_same_weights(tmp_path):
    X, y = _data()
    probe = (X[:16], y[:16])
    monitor = CurvatureMonitor(probe, nn.CrossEntropyLoss(), every=2, budget=None)
    weights = Weights()
    module = Net()
    trainer = _fit(module, [monitor, weights], tmp_path)
    with open(f"{trainer.logger.log_dir}/metrics.csv") as fh:
        logged = {
            int(r["step"]): float(r["curvature/lambda_max"])
            for r in csv.DictReader(fh)
            if r.get("curvature/lambda_max")
        }
    assert sorted(logged) == [0, 2, 4, 6]
    for step, value in logged.items():
        state = weights.at[step]
        ref = Net()
        ref.load_state_dict(state)
        package = run_probes(["lambda_max"], ref, nn.CrossEntropyLoss(), probe)["lambda_max"]
        dense = _dense_lambda_max(state, *probe)
        assert value == pytest.approx(package, rel=1e-7), step
        assert value == pytest.approx(dense, rel=1e-7), step
    row = monitor.table().set_index("step").loc[6]
    assert row["lambda_max_converged"] and row["lambda_max_residual"] < 1e-6
    assert row["dist_from_init"] > 0 and not math.isnan(row["ggn_lambda_max"])


class Snapshot(L.Callback):
    """Placed before the monitor: records everything a probe could disturb."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.state = (
            [p.detach().clone() for p in pl_module.parameters()],
            [(p.grad, p.grad.clone()) for p in pl_module.parameters()],
            [b.clone() for b in pl_module.buffers()],
            [m.training for m in pl_module.modules()],
            torch.get_rng_state(),
        )


class Compare(L.Callback):
    """Placed after the monitor: after a step it probed at, everything is as recorded."""

    def __init__(self, monitor, snapshot):
        self.monitor, self.snapshot, self.checked = monitor, snapshot, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.monitor.rows or self.monitor.rows[-1]["step"] != trainer.global_step:
            return
        params, grads, buffers, modes, rng = self.snapshot.state
        assert all(torch.equal(p, q) for p, q in zip(pl_module.parameters(), params))
        for p, (obj, val) in zip(pl_module.parameters(), grads):
            assert p.grad is obj and torch.equal(p.grad, val)
        assert all(torch.equal(b, c) for b, c in zip(pl_module.buffers(), buffers))
        assert [m.training for m in pl_module.modules()] == modes and pl_module.training
        assert torch.equal(torch.get_rng_state(), rng)
        self.checked.append(trainer.global_step)


def test_a_probe_mid_training_leaves_everything_and_the_run_is_unchanged():
    X, y = _data()
    monitor = CurvatureMonitor((X[:16], y[:16]), nn.CrossEntropyLoss(), every=3, budget=None)
    snapshot = Snapshot()
    compare = Compare(monitor, snapshot)
    tracked = Net()
    _fit(tracked, [snapshot, monitor, compare])
    assert compare.checked == [3, 6]
    plain = Net()
    _fit(plain, [])
    for (k, a), b in zip(plain.state_dict().items(), tracked.state_dict().values()):
        assert torch.equal(a, b), k


def test_the_budget_spaces_the_probes_in_a_trainer_run():
    clock = [0.0]

    def tick():  # a training step costs 1/8 s of the fake clock
        clock[0] += 1 / 8

    def loss_fn(out, target):  # each pass of a probe costs 1/256 s
        clock[0] += 1 / 256
        return nn.functional.cross_entropy(out, target)

    X, y = _data()
    monitor = CurvatureMonitor(
        (X, y), loss_fn, every=1, budget=0.1, clock=lambda: clock[0],
        measures=["loss", "lambda_max"],
    )  # fmt: skip
    _fit(Net(on_step=tick), [monitor], max_steps=40)
    steps = [r["step"] for r in monitor.rows]
    assert steps[0] == 0 and 3 <= len(steps) < 20, steps
    tracker = monitor.tracker
    # each probe was allowed by P ≤ b·T at the time, and the one before it was not
    spent = 0.0
    for prev, row in zip(monitor.rows, monitor.rows[1:]):
        spent += prev["probe_seconds"]
        assert spent <= 0.1 * row["step"] / 8, row["step"]  # T = steps · 1/8 s
        assert row["step"] == prev["step"] + 1 or spent > 0.1 * (row["step"] - 1) / 8
    assert tracker.train_seconds() == pytest.approx(40 / 8)  # finish() stopped the clock
    assert tracker.probe_seconds <= 0.1 * 40 / 8 + max(r["probe_seconds"] for r in monitor.rows)


def test_the_monitor_needs_one_loss():
    with pytest.raises(ValueError, match="exactly one of loss_fn and batch_loss"):
        CurvatureMonitor(_data())


class AdamNet(Net):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_with_adam_the_monitor_logs_the_preconditioned_sharpness():
    X, y = _data()
    probe = (X[:16], y[:16])
    monitor = CurvatureMonitor(probe, nn.CrossEntropyLoss(), every=1, budget=None,
                               measures=["preconditioned_lambda_max"])  # fmt: skip
    module = AdamNet()
    trainer = _fit(module, [monitor], max_steps=2)
    rows = monitor.rows
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert math.isnan(rows[0]["preconditioned_lambda_max"])  # no P before the first step
    op = HessianOperator(module, nn.CrossEntropyLoss(), probe)
    ref = preconditioned_sharpness(op, trainer.optimizers[0])  # the same weights and state
    assert rows[-1]["preconditioned_lambda_max"] == pytest.approx(
        float(ref.eigenvalues[0]), rel=1e-7
    )
    assert rows[-1]["preconditioned_threshold"] == pytest.approx((2 + 2 * 0.9) / (0.1 * 0.01))


def test_a_resumed_run_measures_the_distance_from_the_first_runs_init(tmp_path):
    X, y = _data()
    probe = (X[:16], y[:16])
    first = CurvatureMonitor(probe, nn.CrossEntropyLoss(), every=3, budget=None,
                             measures=["lambda_max", "dist_from_init"])  # fmt: skip
    module = Net()
    theta0 = torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])
    trainer = _fit(module, [first], max_steps=3)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    second = CurvatureMonitor(probe, nn.CrossEntropyLoss(), every=3, budget=None,
                              measures=["lambda_max", "dist_from_init"])  # fmt: skip
    resumed = Net()
    torch.manual_seed(7)
    L.Trainer(max_steps=6, accelerator="cpu", devices=1, callbacks=[second], logger=False,
              enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(
        resumed, DataLoader(TensorDataset(X, y), batch_size=BATCH), ckpt_path=tmp_path / "step3.ckpt"
    )  # fmt: skip
    rows = second.rows
    assert [r["step"] for r in rows] == [3, 6]
    theta = torch.cat([p.detach().reshape(-1) for p in resumed.parameters()])
    assert rows[-1]["dist_from_init"] == pytest.approx(float((theta - theta0).norm()), rel=1e-12)
    assert rows[0]["dist_from_init"] == pytest.approx(first.rows[-1]["dist_from_init"], rel=1e-12)
    assert rows[0]["lambda_max_hvps"] < first.rows[0]["lambda_max_hvps"]  # warm from the ckpt
