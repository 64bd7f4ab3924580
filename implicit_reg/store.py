"""``implicit_reg.store`` moved to :mod:`implicit_reg.engine.store`; this path re-exports it."""

from .engine.store import *  # noqa: F401,F403
from .engine.store import __all__  # noqa: F401
