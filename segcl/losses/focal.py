"""Focal loss: Lin, Goyal, Girshick, He and Dollár, "Focal Loss for Dense Object Detection"
(ICCV 2017), applied per pixel.

With ``p_t = softmax(z_i)[y_i]`` the probability of the true class of pixel ``i``, the focusing
parameter ``gamma >= 0`` and the class weight ``alpha_t = w[y_i]`` (1 without class weights)::

    FL_i = -(1 - p_t)^gamma log p_t
    L    = sum_{i in P} alpha_t FL_i / sum_{i in P} alpha_t

over the labelled pixels ``P`` (``y != ignore_index``, and kept by OHEM when a ``keep`` mask is
given). Well-classified pixels (``p_t -> 1``) are down-weighted by ``(1 - p_t)^gamma``, so the
many easy pixels of the large classes stop dominating the gradient; ``gamma = 0`` is the
(weighted) cross-entropy. Lin et al. use ``gamma = 2``. The mean is weighted like PyTorch's
weighted cross-entropy (divided by the sum of the weights), so both losses have the same scale.

Shapes: logits ``(B, C, H, W)``, target ``(B, H, W)`` integer labels; returns a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.losses._weighting import pixel_weights, weighted_mean
from segcl.losses.checks import check_range


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int = 255,
    keep: Tensor | None = None,
) -> Tensor:
    """``L`` above (computed in float32)."""
    check_range(gamma, "focal gamma", 0)
    log_p = F.log_softmax(logits.float(), dim=1)
    safe = torch.where(target != ignore_index, target, 0)
    log_pt = log_p.gather(1, safe[:, None])[:, 0]
    # 1 - p_t = -expm1(log p_t), exact near p_t = 1; clamped so gamma < 1 keeps finite gradients
    modulator = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny) ** gamma
    return weighted_mean(-modulator * log_pt, pixel_weights(target, ignore_index, weight, keep))


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`.

    Args:
        gamma: focusing parameter (Lin et al.: 2).
        weight: per-class weights ``alpha`` (C,), or None.
        ignore_index: label of pixels that do not count.
    """

    def __init__(self, gamma: float = 2.0, weight: Tensor | None = None,
                 ignore_index: int = 255) -> None:
        super().__init__()
        self.gamma, self.ignore_index = check_range(gamma, "focal gamma", 0), int(ignore_index)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def forward(self, logits: Tensor, target: Tensor, keep: Tensor | None = None) -> Tensor:
        return focal_loss(logits, target, self.gamma, self.weight, self.ignore_index, keep)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}"
