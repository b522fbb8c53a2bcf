"""Class weights for imbalanced labels: median-frequency balancing.

Eigen and Fergus, "Predicting Depth, Surface Normals and Semantic Labels with a Common
Multi-Scale Convolutional Architecture" (ICCV 2015), used by SegNet (Badrinarayanan et al.,
TPAMI 2017) on CamVid. With ``n_c`` the labelled pixels of class ``c`` and ``N_c`` the labelled
pixels of the images in which ``c`` appears::

    freq_c = n_c / N_c
    w_c    = median_{c'} freq_c' / freq_c

so the class of median frequency gets weight 1, rarer classes more, frequent ones less. The
median runs over the classes that appear; a class absent from the labels gets weight 1 (it is
never a target of a pixel-wise loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def median_frequency_weights(
    pixels: Sequence[float] | np.ndarray, image_pixels: Sequence[float] | np.ndarray
) -> list[float]:
    """``w_c`` above from ``pixels`` (``n_c``) and ``image_pixels`` (``N_c``), both (C,)."""
    n = np.asarray(pixels, dtype=np.float64)
    total = np.asarray(image_pixels, dtype=np.float64)
    if n.shape != total.shape or n.ndim != 1:
        raise ValueError(f"expected two (C,) count vectors, got {n.shape} and {total.shape}")
    if (n < 0).any() or (total < n).any():
        raise ValueError("pixel counts must satisfy 0 <= n_c <= N_c")
    present = n > 0
    if not present.any():
        raise ValueError("no labelled pixel: cannot compute class frequencies")
    freq = np.where(present, n / np.where(present, total, 1), 0.0)
    median = float(np.median(freq[present]))
    return [median / f if p else 1.0 for f, p in zip(freq.tolist(), present.tolist(), strict=True)]
