"""Curvature probes and curvature-aware optimizers in the Hugging Face ``Trainer``.

Needs the ``hf`` extra (``pip install "implicit-reg[hf]"``: transformers, accelerate).

- :class:`CurvatureCallback`: a ``transformers.TrainerCallback`` around
  :class:`~implicit_reg.integrations.tracker.CurvatureTracker`. The probe set is
  one batch or a list of batches as the Trainer's data collator makes them
  (dicts with ``input_ids``, ``attention_mask``, ``labels``, ...), and the
  loss is the model's own (``model(**batch).loss``, :func:`model_loss`). It
  probes when training begins (step 0) and at the end of optimizer steps,
  every ``every`` steps within the budget, and logs each row through the
  Trainer's ``log`` (so every reporting integration and
  ``trainer.state.log_history`` see it) once attached with :meth:`attach`.
- :class:`ClosureTrainer`: a ``Trainer`` whose optimizer step is taken with a
  closure, as :class:`~implicit_reg.core.optim.EGR` (exact and finite
  difference) and :class:`~implicit_reg.core.sam.SAM` need:

      trainer = ClosureTrainer(model=model, args=args, train_dataset=ds,
                               optimizers=(EGR(model.parameters(), lr=0.1), None))

Attention. The Hessian-vector product differentiates the model twice; the
fused CPU kernel behind ``attn_implementation="sdpa"`` has no second
derivative ("derivative for ..._flash_attention_for_cpu_backward is not
implemented"). Build models you probe, or train with exact EGR, with
``attn_implementation="eager"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback

from ..probes.batches import batch_size_of
from .tracker import DEFAULT_BUDGET, DEFAULT_EVERY, CurvatureTracker

__all__ = ["model_loss", "CurvatureCallback", "ClosureTrainer"]


def model_loss(model: nn.Module, batch: Mapping) -> tuple[Tensor, int]:
    """The model's own mean loss on a dict batch and the batch size: ``(model(**batch).loss, n)``.

    n is the length of ``batch["labels"]`` (else of the batch's first tensor):
    batches are weighted by rows, so a loss that is a mean over tokens weights
    the tokens of a short batch more; give equal batches (or one) for such models.
    """
    if not isinstance(batch, Mapping):
        raise ValueError(f"a Hugging Face batch is a dict of tensors, got {type(batch).__name__}")
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, Mapping) else (out[0] if out else None)
    if loss is None:
        raise ValueError(
            "the model returned no loss: the probe batches need their targets (e.g. 'labels')"
        )
    return loss, batch_size_of(batch["labels"] if "labels" in batch else batch)


def _batches(probe_data) -> list[Mapping]:
    if isinstance(probe_data, Mapping):
        return [probe_data]
    if (
        isinstance(probe_data, Sequence)
        and probe_data
        and all(isinstance(b, Mapping) for b in probe_data)
    ):
        return list(probe_data)
    raise ValueError(
        "probe_data must be a dict batch or a non-empty list of dict batches, "
        f"got {type(probe_data).__name__}"
    )


class CurvatureCallback(TrainerCallback):
    """Logs curvature of the model a ``transformers.Trainer`` trains.

    Args:
        probe_data: a dict batch or a list of dict batches (the probe set).
        every, budget: as for :class:`CurvatureTracker`.
        measures: names from :data:`implicit_reg.integrations.MEASURES` except
            ``ggn_lambda_max`` (it needs a loss on the outputs, which the model's
            own loss is not); None: all the others, the preconditioned
            sharpness when the Trainer's optimizer is Adam/AdamW (the default)
            or RMSprop.
        batch_loss: ``(model, batch) -> (mean loss, batch size)``; default
            :func:`model_loss`.
        prefix: prepended to every logged name.
        **tracker_options: the other :class:`CurvatureTracker` arguments.

    Use::

        callback = CurvatureCallback(probe_batch, every=50).attach(trainer)
        trainer.train()
        callback.table()

    ``attach`` adds the callback and lets it log through ``trainer.log``.
    Added as ``Trainer(callbacks=[callback])`` instead, it cannot reach the
    Trainer and appends its rows to ``state.log_history`` directly (the
    reporting integrations then do not see them).
    """

    def __init__(
        self,
        probe_data,
        *,
        every: int = DEFAULT_EVERY,
        measures: Sequence[str] | None = None,
        budget: float | None = DEFAULT_BUDGET,
        batch_loss: Callable = model_loss,
        prefix: str = "curvature/",
        **tracker_options,
    ):
        self.probe_data = _batches(probe_data)
        self.batch_loss = batch_loss
        self.options = dict(every=every, measures=measures, budget=budget, **tracker_options)
        self.prefix = prefix
        self.trainer: Trainer | None = None
        self.tracker: CurvatureTracker | None = None

    def attach(self, trainer: Trainer) -> CurvatureCallback:
        """Add this callback to ``trainer`` and log through ``trainer.log``; returns self."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    @property
    def rows(self) -> list[dict]:
        """One dict per probe so far."""
        return [] if self.tracker is None else self.tracker.rows

    def table(self):
        """The rows as a pandas ``DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise ValueError("CurvatureCallback needs the model (the Trainer passes it)")
        options = dict(self.options)
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps it
        options.setdefault("optimizer", optimizer)
        self.tracker = CurvatureTracker(  # unwraps DataParallel/DDP (probes.distributed.unwrap)
            model, None, self.probe_data, batch_loss=self.batch_loss, **options
        )
        self._log(state, self.tracker.step(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self._log(state, self.tracker.step(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.finish()

    def _log(self, state, row: dict | None) -> None:
        if row is None:
            return
        logs = {self.prefix + k: float(v) for k, v in row.items() if k != "step"}
        if self.trainer is not None:
            self.trainer.log(logs)
        else:
            state.log_history.append({**logs, "step": row["step"]})


def _skip_next_step(optimizer) -> None:
    """Make the next ``optimizer.step()`` (the Trainer loop's own) a no-op, once.

    An instance-level ``step`` already there (torch's LR scheduler wraps the
    optimizer's ``step`` to count calls) is put back after the skipped call.
    """
    own = optimizer.__dict__.get("step")

    def skip(closure=None):
        if own is None:
            del optimizer.step  # back to the class's step
        else:
            optimizer.step = own
        return None

    optimizer.step = skip


class ClosureTrainer(Trainer):
    """A ``Trainer`` that takes each optimizer step with a closure.

    ``Trainer.training_step`` computes the loss and calls ``backward()``; the
    loop then calls ``optimizer.step()`` without arguments. Optimizers that
    evaluate the gradient more than once per step need the loss as a
    function of θ instead: EGR differentiates it twice (exact, Barrett &
    Dherin, ICLR 2021: θ ← θ − h(∇L + 2μH∇L)) or evaluates the gradient at a
    second point (finite difference), and SAM (Foret et al., ICLR 2021)
    evaluates it at θ + ρ∇L/‖∇L‖. Here ``training_step`` hands the optimizer
    the closure ``lambda: compute_loss(model, inputs)`` (the model's own loss,
    or the subclass's ``compute_loss``; no ``backward()``: the optimizers
    differentiate it themselves), steps, and returns the loss at the
    pre-step θ. The loop's own ``optimizer.step()`` that follows is skipped;
    the learning-rate scheduler, logging and callbacks run as usual.

    Works with any optimizer whose ``step(closure)`` accepts a closure that
    returns the loss without calling ``backward()`` (EGR, SAM, ASAM,
    GradNormPenalty; torch's own optimizers expect a closure that calls
    ``backward()``, so train with them in the plain ``Trainer``). Refuses settings the
    closure step cannot honour: gradient accumulation (the penalty is on the
    gradient of the whole batch, not a sum over micro-batches) and gradient
    clipping (the loop clips ``.grad`` after the step is taken); set
    ``gradient_accumulation_steps=1`` and ``max_grad_norm=0``.

    Example::

        args = TrainingArguments("out", max_steps=100, max_grad_norm=0.0, report_to=[])
        opt = EGR(model.parameters(), lr=0.1, method="finite_difference")
        ClosureTrainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None)).train()
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        if a.gradient_accumulation_steps != 1:
            raise ValueError(
                "ClosureTrainer steps once per batch: set gradient_accumulation_steps=1, "
                f"got {a.gradient_accumulation_steps}"
            )
        if a.max_grad_norm:
            raise ValueError(
                "ClosureTrainer cannot clip: the Trainer clips .grad after the closure step has "
                f"been taken; set max_grad_norm=0 (got {a.max_grad_norm})"
            )

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)

        first: list[Tensor] = []  # the loss at the pre-step θ (the closure's first call)
        # (transformers < 4.46 has no num_items_in_batch)
        kw = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}

        def closure():  # L(θ) on this batch, without backward(): the optimizer differentiates it
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, **kw)
            if not first:
                first.append(loss.detach())
            return loss

        with torch.enable_grad():
            self.optimizer.step(closure)  # accelerate's wrapper does not return step's value
        _skip_next_step(self.optimizer)
        if not first:
            raise ValueError("the optimizer's step(closure) never called the closure")
        return first[0]
