"""``implicit_reg.optim`` moved to :mod:`implicit_reg.core.optim`; this path re-exports it."""

from .core.optim import *  # noqa: F401,F403
from .core.optim import __all__  # noqa: F401
