"""Online hard example mining for pixels: Shrivastava, Gupta and Girshick, "Training Region-based
Object Detectors with Online Hard Example Mining" (CVPR 2016), in the pixel form of
mmsegmentation's OHEM sampler.

Shrivastava et al. train only on the examples with the highest current loss. For pixels, the
loss is ranked through ``p_i = softmax(z_i)[y_i]``, the predicted probability of the true class
(a lower probability is a higher cross-entropy). The rule, over the labelled pixels of a batch
of ``B`` images::

    hard = {i : p_i < threshold}                      (threshold 0.7)
    k    = min(min_kept * B, number of labelled pixels)
    keep = the max(|hard|, k) labelled pixels of lowest p_i

i.e. every pixel that is still badly classified, and at least the ``min_kept`` hardest pixels per
image when fewer than that are below the threshold (so a well-fitted batch still trains on its
hardest pixels). Ties are broken by pixel order (a stable sort). The probabilities are computed
without gradient; the pixel-wise loss is then averaged over the kept pixels only.

Shapes: logits ``(B, C, H, W)``, target ``(B, H, W)``; returns a ``(B, H, W)`` bool mask.

Defaults: ``threshold`` = 0.7 and ``min_kept`` = 10000 (mmsegmentation's 100000 per
512 x 1024 crop, scaled to a 192 x 256 crop).
"""

from __future__ import annotations

import torch
from torch import Tensor

from segcl.losses.checks import check_int, check_range


@torch.no_grad()
def ohem_keep(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    threshold: float = 0.7,
    min_kept: int = 10000,
) -> Tensor:
    """The ``keep`` mask of the rule above (False at ``ignore_index``)."""
    check_range(threshold, "OHEM threshold", 0, 1)
    check_int(min_kept, "OHEM min_kept", 0)
    valid = target != ignore_index
    prob = logits.float().softmax(dim=1)
    p_true = prob.gather(1, torch.where(valid, target, 0)[:, None])[:, 0][valid]
    n_keep = max(int((p_true < threshold).sum()), min(min_kept * target.shape[0], p_true.numel()))
    order = torch.sort(p_true, stable=True).indices
    kept = torch.zeros_like(p_true, dtype=torch.bool)
    kept[order[:n_keep]] = True
    keep = torch.zeros_like(valid)
    keep[valid] = kept
    return keep
