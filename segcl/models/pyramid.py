"""ViTDet's simple feature pyramid: four maps (strides p/4 ... 2p) from a plain ViT's one map.

Hierarchical encoders (ResNet, ConvNeXt, Swin) give decoders maps at strides 4, 8, 16, 32; a plain
ViT gives maps at its patch stride only. :class:`SimpleFeaturePyramid` turns the last one into a
pyramid inside the encoder adapter, so decoders still see nothing but channels and strides.
"""

from __future__ import annotations

from torch import Tensor, nn

from segcl.errors import ConfigError

#: the pyramid's scale factors relative to the backbone's stride p: strides p/4, p/2, p, 2p
SCALES = (4.0, 2.0, 1.0, 0.5)


def _layer_norm(channels: int) -> nn.Module:
    from timm.layers import LayerNorm2d

    return LayerNorm2d(channels)


class SimpleFeaturePyramid(nn.Module):
    """Simple feature pyramid of ViTDet (Li, Mao, Girshick, He: "Exploring Plain Vision
    Transformer Backbones for Object Detection", ECCV 2022, Sec. 3 and Fig. 2c).

    From the last map of a plain backbone, ``(B, C, H/p, W/p)``, build maps at strides
    ``p/4, p/2, p, 2p`` (4, 8, 16, 32 for a ViT with 16-pixel patches):

    - ``p/4``: two 2x2 deconvolutions of stride 2 (``C -> C/2 -> C/4``), LayerNorm + GELU between;
    - ``p/2``: one 2x2 deconvolution of stride 2 (``C -> C/2``);
    - ``p``: the map itself;
    - ``2p``: 2x2 max pooling of stride 2 (rounding up, so odd maps keep their border).

    Each is then projected to ``out_channels`` by a 1x1 and a 3x3 convolution, each followed by
    LayerNorm over the channels (the paper's FPN-style output convolutions; no top-down path).
    The output is a list, finest first, each ``(B, out_channels, H*s/p, W*s/p)`` for ``s`` in
    :data:`SCALES`.
    """

    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("pyramid_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        half, quarter = max(in_channels // 2, 1), max(in_channels // 4, 1)
        self.resample = nn.ModuleList([
            nn.Sequential(
                nn.ConvTranspose2d(in_channels, half, 2, stride=2),
                _layer_norm(half),
                nn.GELU(),
                nn.ConvTranspose2d(half, quarter, 2, stride=2),
            ),
            nn.ConvTranspose2d(in_channels, half, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, stride=2, ceil_mode=True),
        ])
        widths = (quarter, half, in_channels, in_channels)
        self.project = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(c, out_channels, 1, bias=False),
                _layer_norm(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                _layer_norm(out_channels),
            )
            for c in widths
        ])
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        return [proj(resample(x)) for resample, proj in zip(self.resample, self.project,
                                                             strict=True)]
