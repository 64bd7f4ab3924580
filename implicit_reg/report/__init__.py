"""Tidy tables of stored runs (:mod:`.results`), seaborn figures (:mod:`.plots`) and the
:class:`~.report.Report` of a reproduction (:mod:`.report`).

Reads runs only through :class:`implicit_reg.engine.store.ResultStore`.
"""

from .report import SCALES, Claim, Report

__all__ = ["SCALES", "Claim", "Report"]
