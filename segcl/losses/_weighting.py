"""Per-pixel weights and their weighted mean, shared by the pixel-wise segmentation losses."""

from __future__ import annotations

import torch
from torch import Tensor


def pixel_weights(
    target: Tensor, ignore_index: int, class_weights: Tensor | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """``(B, H, W)`` float weights: ``w[y]`` (1 without class weights) at every labelled pixel,
    0 at ``ignore_index`` and, when ``keep`` (bool, same shape) is given, where it is False."""
    valid = target != ignore_index
    if class_weights is None:
        weights = valid.float()
    else:
        weights = class_weights.float()[torch.where(valid, target, 0)] * valid
    return weights if keep is None else weights * keep


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(w * v) / sum(w)``; 0 (still attached to the graph) when every weight is 0."""
    total = weights.sum()
    return (values * weights).sum() / total.clamp(min=torch.finfo(total.dtype).tiny)
