"""A few fixed validation images with the current model's predictions, for the loggers'
image panels (:class:`~segcl.engine.callbacks.RunInfo` ``previews``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from segcl.data import DatasetInfo, Sample, load_pair, to_tensor
from segcl.engine.callbacks import Preview
from segcl.engine.runtime import autocast, eval_mode


def spread(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (first and last included)."""
    if count <= 0 or n <= 0:
        return []
    if count >= n:
        return list(range(n))
    if count == 1:
        return [0]
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def _nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of a label mask to ``h x w`` (pixel centres aligned)."""

    def index(n_in: int, n_out: int) -> np.ndarray:
        return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)

    return mask[np.ix_(index(mask.shape[0], h), index(mask.shape[1], w))]


class ValPreviews:
    """``previews(step)``: ``count`` validation images spread over the split (the same ones at
    every validation), resized to the training size, with their masks and the model's argmax.

    The images are read on the first call; the predictions of a step are computed once, however
    many loggers ask.
    """

    def __init__(
        self,
        model: nn.Module,
        samples: Sequence[Sample],
        info: DatasetInfo,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        amp: torch.dtype | None = None,
        count: int = 4,
    ) -> None:
        self.model, self.info, self.size = model, info, tuple(size)
        self.mean, self.std, self.device, self.amp = tuple(mean), tuple(std), device, amp
        self.samples = [samples[i] for i in spread(len(samples), count)]
        self._loaded: list[tuple[str, np.ndarray, np.ndarray]] | None = None
        self._cached: tuple[int, list[Preview]] | None = None

    def _load(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        h, w = self.size
        out = []
        for sample in self.samples:
            image, mask = load_pair(sample, self.info)
            if mask is None:
                mask = np.full(image.shape[:2], self.info.ignore_index, dtype=np.int64)
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
            out.append((Path(sample.image).stem, image, _nearest(mask, h, w)))
        return out

    def __call__(self, step: int) -> list[Preview]:
        if self._cached is not None and self._cached[0] == step:
            return self._cached[1]
        if self._loaded is None:
            self._loaded = self._load()
        previews: list[Preview] = []
        if self._loaded:
            batch = torch.stack([to_tensor(img, self.mean, self.std) for _, img, _ in self._loaded])
            with eval_mode(self.model), torch.inference_mode(), autocast(self.device, self.amp):
                pred = self.model(batch.to(self.device)).max(1).indices.cpu().numpy()
            previews = [Preview(name, image, mask, p.astype(np.int64))
                        for (name, image, mask), p in zip(self._loaded, pred, strict=True)]
        self._cached = (step, previews)
        return previews
