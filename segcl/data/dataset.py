"""The segmentation dataset: read a sample, check it, transform it reproducibly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from segcl.data.cache import DecodedCache, should_cache
from segcl.data.info import DatasetInfo
from segcl.data.io import read_image, read_mask, reader_pool
from segcl.data.layouts import Sample
from segcl.data.transforms import EvalTransform
from segcl.errors import ConfigError, DataError

_DEFAULT_KEYS = {2: ("image", "mask"), 3: ("image", "image2", "mask")}


@lru_cache(maxsize=16)
def _lookup_table(label_map: tuple[int, ...]) -> np.ndarray:
    return np.asarray(label_map, dtype=np.int64 if max(label_map) > 255 else np.uint8)


def read_sample_mask(sample: Sample) -> np.ndarray | None:
    """The label mask of ``sample`` from disk, its label map applied (None when unlabelled).

    Not checked against the classes: :func:`load_pair` does that.
    """
    if sample.mask is None:
        return None
    mask = read_mask(sample.mask)
    if sample.label_map is not None:
        table = _lookup_table(sample.label_map)
        if mask.size and int(mask.max()) >= len(table):
            raise DataError(
                f"{sample.mask}: label value {int(mask.max())} is outside the label map "
                f"(0..{len(table) - 1})"
            )
        mask = table[mask]
    return mask


def load_pair(
    sample: Sample, info: DatasetInfo, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and check one sample: the RGB image and its label mask (None when unlabelled).

    ``mask``, when given, is used instead of reading ``sample.mask`` (pseudo-labels). The label
    map of the sample is applied to masks read from disk.

    Raises:
        DataError: unreadable files, a mask whose size differs from the image's, or label values
            that are neither a class index nor the ignore index.
    """
    image = read_image(sample.image)
    source = f"pseudo-label of {sample.image}"
    if mask is None and sample.mask is not None:
        source = str(sample.mask)
        mask = read_sample_mask(sample)
    if mask is None:
        return image, None
    if mask.shape != image.shape[:2]:
        (mh, mw), (ih, iw) = mask.shape[:2], image.shape[:2]
        raise DataError(f"{source}: mask is {mw}x{mh} but image {sample.image} is {iw}x{ih}")
    bad = (mask >= info.num_classes) & (mask != info.ignore_index)
    if mask.dtype.kind != "u":
        bad |= mask < 0
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        raise DataError(
            f"{source}: label values {shown} are not class indices 0..{info.num_classes - 1} "
            f"nor the ignore index {info.ignore_index}"
        )
    return image, mask


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples of a segmentation dataset, transformed into dictionaries of tensors.

    Item ``i`` (or ``(epoch, i)``) is
    ``{"index": i, **dict(zip(transform.keys, transform(image, mask, rng)))}`` with
    ``rng = np.random.default_rng([seed, epoch, i])``, so augmentation depends only on the seed,
    the epoch and the index -- not on DataLoader workers. A bare index means epoch 0. Training
    samplers yield ``(epoch, i)`` keys (:class:`segcl.engine.data_setup.EpochSampler`): the key is
    sent to whichever worker loads the item, so every worker follows the epoch (a dataset
    attribute set on the main process would not reach persistent workers).

    Args:
        samples: from :func:`segcl.data.load_samples`.
        info: class description (number of classes and ignore index, for the label check).
        transform: a transform of :mod:`segcl.data.transforms` (or any callable
            ``(image, mask, rng) -> tuple`` with a ``keys`` attribute); default
            :class:`EvalTransform` without resizing.
        seed: augmentation seed.
        masks: in-memory masks by sample index (pseudo-labels), used instead of the files.
        cache: ``on``: decode every sample once, now, and keep it in memory
            (:class:`~segcl.data.cache.DecodedCache`); ``auto``: do so when the decoded
            samples fit the memory bound of :func:`~segcl.data.cache.should_cache`; ``off``:
            read from disk on every access. Items are identical either way.

    A sample without a mask gets an all-ignore mask when the transform needs one. A transform
    with an ``ignore_index`` attribute must use the dataset's ignore index (else ConfigError).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        info: DatasetInfo,
        transform: Callable[..., tuple[Any, ...]] | None = None,
        seed: int = 0,
        masks: dict[int, np.ndarray] | None = None,
        cache: str = "off",
    ) -> None:
        self.samples = list(samples)
        self.info = info
        self.transform = transform if transform is not None else EvalTransform(None)
        pad = getattr(self.transform, "ignore_index", info.ignore_index)
        if pad != info.ignore_index:
            raise ConfigError(
                f"the transform fills masks with ignore index {pad} but the dataset uses "
                f"{info.ignore_index}; pass ignore_index={info.ignore_index}"
            )
        self.seed = int(seed)
        self.masks = dict(masks) if masks else {}
        unknown = [i for i in self.masks if not 0 <= i < len(self.samples)]
        if unknown:
            raise DataError(f"in-memory masks given for sample indices out of range: {unknown[:5]}")
        self.cache: DecodedCache | None = None
        if should_cache(cache, self.samples):
            self.cache = DecodedCache(self.samples, info, self.masks)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (0, int(key))
        if i < 0:
            i += len(self.samples)
        if not 0 <= i < len(self.samples):
            raise IndexError(f"sample index {i} out of range for {len(self.samples)} samples")
        if self.cache is not None:
            image, mask = self.cache[i]
        else:
            image, mask = load_pair(self.samples[i], self.info, self.masks.get(i))
        if mask is None and getattr(self.transform, "needs_mask", True):
            mask = np.full(image.shape[:2], self.info.ignore_index, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch, i])
        outputs = self.transform(image, mask, rng)
        keys = getattr(self.transform, "keys", None) or _DEFAULT_KEYS.get(len(outputs))
        if keys is None or len(keys) != len(outputs):
            raise TypeError(
                f"transform returned {len(outputs)} outputs; give it a matching `keys` attribute"
            )
        return {"index": i, **dict(zip(keys, outputs, strict=True))}


def validate_samples(
    samples: Sequence[Sample], info: DatasetInfo, limit: int | None = None
) -> None:
    """Read every sample (or the first ``limit``) and raise the first problem as DataError.

    Run before a long job starts, so a bad file fails it in seconds rather than hours in.
    Files are read by :func:`~segcl.data.io.reader_pool`; the error reported is the one of the
    earliest sample.
    """
    todo = list(samples if limit is None else samples[: max(0, int(limit))])
    if not todo:
        return

    def check(sample: Sample) -> None:
        load_pair(sample, info)

    futures = [reader_pool().submit(check, s) for s in todo]
    try:
        for future in futures:
            future.result()
    finally:  # after the first error, skip the samples not started yet
        for future in futures:
            future.cancel()
