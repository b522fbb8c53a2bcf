"""Encoders, decoders, heads and the segmentation model."""

from segcl.models.decoders import (
    DECODERS,
    DeepLabV3PlusDecoder,
    FPNDecoder,
    SegFormerDecoder,
    UNetDecoder,
)
from segcl.models.encoder import TimmEncoder
from segcl.models.pyramid import SimpleFeaturePyramid
from segcl.models.segmentation import ModelConfig, SegmentationModel, create_model

__all__ = [
    "DECODERS",
    "DeepLabV3PlusDecoder",
    "FPNDecoder",
    "ModelConfig",
    "SegFormerDecoder",
    "SegmentationModel",
    "SimpleFeaturePyramid",
    "TimmEncoder",
    "UNetDecoder",
    "create_model",
]
