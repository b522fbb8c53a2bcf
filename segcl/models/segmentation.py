"""The segmentation model: encoder -> decoder -> 1x1 classifier, built from a config dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segcl.errors import ConfigError
from segcl.models.decoders import DECODERS
from segcl.models.encoder import TimmEncoder


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`SegmentationModel` (stored in ``config.json``).

    ``num_classes = 0`` builds a model without a classifier (contrastive pre-training).
    ``pyramid`` / ``pyramid_channels``: a plain encoder (a ViT: one stride) gets ViTDet's simple
    feature pyramid (:class:`~segcl.models.pyramid.SimpleFeaturePyramid`); configs saved before
    this option existed have no ``pyramid`` key and are rebuilt without one, as they were trained.
    """

    encoder: str = "resnet18"
    decoder: str = "unet"
    num_classes: int = 2
    in_chans: int = 3
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.0
    pyramid: bool = True
    pyramid_channels: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{"pyramid": False, **d})


class SegmentationModel(nn.Module):
    """``encoder`` (any timm model) + ``decoder`` (one of :data:`~segcl.models.DECODERS`) +
    ``classifier`` (1x1 conv).

    ``forward`` returns logits at the input resolution; :meth:`forward_dense` returns the decoder's
    dense features, which the contrastive heads consume.
    """

    def __init__(self, config: ModelConfig, pretrained_encoder: bool = False):
        super().__init__()
        if config.decoder not in DECODERS:
            raise ConfigError(
                f"unknown decoder '{config.decoder}'; choose one of {sorted(DECODERS)}"
            )
        if not isinstance(config.pyramid, bool):
            raise ConfigError(f"model config 'pyramid' must be true or false, got "
                              f"{config.pyramid!r}")
        self.config = config
        self.encoder = TimmEncoder(
            config.encoder, pretrained=pretrained_encoder, in_chans=config.in_chans,
            pyramid=config.pyramid, pyramid_channels=config.pyramid_channels,
            **config.encoder_kwargs,
        )
        self.decoder = DECODERS[config.decoder](
            self.encoder.channels, self.encoder.strides, **config.decoder_kwargs
        )
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier: nn.Module | None = (
            nn.Conv2d(self.decoder.out_channels, config.num_classes, 1)
            if config.num_classes > 0
            else None
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentationModel:
        return cls(ModelConfig.from_dict(d))

    def forward_dense(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return ``(encoder features, decoder features)``."""
        feats = self.encoder(x)
        return feats, self.decoder(feats)

    def classify(self, dense: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits from dense decoder features, upsampled bilinearly to ``size`` when given."""
        if self.classifier is None:
            raise ConfigError("this model has no classifier (num_classes=0): fine-tune it first")
        logits = self.classifier(self.dropout(dense))
        if size is not None and logits.shape[-2:] != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ConfigError(
                f"expected input of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}"
            )
        _, dense = self.forward_dense(x)
        return self.classify(dense, x.shape[-2:])

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class index map ``(B, H, W)`` in eval mode."""
        self.eval()
        return self.forward(x).max(1).indices  # == argmax(1), several times faster on CPU


def create_model(
    encoder: str = "resnet18",
    decoder: str = "unet",
    num_classes: int = 2,
    pretrained_encoder: bool = False,
    **kwargs: Any,
) -> SegmentationModel:
    """Build a :class:`SegmentationModel`, e.g. ``create_model("resnet18", "unet", 11)``."""
    cfg = ModelConfig(encoder=encoder, decoder=decoder, num_classes=num_classes, **kwargs)
    return SegmentationModel(cfg, pretrained_encoder=pretrained_encoder)
