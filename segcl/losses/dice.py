"""Soft Dice loss: Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for
Volumetric Medical Image Segmentation" (3DV 2016), extended to several classes.

With ``p_ic = softmax(z_i)[c]`` and the one-hot label ``g_ic = [y_i = c]``, summed over the
labelled pixels ``P`` (``y != ignore_index``) of the whole batch, V-Net's soft Dice coefficient
of class ``c`` (squared terms in the denominator) and the loss are::

    D_c = (2 sum_{i in P} p_ic g_ic + s) / (sum_{i in P} p_ic^2 + sum_{i in P} g_ic^2 + s)
    L   = sum_c w_c (1 - D_c) / sum_c w_c

with class weights ``w`` (all 1 by default: the plain mean over classes) and a smoothing term
``s = 1`` that keeps a class absent from both the labels and the prediction at ``D_c = 1``.
Every class counts equally whatever its pixel count, which is what helps rare classes; the sums
run over the batch (not per image) so a class missing from one image does not dominate.

Shapes: logits ``(B, C, H, W)``, target ``(B, H, W)`` integer labels; returns a scalar.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segcl.losses.checks import check_range


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = 255,
    smooth: float = 1.0,
) -> Tensor:
    """``L`` above (computed in float32, without materialising the one-hot labels)."""
    prob = logits.float().softmax(dim=1)
    num_classes = prob.shape[1]
    valid = target != ignore_index
    labels = target[valid]
    # sum_i p_ic g_ic: the true-class probabilities, summed per class
    p_true = prob.gather(1, torch.where(valid, target, 0)[:, None])[:, 0][valid]
    intersection = torch.zeros(num_classes, device=prob.device).index_add(0, labels, p_true)
    label_count = torch.bincount(labels, minlength=num_classes).float()  # sum_i g_ic^2
    prob_square = (prob.square() * valid[:, None]).sum(dim=(0, 2, 3))
    dice = (2 * intersection + smooth) / (prob_square + label_count + smooth)
    if weight is None:
        return (1 - dice).mean()
    weight = weight.float()
    return (weight * (1 - dice)).sum() / weight.sum()


class DiceLoss(nn.Module):
    """Module form of :func:`soft_dice_loss`.

    Args:
        weight: per-class weights (C,), or None.
        ignore_index: label of pixels that do not count.
        smooth: ``s`` above.
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = 255,
                 smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index, self.smooth = int(ignore_index), check_range(smooth, "smooth", 0)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return soft_dice_loss(logits, target, self.weight, self.ignore_index, self.smooth)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smooth={self.smooth}"
