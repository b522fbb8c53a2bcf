"""Any timm model as a feature pyramid (``features_only``).

Decoders only ever see :attr:`TimmEncoder.channels` and :attr:`TimmEncoder.strides`, never a model
name, so every timm architecture that supports ``features_only`` works with every decoder.

Plain ViTs (one stride for every map) get two things here so that they work like CNNs:

- any input size: they are built with timm's ``dynamic_img_size=True`` (the position embeddings
  are interpolated to the input's patch grid on every forward) and ``dynamic_img_pad=True``
  (sizes that are not a multiple of the patch size are padded to one); the maps are cropped back
  to the image, ``ceil(H / stride)`` rows, as a CNN's are. This covers timm's VisionTransformer
  family (DeiT, DINOv2, CLIP, ...) and EVA; Swin takes the dynamic size too. Models that know
  neither keyword (BEiT, MLP-Mixer) are built without them and keep their fixed size: another
  size is a one-line :class:`~segcl.errors.ConfigError`;
- a feature pyramid at strides p/4, p/2, p, 2p built from their last map
  (:class:`~segcl.models.pyramid.SimpleFeaturePyramid`, as in ViTDet).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from segcl.errors import ConfigError
from segcl.models.pyramid import SCALES, SimpleFeaturePyramid

#: keyword arguments that let timm's ViTs (VisionTransformer, Eva, Swin: the size only) take any
#: input size; models that do not know them are built without them
DYNAMIC_SIZE = ("dynamic_img_size", "dynamic_img_pad")


def _create(name: str, in_chans: int, kwargs: dict[str, Any],
            state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """``timm.create_model(features_only=True)`` with :data:`DYNAMIC_SIZE` where accepted.

    ``state``: a state dict that timm loads as it loads its pretrained weights (its filters
    applied: position embeddings, first convolution for ``in_chans``); random weights without.
    """
    extra = {k: True for k in DYNAMIC_SIZE if k not in kwargs}
    weights: dict[str, Any] = ({"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state}}
                               if state is not None else {"pretrained": False})
    while True:
        try:
            return timm.create_model(name, features_only=True, in_chans=in_chans, **weights,
                                     **kwargs, **extra)
        except TypeError as err:
            rejected = [k for k in extra if f"'{k}'" in str(err)]
            if not rejected:
                raise
            # without a dynamic size, padding makes no sense: drop both
            extra = {} if "dynamic_img_size" in rejected else {
                k: v for k, v in extra.items() if k not in rejected}


class TimmEncoder(nn.Module):
    """Wrap ``timm.create_model(name, features_only=True)``.

    Args:
        name: any timm model name (``resnet18``, ``convnext_tiny``, ``hf-hub:...``).
        pretrained: load timm's default pretrained weights (``--encoder-weights imagenet``: the
            safetensors file from the Hugging Face Hub or its local cache; see
            :mod:`segcl.models.weights`).
        in_chans: number of input channels.
        pyramid: for a plain encoder (every map at one stride, e.g. a ViT), replace its maps by a
            :class:`~segcl.models.pyramid.SimpleFeaturePyramid` of its last map. Hierarchical
            encoders are left as they are.
        pyramid_channels: channels of each pyramid map.
        **kwargs: passed to ``timm.create_model`` (``out_indices``, ``output_stride``, ...).
    """

    def __init__(self, name: str, pretrained: bool = False, in_chans: int = 3,
                 pyramid: bool = True, pyramid_channels: int = 256, **kwargs: Any):
        super().__init__()
        self._in_chans, self._kwargs = in_chans, dict(kwargs)
        try:
            self.model = _create(name, in_chans, kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
                raise ConfigError(f"unknown timm encoder '{name}' ({err})") from err
            raise
        self.name = name
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.strides: list[float] = list(self.model.feature_info.reduction())
        self.pyramid: SimpleFeaturePyramid | None = None
        self._crop: list[tuple[int, int]] = []
        if pyramid and len(set(self.strides)) == 1:
            patch = self.strides[-1]
            self.pyramid = SimpleFeaturePyramid(self.channels[-1], pyramid_channels)
            self.channels = [pyramid_channels] * len(SCALES)
            self.strides = [_exact(patch / s) for s in SCALES]
            # stride = den / num in integers (num = 8 * scale, den = 8 * patch), so that
            # ceil(h / stride) = ceil(h * num / den) is integer arithmetic (exportable)
            self._crop = [(round(8 * s), 8 * int(patch)) for s in SCALES]
        if pretrained:  # one loader for every source: safetensors only, never pickles
            from segcl.models.weights import TIMM_WEIGHTS, load_encoder_weights

            load_encoder_weights(self, name if name.startswith("hf-hub:") else TIMM_WEIGHTS)

    def timm_model(self, name: str, state: dict[str, torch.Tensor]) -> nn.Module:
        """timm's feature extractor ``name`` (e.g. this encoder's architecture with a pretrained
        tag) with this encoder's options, built from ``state`` as timm builds pretrained models;
        its ``state_dict`` fits :attr:`model`."""
        return _create(name, self._in_chans, self._kwargs, state)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, shallowest first, each ``(B, channels[i], H / strides[i], ...)``."""
        try:
            feats = self.model(x)
        except AssertionError as err:  # timm's size checks (BEiT, MLP-Mixer: fixed sizes)
            raise ConfigError(f"encoder '{self.name}' cannot take {x.shape[-2]}x{x.shape[-1]} "
                              f"inputs ({err}); choose another --image-size") from err
        # timm returns NHWC maps for a few architectures; decoders expect NCHW.
        out = []
        for f, c in zip(feats, self.model.feature_info.channels(), strict=True):
            if f.ndim == 4 and f.shape[1] != c and f.shape[-1] == c:
                f = f.permute(0, 3, 1, 2)
            out.append(f)
        if self.pyramid is None:
            return out
        h, w = x.shape[-2:]
        # ceil(h / stride) rows and columns: drop what only covers timm's padding
        return [f[..., : -(-h * num // den), : -(-w * num // den)]
                for f, (num, den) in zip(self.pyramid(out[-1]), self._crop, strict=True)]


def _exact(stride: float) -> float:
    """``4.0 -> 4`` (strides stay integers where they are), ``3.5 -> 3.5``."""
    return int(stride) if float(stride).is_integer() else stride
