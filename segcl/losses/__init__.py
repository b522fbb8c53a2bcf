"""Contrastive losses, one ``nn.Module`` per file: SimCLR, multi-scale, and the pixel contrasts of
Zhao et al. and Wang et al.

Every loss module L2-normalises its inputs in float32 (heads return raw projections), so fp16 /
bf16 activations never overflow ``exp(s / tau)``. Cross-GPU gathering is opt-in
(``gather_distributed=True``).
"""

from __future__ import annotations

from segcl.losses.cross_image import CrossImagePixelContrast, MemoryBank
from segcl.losses.local import LocalContrastLoss
from segcl.losses.ntxent import NTXentLoss, nt_xent
from segcl.losses.pixel import PixelContrastLoss, pixel_contrast, pixel_contrast_naive

__all__ = [
    "CrossImagePixelContrast",
    "LocalContrastLoss",
    "MemoryBank",
    "NTXentLoss",
    "PixelContrastLoss",
    "nt_xent",
    "pixel_contrast",
    "pixel_contrast_naive",
]
