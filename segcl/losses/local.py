"""Local (region) contrast of the multi-scale pre-training study.

"Pre-Training Study on Image Segmentation based on Multi-Scale Contrast Learning" (NARI Group),
its local term ``L_l``.

The feature map of an image and of its colour-distorted copy (same geometry) is pooled to an
``S x S`` grid and projected, giving region embeddings ``q1, q2`` of shape ``(N, D, S, S)``. The
positive of region ``u`` of image ``i`` is region ``u`` of the copy of image ``i``; the negatives
are every other region of every image of the batch, in both views. This is NT-Xent
(:func:`segcl.losses.ntxent.nt_xent`) over the ``2 N S^2`` region embeddings, i.e. averaged over
the regions and both directions::

    l_(i,u) = -s_{(i,u),(i,u)'} + LSE_{k != (i,u)} s_{(i,u),k}

with ``s = q . q' / tau`` on unit-normalised region embeddings. Defaults: ``tau`` = 0.1; the grid
``S`` = 4 is the local head's (``PretrainConfig.local_grid``); no gathering.
"""

from __future__ import annotations

from torch import Tensor, nn

from segcl.losses.checks import check_temperature
from segcl.losses.ntxent import nt_xent


def regions_to_rows(q: Tensor) -> Tensor:
    """``(N, D, S, S)`` -> ``(N * S * S, D)``, rows ordered image-major then region (row-major)."""
    n, d, h, w = q.shape
    return q.permute(0, 2, 3, 1).reshape(n * h * w, d)


def local_contrast(
    q1: Tensor, q2: Tensor, temperature: float = 0.1, gather: bool = False
) -> Tensor:
    """Region-level NT-Xent between ``q1`` and ``q2`` (both ``(N, D, S, S)``, unnormalised)."""
    if q1.ndim != 4 or q1.shape != q2.shape:
        raise ValueError(
            "local contrast expects two (N, D, S, S) tensors of the same shape, got "
            f"{tuple(q1.shape)} and {tuple(q2.shape)}"
        )
    return nt_xent(regions_to_rows(q1), regions_to_rows(q2), temperature, gather=gather)


class LocalContrastLoss(nn.Module):
    """Module form of :func:`local_contrast`; inputs are the local head's raw outputs.

    Args:
        temperature: ``tau`` (default 0.1).
        gather_distributed: negatives from the regions of all ranks (equal batch per rank).
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, q1: Tensor, q2: Tensor) -> Tensor:
        return local_contrast(q1, q2, self.temperature, gather=self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
