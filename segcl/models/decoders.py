"""Segmentation decoders. Each constructor takes only the encoder's channel list and strides.

U-Net, DeepLabV3+, FPN (the Panoptic FPN semantic head) and SegFormer's all-MLP head, registered
by name in :data:`DECODERS` (``--decoder``).

Following segmentation_models_pytorch, a decoder returns dense features; the classifier lives in
:class:`segcl.models.SegmentationModel`. Spatial sizes are matched by interpolating to the skip
feature's size, so encoders with any strides (including ViTs with a constant stride) work.
"""

from __future__ import annotations

import math
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


def conv_gn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    """``Conv3x3 - GroupNorm - ReLU`` (32 groups, fewer when ``out_ch`` is not a multiple)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


def pyramid_levels(encoder_strides: Sequence[float], finest_stride: float) -> list[int]:
    """Indices of the encoder maps a pyramid decoder uses: from the map whose stride is nearest
    to ``finest_stride`` (4 in the papers; 3.5 for a 14-pixel-patch ViT's pyramid) to the
    deepest. A CNN's stride-2 map is left out."""
    start = min(range(len(encoder_strides)),
                key=lambda i: abs(encoder_strides[i] - finest_stride))
    return list(range(start, len(encoder_strides)))


class FPNDecoder(nn.Module):
    """Semantic segmentation branch of Panoptic FPN (Kirillov, Girshick, He, Dollar: "Panoptic
    Feature Pyramid Networks", CVPR 2019, Sec. 3 and Fig. 3) on a feature pyramid network
    (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

    FPN: the encoder maps from stride ``finest_stride`` down (P2-P5, strides 4-32, in the paper;
    see :func:`pyramid_levels`) get a 1x1 lateral convolution to ``pyramid_channels``; from the
    deepest down, each level adds the nearest-upsampled level above it, then a 3x3 convolution
    smooths it.

    Semantic branch: each level climbs to the finest level in stages of ``conv3x3 (128) -
    GroupNorm - ReLU - bilinear upsampling`` (one stage per level climbed: 3 for P5, 2 for P4, 1
    for P3; P2 gets one convolution and no upsampling); the levels are summed. The output has
    ``segmentation_channels`` channels at the finest level's stride (4); the 1x1 classifier and
    the final upsampling are :class:`~segcl.models.SegmentationModel`'s. Upsampling goes to the
    next level's actual size, so odd input sizes work.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[float],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        finest_stride: float = 4,
    ):
        super().__init__()
        self.levels = pyramid_levels(encoder_strides, finest_stride)
        self.lateral = nn.ModuleList(
            [nn.Conv2d(encoder_channels[i], pyramid_channels, 1) for i in self.levels])
        self.smooth = nn.ModuleList(
            [nn.Conv2d(pyramid_channels, pyramid_channels, 3, padding=1) for _ in self.levels])
        self.semantic = nn.ModuleList()
        for depth in range(len(self.levels)):
            stages = [conv_gn_relu(pyramid_channels, segmentation_channels)]
            stages += [conv_gn_relu(segmentation_channels, segmentation_channels)
                       for _ in range(depth - 1)]
            self.semantic.append(nn.ModuleList(stages))
        self.out_channels = segmentation_channels
        self.out_stride = encoder_strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(features[i]) for conv, i in zip(self.lateral, self.levels, strict=True)]
        pyramid = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):  # top-down pathway
            above = F.interpolate(pyramid[0], size=lateral.shape[-2:], mode="nearest")
            pyramid.insert(0, lateral + above)
        pyramid = [conv(p) for conv, p in zip(self.smooth, pyramid, strict=True)]
        outs = []
        for depth, (stages, x) in enumerate(zip(self.semantic, pyramid, strict=True)):
            for k, stage in enumerate(stages):
                x = stage(x)
                if depth > 0:  # up to the next finer level's size
                    x = _resize_to(x, pyramid[depth - 1 - k])
            outs.append(x)
        return sum(outs[1:], outs[0])


class SegFormerDecoder(nn.Module):
    """All-MLP decoder of SegFormer (Xie et al.: "SegFormer: Simple and Efficient Design for
    Semantic Segmentation with Transformers", NeurIPS 2021, Sec. 3.2, Eq. 4).

    With ``F_i`` the encoder maps from stride ``finest_stride`` down (strides 4-32 in the paper;
    see :func:`pyramid_levels`) and ``C = channels``::

        F'_i = Linear(C_i, C)(F_i)              per pixel (a 1x1 convolution)
        F'_i = Upsample(H/4 x W/4)(F'_i)        bilinear, to the finest map's size
        F    = Linear(4C, C)(Concat(F'_i))      here with BatchNorm and ReLU

    The output ``F`` has ``channels`` channels at the finest map's stride; the last step of the
    paper, ``Linear(C, N_cls)(F)``, is :class:`~segcl.models.SegmentationModel`'s classifier.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[float],
        channels: int = 256,
        finest_stride: float = 4,
    ):
        super().__init__()
        self.levels = pyramid_levels(encoder_strides, finest_stride)
        self.linear = nn.ModuleList(
            [nn.Conv2d(encoder_channels[i], channels, 1) for i in self.levels])
        self.fuse = conv_bn_relu(channels * len(self.levels), channels, 1)
        self.out_channels = channels
        self.out_stride = encoder_strides[self.levels[0]]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        finest = features[self.levels[0]]
        maps = [_resize_to(linear(features[i]), finest)
                for linear, i in zip(self.linear, self.levels, strict=True)]
        return self.fuse(torch.cat(maps, dim=1))


#: decoder name (``--decoder``) -> class; each takes ``(encoder_channels, encoder_strides,
#: **decoder_kwargs)`` and has ``out_channels`` and ``out_stride``
DECODERS: dict[str, type[nn.Module]] = {
    "unet": UNetDecoder,
    "deeplabv3plus": DeepLabV3PlusDecoder,
    "fpn": FPNDecoder,
    "segformer": SegFormerDecoder,
}
