"""Argument checks shared by the losses.

Every loss raises :class:`~segcl.errors.ConfigError` for a bad configuration (a temperature,
a count, a threshold, a loss name, class weights that do not match the classes), naming the
argument; malformed input tensors (wrong shape or dtype: a caller's bug) raise ``ValueError``,
and labels outside the classes :class:`~segcl.errors.DataError`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from segcl.errors import ConfigError


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """``temperature`` as a float; ConfigError unless it is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"{name} must be a number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {temperature}")
    return float(temperature)


def check_int(value: int, name: str, minimum: int) -> int:
    """``value``; ConfigError unless it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_range(value: float, name: str, low: float, high: float = math.inf) -> float:
    """``value`` as a float; ConfigError unless it is a number in ``[low, high]``."""
    if (isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value)
            or not low <= value <= high):
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ConfigError(f"{name} must be a number {bounds}, got {value!r}")
    return float(value)
