"""The Lightning CurvatureMonitor in a DDP run on 2 CPU processes.

Run with ``torchrun --nproc-per-node 2 examples/distributed_lightning.py``. Lightning's
``ddp`` strategy wraps the module in DDP and gives each rank its part of every epoch; the
monitor gives each rank its shard of the probe set (``shard=True``) and sums the
products over the ranks (``process_group="auto"``), so both ranks log the
full-probe-set curvature. Rank 0 then measures the initial weights in one process on
the whole probe set, to compare with the monitor's first row.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from implicit_reg.integrations import CurvatureTracker
from implicit_reg.integrations.lightning import CurvatureMonitor


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 20, generator=g, dtype=torch.float64)
    return X, (X[:, :5] + 0.3 * torch.randn(n, 5, generator=g, dtype=torch.float64)).argmax(1)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = Classifier().double()
    initial = Classifier().double()
    initial.load_state_dict(module.state_dict())
    probe = data(301, seed=2)
    monitor = CurvatureMonitor(
        probe, nn.CrossEntropyLoss(), every=20, budget=None, process_group="auto", shard=True,
        measures=["loss", "lambda_max", "trace", "grad_norm_sq"],
    )  # fmt: skip
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=5, callbacks=[monitor],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(TensorDataset(*data(1024, seed=1)), batch_size=64))
    rank = dist.get_rank()
    rows = [None] * dist.get_world_size()
    mine = [{k: v for k, v in r.items() if k not in ("probe_seconds", "overhead")}
            for r in monitor.rows]  # fmt: skip
    dist.all_gather_object(rows, mine)
    if rank == 0:
        cols = ["step", "loss", "lambda_max", "lambda_max_residual", "trace", "grad_norm_sq"]
        print(monitor.table()[cols].to_string(index=False))
        print("rows identical on both ranks:", rows[0] == rows[1])
        print("probe rows per rank:", len(monitor.tracker.probe_data[0]), "of", len(probe[0]))
        one = CurvatureTracker(
            initial, nn.CrossEntropyLoss(), probe, budget=None,
            measures=["loss", "lambda_max", "trace", "grad_norm_sq"],
        ).measure(0)  # fmt: skip
        for k in ("loss", "lambda_max", "trace", "grad_norm_sq"):
            a, b = monitor.rows[0][k], one[k]
            print(
                f"step 0 {k:13s} DDP {a:.16g}  1 process {b:.16g}  rel. diff {abs(a - b) / abs(b):.1e}"
            )


if __name__ == "__main__":
    main()
