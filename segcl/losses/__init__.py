"""Losses, one per file: the contrastive losses (SimCLR, MoCo's InfoNCE against a queue,
multi-scale, and the pixel contrasts of Zhao et al. and Wang et al.) and the supervised
segmentation losses (cross-entropy, soft Dice, focal, with OHEM pixel selection and
median-frequency class weights).

Every loss module L2-normalises its inputs in float32 (heads return raw projections), so fp16 /
bf16 activations never overflow ``exp(s / tau)`` (:mod:`segcl.losses.precision`). Cross-GPU
gathering is opt-in (``gather_distributed=True``). A bad setting (temperature, count, threshold,
loss name, class weights) raises :class:`~segcl.errors.ConfigError` naming it
(:mod:`segcl.losses.checks`); a malformed input tensor raises ``ValueError``.
"""

from __future__ import annotations

from segcl.losses.class_weights import median_frequency_weights
from segcl.losses.cross_entropy import cross_entropy
from segcl.losses.cross_image import CrossImagePixelContrast, MemoryBank
from segcl.losses.dice import DiceLoss, soft_dice_loss
from segcl.losses.focal import FocalLoss, focal_loss
from segcl.losses.local import LocalContrastLoss
from segcl.losses.ntxent import NTXentLoss, nt_xent
from segcl.losses.ohem import ohem_keep
from segcl.losses.pixel import PixelContrastLoss, pixel_contrast, pixel_contrast_naive
from segcl.losses.queue_infonce import KeyQueue, QueueInfoNCELoss, queue_info_nce
from segcl.losses.segmentation import SEGMENTATION_LOSSES, SegmentationLoss

__all__ = [
    "SEGMENTATION_LOSSES",
    "CrossImagePixelContrast",
    "DiceLoss",
    "FocalLoss",
    "KeyQueue",
    "LocalContrastLoss",
    "MemoryBank",
    "NTXentLoss",
    "PixelContrastLoss",
    "QueueInfoNCELoss",
    "SegmentationLoss",
    "cross_entropy",
    "focal_loss",
    "median_frequency_weights",
    "nt_xent",
    "ohem_keep",
    "pixel_contrast",
    "pixel_contrast_naive",
    "queue_info_nce",
    "soft_dice_loss",
]
