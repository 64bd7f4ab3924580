"""``implicit_reg.train`` moved to :mod:`implicit_reg.engine.train`; this path re-exports it."""

from .engine.train import *  # noqa: F401,F403
from .engine.train import __all__  # noqa: F401
