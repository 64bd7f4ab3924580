"""``implicit_reg.plots`` moved to :mod:`implicit_reg.report.plots`; this path re-exports it."""

from .report.plots import *  # noqa: F401,F403
from .report.plots import __all__  # noqa: F401
