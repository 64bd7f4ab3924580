"""``implicit_reg.ray_backend`` moved to :mod:`implicit_reg.engine.ray_backend`; this path re-exports it."""

from .engine.ray_backend import *  # noqa: F401,F403
from .engine.ray_backend import __all__  # noqa: F401
