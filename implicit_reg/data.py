"""``implicit_reg.data`` moved to :mod:`implicit_reg.workloads.data`; this path re-exports it."""

from .workloads.data import *  # noqa: F401,F403
from .workloads.data import __all__  # noqa: F401
