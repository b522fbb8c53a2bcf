"""Label statistics of a set of samples (for class weights)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segcl.data.dataset import read_sample_mask
from segcl.data.info import DatasetInfo
from segcl.data.layouts import Sample


def class_pixel_counts(
    samples: Sequence[Sample], info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``c`` (both ``(C,)`` int64): the labelled pixels of class ``c``, and the
    labelled pixels of the images in which ``c`` appears.

    Pixels at ``info.ignore_index`` (and any value that is not a class) are not counted;
    samples without a mask are skipped.
    """
    c = info.num_classes
    pixels = np.zeros(c, dtype=np.int64)
    image_pixels = np.zeros(c, dtype=np.int64)
    for sample in samples:
        mask = read_sample_mask(sample)
        if mask is None:
            continue
        labels = mask[mask < c] if mask.dtype.kind == "u" else mask[(mask >= 0) & (mask < c)]
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=c)
        pixels += counts
        image_pixels[counts > 0] += int(counts.sum())
    return pixels, image_pixels
