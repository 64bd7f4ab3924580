"""``implicit_reg.config`` moved to :mod:`implicit_reg.engine.config`; this path re-exports it."""

from .engine.config import *  # noqa: F401,F403
from .engine.config import __all__  # noqa: F401
