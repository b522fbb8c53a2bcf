"""Decode every sample once and keep it in memory (``--cache``).

A training run reads each image hundreds of times (every epoch, every view); decoding a JPEG and
a PNG costs more than all of the augmentation that follows. :class:`DecodedCache` holds the
decoded uint8 images and checked masks, exactly as :func:`segcl.data.dataset.load_pair` returns
them, so a cached run draws the same samples and the same augmentation as an uncached one.

The arrays are read-only: a transform that tried to change one in place would fail loudly
instead of silently corrupting later epochs. DataLoader worker processes started by ``fork``
share the cache's pages with the main process (nothing is copied until written, and nothing is
written).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from segcl.config import CACHE_MODES
from segcl.data.info import DatasetInfo
from segcl.data.io import reader_pool
from segcl.data.layouts import Sample
from segcl.errors import ConfigError

#: ``auto`` caches when the decoded samples take at most this share of the machine's memory ...
AUTO_MEMORY_SHARE = 0.125
#: ... and at most this many bytes
AUTO_MAX_BYTES = 4 << 30


def decoded_bytes(samples: Sequence[Sample]) -> int:
    """Memory the decoded samples would take (RGB image + one-byte mask), from the file headers
    alone (no decoding; unreadable headers count as zero and fail later, when read)."""
    from PIL import Image

    total = 0
    for s in samples:
        try:
            with Image.open(s.image) as im:
                w, h = im.size
        except Exception:  # reported later by the reader, with its file name
            continue
        total += h * w * (3 + (s.mask is not None))
    return total


def memory_bytes() -> int:
    """Physical memory of this machine (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def should_cache(mode: str, samples: Sequence[Sample]) -> bool:
    """``on``/``off`` as given; ``auto``: cache when the decoded samples fit in
    ``min(AUTO_MAX_BYTES, AUTO_MEMORY_SHARE x physical memory)``."""
    if mode not in CACHE_MODES:
        raise ConfigError(f"--cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    limit = min(AUTO_MAX_BYTES, int(memory_bytes() * AUTO_MEMORY_SHARE))
    return 0 < decoded_bytes(samples) <= limit


class DecodedCache:
    """The decoded ``(image, mask)`` of every sample, read once by
    :func:`~segcl.data.io.reader_pool`.

    Args:
        samples: the dataset's samples.
        info: class description (for the mask check of ``load_pair``).
        masks: in-memory masks by sample index, used instead of the mask files.

    Raises:
        DataError: the first unreadable or inconsistent sample (in sample order).
    """

    def __init__(self, samples: Sequence[Sample], info: DatasetInfo,
                 masks: dict[int, np.ndarray] | None = None) -> None:
        from segcl.data.dataset import load_pair

        masks = masks or {}

        def read(i: int) -> tuple[np.ndarray, np.ndarray | None]:
            image, mask = load_pair(samples[i], info, masks.get(i))
            for array in (image, mask):
                if array is not None:
                    array.flags.writeable = False
            return image, mask

        self.items = list(reader_pool().map(read, range(len(samples))))
        self.nbytes = sum(a.nbytes for pair in self.items for a in pair if a is not None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.items[i]
