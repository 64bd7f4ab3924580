"""Curvature probes inside other people's training.

- :class:`CurvatureTracker` (``implicit_reg.integrations.tracker``): a plain
  training loop calls ``tracker.step(t)`` once per optimizer step.
- ``implicit_reg.integrations.lightning.CurvatureMonitor``: a Lightning
  ``Callback`` around the tracker, logging to the Trainer's loggers.
- ``implicit_reg.integrations.huggingface``: ``CurvatureCallback``, a
  ``transformers.TrainerCallback`` (dict batches, the model's own loss), and
  ``ClosureTrainer``, a ``Trainer`` that steps :class:`~implicit_reg.core.optim.EGR`
  and :class:`~implicit_reg.core.sam.SAM` with a closure.

The Lightning and Hugging Face modules import their frameworks, so they are
not imported here; see ``docs/integrations.md``.
"""

from .tracker import DEFAULT_BUDGET, DEFAULT_EVERY, MEASURES, CurvatureTracker

__all__ = ["CurvatureTracker", "MEASURES", "DEFAULT_EVERY", "DEFAULT_BUDGET"]
