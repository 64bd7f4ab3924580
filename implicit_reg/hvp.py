"""``implicit_reg.hvp`` moved to :mod:`implicit_reg.core.hvp`; this path re-exports it."""

from .core.hvp import *  # noqa: F401,F403
from .core.hvp import __all__  # noqa: F401
