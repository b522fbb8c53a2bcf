"""Any timm model as a feature pyramid (``features_only``).

Decoders only ever see :attr:`TimmEncoder.channels` and :attr:`TimmEncoder.strides`, never a model
name, so every timm architecture that supports ``features_only`` works with every decoder.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from segcl.errors import ConfigError


class TimmEncoder(nn.Module):
    """Wrap ``timm.create_model(name, features_only=True)``.

    Args:
        name: any timm model name (``resnet18``, ``convnext_tiny``, ``hf-hub:...``).
        pretrained: load timm's pretrained weights (needs network access or a warm cache).
        in_chans: number of input channels.
        **kwargs: passed to ``timm.create_model`` (``out_indices``, ``output_stride``, ...).
    """

    def __init__(self, name: str, pretrained: bool = False, in_chans: int = 3, **kwargs: Any):
        super().__init__()
        try:
            self.model = timm.create_model(
                name, features_only=True, pretrained=pretrained, in_chans=in_chans, **kwargs
            )
        except RuntimeError as err:
            if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
                raise ConfigError(f"unknown timm encoder '{name}' ({err})") from err
            raise
        except (OSError, ValueError) as err:
            if pretrained:
                raise ConfigError(
                    f"could not fetch pretrained weights for encoder '{name}': {err}"
                ) from err
            raise
        self.name = name
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.strides: list[int] = list(self.model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, shallowest first, each ``(B, channels[i], H / strides[i], ...)``."""
        feats = self.model(x)
        # timm returns NHWC maps for a few architectures; decoders expect NCHW.
        out = []
        for f, c in zip(feats, self.channels, strict=True):
            if f.ndim == 4 and f.shape[1] != c and f.shape[-1] == c:
                f = f.permute(0, 3, 1, 2)
            out.append(f)
        return out
