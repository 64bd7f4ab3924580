"""``implicit_reg.models`` moved to :mod:`implicit_reg.workloads.models`; this path re-exports it."""

from .workloads.models import *  # noqa: F401,F403
from .workloads.models import __all__  # noqa: F401
