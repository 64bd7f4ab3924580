"""``implicit_reg.sweep`` moved to :mod:`implicit_reg.engine.sweep`; this path re-exports it."""

from .engine.sweep import *  # noqa: F401,F403
from .engine.sweep import __all__  # noqa: F401
