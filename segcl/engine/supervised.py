"""The supervised loss of a fine-tuning run, from its :class:`~segcl.config.LossConfig` and the
labelled subset (which the ``auto`` class weights are computed from)."""

from __future__ import annotations

from collections.abc import Sequence

from segcl.config import LossConfig
from segcl.data import DatasetInfo, Sample
from segcl.data.stats import class_pixel_counts
from segcl.engine.callbacks import Callback
from segcl.errors import ConfigError, DataError
from segcl.losses import SegmentationLoss, median_frequency_weights


def class_weights(
    cfg: LossConfig, info: DatasetInfo, labeled: Sequence[Sample]
) -> list[float] | None:
    """``cfg.class_weights`` resolved for this dataset: ``auto`` becomes median-frequency
    weights over the labelled images only; a list must give one weight per class."""
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "auto":
        pixels, image_pixels = class_pixel_counts(labeled, info)
        if not pixels.any():
            raise DataError("--class-weights auto: the labelled images hold no labelled pixel")
        return median_frequency_weights(pixels, image_pixels)
    weights = list(cfg.class_weights)
    if len(weights) != info.num_classes:
        raise ConfigError(f"--class-weights gives {len(weights)} weights but the dataset has "
                          f"{info.num_classes} classes ({', '.join(info.classes)})")
    return weights


def build_supervised_loss(
    cfg: LossConfig, info: DatasetInfo, labeled: Sequence[Sample], callback: Callback
) -> SegmentationLoss:
    """The :class:`~segcl.losses.SegmentationLoss` of ``cfg``; reports its set-up when it is
    not plain cross-entropy."""
    weights = class_weights(cfg, info, labeled)
    loss = SegmentationLoss(cfg.name, weights, info.ignore_index, ohem=cfg.ohem,
                            ohem_threshold=cfg.ohem_threshold, ohem_min_kept=cfg.ohem_min_kept,
                            focal_gamma=cfg.focal_gamma)
    if cfg.name != "ce" or cfg.ohem or weights is not None:
        text = f"supervised loss {cfg.name}" + (
            f" with OHEM (p < {cfg.ohem_threshold}, at least {cfg.ohem_min_kept} pixels per "
            "image)" if cfg.ohem else "")
        if weights is not None:
            source = (f"median frequency over {len(labeled)} labelled images"
                      if cfg.class_weights == "auto" else "given")
            text += f"; class weights ({source}): " + ", ".join(
                f"{name} {w:.3g}" for name, w in zip(info.classes, weights, strict=True))
        callback.on_message(text)
    return loss
