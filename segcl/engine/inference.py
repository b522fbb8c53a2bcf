"""Logits for images of any size: the resize policy and the sliding-window policy.

- ``resize`` (default): the image is resized to the training ``image_size``, and the logits are
  upsampled bilinearly to the original size. Matches how segcl trains (random scale around the
  size that covers ``image_size``).
- ``slide``: the image is kept at its own resolution and covered by ``image_size`` windows with
  2/3 overlap; overlapping logits are averaged. For models trained on crops at native resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segcl.errors import ConfigError

EVAL_MODES = ("resize", "slide")


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``(B, C, h, w)`` logits to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def _windows(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


def slide_logits(model: nn.Module, image: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Average the logits of overlapping ``window`` crops over a ``(B, 3, H, W)`` batch."""
    b, _, h, w = image.shape
    wh, ww = window
    pad_h, pad_w = max(0, wh - h), max(0, ww - w)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    hh, wp = image.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, hh, wp, device=image.device)
    for y in _windows(hh, wh, max(1, wh * 2 // 3)):
        for x in _windows(wp, ww, max(1, ww * 2 // 3)):
            out = model(image[:, :, y : y + wh, x : x + ww]).float()
            if total is None:
                total = torch.zeros(b, out.shape[1], hh, wp, device=image.device)
            total[:, :, y : y + wh, x : x + ww] += out
            count[:, :, y : y + wh, x : x + ww] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def infer_logits(
    model: nn.Module, image: torch.Tensor, mode: str, image_size: tuple[int, int]
) -> torch.Tensor:
    """Logits for a prepared batch: resized images (``resize``) or full-size images (``slide``)."""
    if mode == "resize":
        return model(image)
    if mode == "slide":
        return slide_logits(model, image, image_size)
    raise ConfigError(f"unknown evaluation mode '{mode}'; choose one of {EVAL_MODES}")
