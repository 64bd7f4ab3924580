"""Old home of vectorized sweeps; re-exports (planning: :mod:`implicit_reg.engine.plan`,
ensemble training: :func:`implicit_reg.engine.train.train_runs`, the backend:
:func:`implicit_reg.engine.backends.vectorized_backend`)."""

from . import plan as _plan
from .backends import vectorized_backend
from .plan import *  # noqa: F403
from .train import train_runs

__all__ = [*_plan.__all__, "train_runs", "vectorized_backend"]
