"""``implicit_reg.results`` moved to :mod:`implicit_reg.report.results`; this path re-exports it."""

from .report.results import *  # noqa: F401,F403
from .report.results import __all__  # noqa: F401
