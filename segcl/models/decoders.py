"""Segmentation decoders. Each constructor takes only the encoder's channel list and strides.

Following segmentation_models_pytorch, a decoder returns dense features; the classifier lives in
:class:`segcl.models.SegmentationModel`. Spatial sizes are matched by interpolating to the skip
feature's size, so encoders with any strides (including ViTs with a constant stride) work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    """``Conv(kernel) - BN - ReLU`` with "same" padding."""
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """U-Net decoder (Ronneberger et al., 2015) over a timm feature pyramid.

    Starting from the deepest feature, each stage upsamples to the next shallower feature,
    concatenates it and applies two ``conv3x3-BN-ReLU``. The output has ``out_channels`` channels at
    the stride of the shallowest encoder feature (``out_stride``).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        decoder_channels: Sequence[int] = (256, 128, 64, 32),
    ):
        super().__init__()
        n_skips = len(encoder_channels) - 1
        if len(decoder_channels) < n_skips:
            decoder_channels = list(decoder_channels) + [decoder_channels[-1]] * (
                n_skips - len(decoder_channels)
            )
        decoder_channels = list(decoder_channels)[:n_skips]
        skips = list(reversed(encoder_channels[:-1]))
        in_ch = encoder_channels[-1]
        self.blocks = nn.ModuleList()
        for skip_ch, out_ch in zip(skips, decoder_channels, strict=True):
            self.blocks.append(
                nn.Sequential(conv_bn_relu(in_ch + skip_ch, out_ch), conv_bn_relu(out_ch, out_ch))
            )
            in_ch = out_ch
        self.out_channels = in_ch
        self.out_stride = min(encoder_strides)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(torch.cat([_resize_to(x, skip), skip], dim=1))
        return x


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al., DeepLabV3, 2017)."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: Sequence[int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_ch, out_ch, 1)] + [conv_bn_relu(in_ch, out_ch, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.ReLU(inplace=True)
        )
        self.project = conv_bn_relu(out_ch * (len(rates) + 2), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder (Chen et al., ECCV 2018).

    ASPP on the deepest feature, upsampled and fused with a 48-channel projection of the encoder
    feature whose stride is closest to ``low_level_stride`` (4 in the paper), then two 3x3 convs.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[int],
        channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        low_level_stride: int = 4,
        low_level_channels: int = 48,
    ):
        super().__init__()
        self.low_index = min(
            range(len(encoder_strides)), key=lambda i: abs(encoder_strides[i] - low_level_stride)
        )
        self.aspp = ASPP(encoder_channels[-1], channels, atrous_rates)
        self.low = conv_bn_relu(encoder_channels[self.low_index], low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(channels + low_level_channels, channels),
            conv_bn_relu(channels, channels),
        )
        self.out_channels = channels
        self.out_stride = encoder_strides[self.low_index]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low = self.low(features[self.low_index])
        x = _resize_to(self.aspp(features[-1]), low)
        return self.fuse(torch.cat([x, low], dim=1))


DECODERS: dict[str, type[nn.Module]] = {
    "unet": UNetDecoder,
    "deeplabv3plus": DeepLabV3PlusDecoder,
}
