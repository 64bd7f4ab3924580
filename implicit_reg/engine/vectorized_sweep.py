"""Old home of vectorized sweeps; re-exports (planning: :mod:`implicit_reg.engine.plan`,
ensemble training: :func:`implicit_reg.engine.train.train_runs`, the backend:
:func:`implicit_reg.engine.backends.vectorized_backend`)."""

from .backends import vectorized_backend
from .plan import (
    CPU_MAX_STEP_FLOPS,
    DEFAULT_MAX_MEMBERS,
    MEMBER_FIELDS,
    SUPPORTED_FIELDS,
    SweepPlan,
    group_key,
    plan_sweep,
    step_flops,
)
from .train import train_runs

__all__ = [
    "MEMBER_FIELDS",
    "DEFAULT_MAX_MEMBERS",
    "SUPPORTED_FIELDS",
    "CPU_MAX_STEP_FLOPS",
    "step_flops",
    "SweepPlan",
    "group_key",
    "plan_sweep",
    "train_runs",
    "vectorized_backend",
]
