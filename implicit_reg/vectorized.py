"""``implicit_reg.vectorized`` moved to :mod:`implicit_reg.ensemble.vectorized`; this path re-exports it."""

from .ensemble.vectorized import *  # noqa: F401,F403
from .ensemble.vectorized import __all__  # noqa: F401
