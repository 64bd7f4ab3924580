"""``implicit_reg.regularizers`` moved to :mod:`implicit_reg.core.regularizers`; this path re-exports it."""

from .core.regularizers import *  # noqa: F401,F403
from .core.regularizers import __all__  # noqa: F401
