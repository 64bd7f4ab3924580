"""Argument checks shared by the probes: a bad hyperparameter raises a
``ValueError`` that names it, before any pass over the data."""

from __future__ import annotations

import math

__all__ = ["check_positive", "check_count"]


def check_positive(name: str, value) -> float:
    """``value`` as a float if it is a finite real number > 0 (not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(name: str, value, low: int = 1) -> int:
    """``value`` if it is an int (not a bool) >= ``low``, else ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value
