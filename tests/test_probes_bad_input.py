"""Bad input from other people's data: one clear ValueError that names the chunk and the problem,
and a tracker/callback whose probe fails logs why and lets the training go on."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.integrations.tracker import CurvatureTracker
from implicit_reg.probes import GGNOperator, HessianOperator, hutchpp, lanczos, run_probes

F64 = torch.float64
N = 20


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, generator=g, dtype=F64), torch.randn(N, 1, generator=g, dtype=F64)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(F64)


def raises(fn, match: str) -> str:
    """The ValueError (exactly that type) that ``fn`` raises, its message matching ``match``."""
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert type(info.value) is ValueError
    assert "\n" not in str(info.value), "one line"
    assert "array must not contain" not in str(info.value)  # scipy's message
    return str(info.value)


MSE = nn.MSELoss()


def test_a_nan_in_the_inputs_names_the_chunk_and_the_row():
    X, y = data()
    X[13, 1] = float("nan")
    msg = raises(
        lambda: lanczos(HessianOperator(model(), MSE, (X, y), chunk_size=5), 1),
        r"^chunk 2 \(rows 10-14 of the data\): NaN in the inputs at row 13; ",
    )
    # the same for the GGN, Hutch++, and the probe registry the engine calls
    assert raises(lambda: GGNOperator(model(), MSE, (X, y), chunk_size=5), "chunk 2") == msg
    op = lambda: HessianOperator(model(), MSE, (X, y), chunk_size=5, product="vmap")  # noqa: E731
    assert raises(lambda: hutchpp(op(), n_hvp=8), "chunk 2") == msg
    assert raises(lambda: run_probes(["lambda_max"], model(), MSE, (X, y), chunk_size=5), "chunk 2")


def test_an_inf_in_the_targets_of_a_dataloader_names_the_batch():
    X, y = data()
    y[7] = float("-inf")
    y[9] = float("inf")
    loader = DataLoader(TensorDataset(X, y), batch_size=6)  # batches 0-5, 6-11, ...
    raises(
        lambda: HessianOperator(model(), MSE, loader),
        r"^chunk 1 \(batch 1 of the data\): inf in the targets at rows 1, 3 of the batch; ",
    )


def test_nan_and_inf_in_a_dict_batch_of_batch_loss_are_named():
    X, y = data()
    X[2, 0], X[4, 2] = float("nan"), float("inf")

    def batch_loss(m, b):
        return MSE(m(b["x"]), b["y"]), len(b["y"])

    raises(
        lambda: HessianOperator(model(), None, [{"x": X, "y": y}], batch_loss=batch_loss),
        r"^chunk 0 \(batch 0 of the data\): NaN and inf in the batch\['x'\] at rows 2, 4 ",
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda m, d: lanczos(HessianOperator(m, MSE, d, chunk_size=5), 1),
        lambda m, d: lanczos(HessianOperator(m, MSE, d, chunk_size=5, product="vmap"), 1),
        lambda m, d: lanczos(HessianOperator(m, MSE, d, chunk_size=5, method="jvp"), 1),
        lambda m, d: lanczos(GGNOperator(m, MSE, d, chunk_size=5), 1),
        lambda m, d: HessianOperator(m, MSE, d, chunk_size=5).loss_and_gradient(),
    ],
    ids=["hessian-loop", "hessian-vmap", "hessian-jvp", "ggn", "loss-gradient"],
)
def test_a_non_finite_loss_on_finite_data_says_so_and_names_the_chunk(make):
    m = model()
    with torch.no_grad():
        m[2].bias.fill_(float("nan"))  # diverged weights
    raises(lambda: make(m, data()), r"^chunk 0 \(rows 0-4 of the data\): the loss is nan \(not")


def test_a_loss_that_overflows_to_inf_says_so():
    def exp_loss(out, target):  # finite data and weights, an infinite loss
        return torch.exp(1e4 * (out - target) ** 2).mean()

    raises(
        lambda: HessianOperator(model(), exp_loss, data(), chunk_size=10).loss(),
        r"^chunk 0 \(rows 0-9 of the data\): the loss is inf \(not finite\)",
    )


def test_no_trainable_parameters_an_empty_data_set_and_a_non_scalar_loss_fail_in_one_line():
    X, y = data()
    frozen = model().requires_grad_(False)
    raises(lambda: HessianOperator(frozen, MSE, (X, y)), "^the model has no trainable parameters")
    for empty in [(X[:0], y[:0]), [], DataLoader(TensorDataset(X[:0], y[:0]), batch_size=4)]:
        raises(lambda e=empty: HessianOperator(model(), MSE, e), "^the data set is empty$")
    per_sample = nn.MSELoss(reduction="none")
    for make in (HessianOperator, GGNOperator):
        raises(
            lambda make=make: lanczos(make(model(), per_sample, (X, y)), 1),
            r"^loss_fn must return a scalar \(mean-reduced\) loss, got shape \(20, 1\)$",
        )


# ------------------------------------------------------------------ the integrations
def test_the_tracker_rejects_bad_probe_data_before_training():
    X, y = data()
    bad = X.clone()
    bad[3, 0] = float("nan")
    raises(lambda: CurvatureTracker(model(), MSE, (bad, y), chunk_size=4), r"^chunk 0 .* row 3;")
    raises(
        lambda: CurvatureTracker(model(), nn.MSELoss(reduction="none"), (X, y)),
        "must return a scalar",
    )
    raises(lambda: CurvatureTracker(model(), MSE, (X[:0], y[:0])), "^the data set is empty$")
    raises(lambda: CurvatureTracker(model().requires_grad_(False), MSE, (X, y)), "no trainable")


def test_a_probe_that_fails_mid_training_is_logged_and_the_training_goes_on(caplog):
    """A stock loop whose training diverges at step 4 (the lr jumps): the probes before
    it are rows, the ones after it fail with the reason logged and kept, the loop runs
    to the end, and a failed probe leaves the model as it found it."""
    X, y = data()
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    tracker = CurvatureTracker(
        net, MSE, (X, y), every=2, budget=None, measures=["loss", "lambda_max"], chunk_size=10
    )
    steps_done = 0
    with caplog.at_level(logging.WARNING, logger="implicit_reg.integrations.tracker"):
        for t in range(10):
            before = [p.detach().clone() for p in net.parameters()]
            row = tracker.step(t)
            same = [
                torch.equal(a.view(torch.int64), b.view(torch.int64))
                for a, b in zip(before, net.parameters())
            ]
            assert all(same), f"step {t}: the probe changed the weights (bit for bit, NaN too)"
            assert (row is None) == (t % 2 == 1 or t >= 6), (t, row)
            if t == 4:
                for group in opt.param_groups:
                    group["lr"] = 1e200  # diverges: weights overflow to inf, then NaN
            opt.zero_grad()
            MSE(net(X), y).backward()
            opt.step()
            steps_done += 1
    assert steps_done == 10
    assert [r["step"] for r in tracker.rows] == [0, 2, 4]
    assert [f["step"] for f in tracker.failures] == [6, 8]
    assert all("ValueError: chunk 0 (rows 0-9 of the data)" in f["error"] for f in tracker.failures)
    assert all("not finite" in f["error"] for f in tracker.failures)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "curvature probe at step 6 failed (training goes on)" in logged[0]
    assert "the loss is" in logged[0]


def test_a_lightning_fit_goes_on_when_the_monitors_probe_fails(tmp_path, caplog):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from implicit_reg.integrations.lightning import CurvatureMonitor

    X, y = data()

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            if self.global_step == 2:  # the weights go bad mid-training
                with torch.no_grad():
                    self.net[2].bias.fill_(float("nan"))
            return MSE(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    monitor = CurvatureMonitor((X, y), MSE, every=1, budget=None, measures=["loss"])
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", devices=1, callbacks=[monitor],
        logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="implicit_reg.integrations.tracker"):
        trainer.fit(Net(), DataLoader(TensorDataset(X, y), batch_size=4))
    assert trainer.global_step == 5
    failed = [f["step"] for f in monitor.tracker.failures]
    assert (
        failed
        and failed[0] >= 2
        and [r["step"] for r in monitor.tracker.rows] == list(range(failed[0]))
    )
    assert any("the loss is nan" in r.getMessage() for r in caplog.records)
