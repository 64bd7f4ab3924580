"""``implicit_reg.fullbatch`` moved to :mod:`implicit_reg.core.objective`; this path re-exports it."""

from .core.objective import *  # noqa: F401,F403
from .core.objective import __all__  # noqa: F401
