"""``implicit_reg.reproduce`` moved: reports to :mod:`implicit_reg.report.report`, the
experiment registry to :mod:`implicit_reg.experiments`; this path re-exports both."""

from .experiments import available_experiments, load_experiment, reproduce, reproduce_all
from .report.report import *  # noqa: F401,F403
from .report.report import __all__ as _report_all

__all__ = [*_report_all, "available_experiments", "load_experiment", "reproduce", "reproduce_all"]
