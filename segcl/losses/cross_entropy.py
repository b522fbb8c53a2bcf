"""Pixel-wise cross-entropy with class weights, ``ignore_index`` and an optional pixel selection.

With logits ``z`` (B, C, H, W), labels ``y`` (B, H, W), class weights ``w`` (all 1 by default)
and the set ``P`` of labelled pixels (``y != ignore_index``, and kept by OHEM when a ``keep``
mask is given)::

    l_i = -log softmax(z_i)[y_i]
    L   = sum_{i in P} w[y_i] l_i / sum_{i in P} w[y_i]

which is :func:`torch.nn.functional.cross_entropy` with ``weight`` and ``ignore_index`` (used as
is when there is no ``keep`` mask, so plain cross-entropy stays bit-for-bit what it was).

Defaults: all class weights 1, ``ignore_index`` = 255, every labelled pixel kept.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from segcl.losses._weighting import pixel_weights, weighted_mean


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = 255,
    keep: Tensor | None = None,
) -> Tensor:
    """``L`` above for ``logits`` (B, C, H, W) and ``target`` (B, H, W); ``keep`` (B, H, W) bool
    restricts the mean to the selected pixels (:func:`segcl.losses.ohem.ohem_keep`)."""
    logits = logits.float()
    if keep is None:
        return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return weighted_mean(per_pixel, pixel_weights(target, ignore_index, weight, keep))
