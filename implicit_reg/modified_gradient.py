"""``implicit_reg.modified_gradient`` moved to :mod:`implicit_reg.core.modified_gradient`; this path re-exports it."""

from .core.modified_gradient import *  # noqa: F401,F403
from .core.modified_gradient import __all__  # noqa: F401
