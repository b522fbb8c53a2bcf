"""Deterministic, nested labelled subsets of a training set (1/8 inside 1/4 inside 1/2 ...)."""

from __future__ import annotations

import numbers

import numpy as np

from segcl.errors import ConfigError


def labeled_subset(
    n: int, fraction: float | None = None, count: int | None = None, seed: int = 0
) -> list[int]:
    """Indices of the labelled subset of a training set of ``n`` samples.

    The subset is the first ``count`` entries of one permutation drawn with
    ``np.random.default_rng(seed)``, so for one seed a smaller subset always lies inside a larger
    one, and the same arguments always give the same subset.

    Args:
        n: number of samples.
        fraction: share of the samples in ``(0, 1]``; ``count = max(1, round(n * fraction))``.
        count: number of samples in ``[1, n]`` (instead of ``fraction``).
        seed: seed of the permutation (non-negative integer).

    Returns:
        Sorted sample indices; all of ``range(n)`` when ``fraction`` and ``count`` are both None.

    Raises:
        ConfigError: both ``fraction`` and ``count`` given, or a value out of range.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ConfigError(f"number of samples must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"subset seed must be a non-negative integer, got {seed!r}")
    if fraction is not None and count is not None:
        raise ConfigError("give either a labelled fraction or a labelled count, not both")
    if fraction is None and count is None:
        return list(range(n))
    if n == 0:
        raise ConfigError("cannot take a labelled subset of an empty dataset")
    if fraction is not None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, numbers.Real)
            or not 0 < fraction <= 1
        ):
            raise ConfigError(f"labelled fraction must be in (0, 1], got {fraction!r}")
        count = max(1, round(n * float(fraction)))
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 1 <= count <= n:
        raise ConfigError(f"--labeled-count must be in [1, {n}] (the training images), got "
                          f"{count!r}")
    order = np.random.default_rng(int(seed)).permutation(n)
    return sorted(int(i) for i in order[: int(count)])
