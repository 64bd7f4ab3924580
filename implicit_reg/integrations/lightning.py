"""Curvature probes inside a Lightning run: :class:`CurvatureMonitor`.

A ``lightning.Callback`` around :class:`~implicit_reg.integrations.tracker.CurvatureTracker`.
It measures the ``LightningModule`` itself (its ``forward`` with ``loss_fn``,
or ``batch_loss(module, batch)``) on a fixed probe set: once when training
starts (step 0, the initial weights) and then after optimizer steps, every
``every`` steps within the compute budget. Steps are ``trainer.global_step``
(optimizer steps: with gradient accumulation, a probe never falls between
the micro-batches of one step).

Each probe's row goes to every logger the Trainer has (``trainer.loggers``:
CSV, TensorBoard, W&B, ...) through ``logger.log_metrics(metrics, step)``, as
``{prefix}{name}`` (``"curvature/lambda_max"``); booleans are logged as 0/1.
The rows are also kept in ``monitor.rows`` (``monitor.table()``), with or
without a logger. The logger is called directly rather than through
``LightningModule.log``, which would hold step metrics back until the next
``log_every_n_steps`` boundary and drop the others.

Under DDP (``strategy="ddp"``) every rank runs the callback on the
``LightningModule`` itself (the module inside Lightning's DDP wrapper, so no DDP
hook fires in a probe). With ``process_group="auto"`` (a tracker option) each
rank probes a shard of the probe set and the products are summed over the ranks,
so every rank measures the whole probe set; ``shard=True`` cuts the shards from
a probe set every rank holds in full (the group exists only once ``fit``
starts, so the monitor is built before it). See :class:`CurvatureTracker` and
``examples/distributed_lightning.py``.

Example::

    monitor = CurvatureMonitor((X_probe, y_probe), nn.CrossEntropyLoss(), every=20)
    trainer = lightning.Trainer(max_epochs=5, callbacks=[monitor], logger=CSVLogger("logs"))
    trainer.fit(module, loader)
    monitor.table()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
from torch import Tensor

from .tracker import DEFAULT_BUDGET, DEFAULT_EVERY, CurvatureTracker

__all__ = ["CurvatureMonitor", "metrics_of"]


def metrics_of(row: dict, prefix: str = "curvature/") -> dict[str, float]:
    """A tracker row as logger metrics: ``{prefix + name: float}`` without ``step``."""
    return {prefix + k: float(v) for k, v in row.items() if k != "step"}


class CurvatureMonitor(L.Callback):
    """Logs curvature of the module being trained, every ``every`` steps within ``budget``.

    Args:
        probe_data: the fixed probe set (as for :class:`CurvatureTracker`):
            a pair ``(X, y)`` or a re-iterable of batches; moved to the
            module's device at each probe.
        loss_fn: mean-reduced ``loss_fn(module(inputs), targets)``; None when
            ``batch_loss`` is given.
        batch_loss: ``(module, batch) -> (mean loss, batch size)``.
        every, measures, budget: as for :class:`CurvatureTracker`; with
            ``measures=None`` the preconditioned sharpness is measured when
            the Trainer has one optimizer and it is Adam, AdamW or RMSprop.
        prefix: prepended to every logged name.
        **tracker_options: the other :class:`CurvatureTracker` arguments
            (``top_k``, ``chunk_size``, ``mode``, ``seed``, ``trace_hvps``, ...).

    Attributes:
        tracker: the :class:`CurvatureTracker`, built when training starts
            (θ₀ of ``dist_from_init`` is the module's weights then; a run
            resumed from a Lightning checkpoint keeps the first run's θ₀ and
            warm-start vectors, saved by :meth:`state_dict`).
    """

    def __init__(
        self,
        probe_data,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        batch_loss=None,
        every: int = DEFAULT_EVERY,
        measures: Sequence[str] | None = None,
        budget: float | None = DEFAULT_BUDGET,
        prefix: str = "curvature/",
        **tracker_options,
    ):
        super().__init__()
        if (loss_fn is None) == (batch_loss is None):
            raise ValueError("give CurvatureMonitor exactly one of loss_fn and batch_loss")
        self.probe_data, self.loss_fn, self.batch_loss = probe_data, loss_fn, batch_loss
        self.options = dict(every=every, measures=measures, budget=budget, **tracker_options)
        self.prefix = prefix
        self.tracker: CurvatureTracker | None = None
        self._seen_step: int | None = None
        self._restored: dict | None = None

    @property
    def rows(self) -> list[dict]:
        """One dict per probe so far (empty before training starts)."""
        return [] if self.tracker is None else self.tracker.rows

    def table(self):
        """The rows as a pandas ``DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        options = dict(self.options)
        if "optimizer" not in options and len(trainer.optimizers) == 1:
            options["optimizer"] = trainer.optimizers[0]
        self.tracker = CurvatureTracker(
            pl_module, self.loss_fn, self.probe_data, batch_loss=self.batch_loss, **options
        )
        if self._restored:  # resumed from a checkpoint: the run's θ₀ and warm starts
            self.tracker.init_state = dict(self._restored["init_state"])
            self.tracker.state.update(self._restored["warm"])
        self._seen_step = trainer.global_step
        self._log(trainer, self.tracker.step(trainer.global_step))

    def state_dict(self) -> dict:
        """θ₀ and the warm-start vectors, saved in Lightning checkpoints so that a resumed
        run measures ‖θ − θ₀‖ from the first run's θ₀."""
        if self.tracker is None:
            return dict(self._restored or {})
        return {"init_state": self.tracker.init_state, "warm": dict(self.tracker.state)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict) if state_dict else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.tracker is None or step == self._seen_step:
            return  # no optimizer step since the last call (gradient accumulation)
        self._seen_step = step
        self._log(trainer, self.tracker.step(step))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tracker is not None:
            self.tracker.finish()

    def _log(self, trainer: L.Trainer, row: dict | None) -> None:
        if row is None:
            return
        metrics = metrics_of(row, self.prefix)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=row["step"])
