"""Model build / rebuild from config for several (tiny) timm encoders and every decoder."""

from __future__ import annotations

import pytest
import torch

from segcl.errors import ConfigError
from segcl.models import DECODERS, ModelConfig, SegmentationModel, create_model

ENCODERS = ["test_resnet", "test_convnext", "test_efficientnet", "test_vit"]


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_shape_and_rebuild(encoder: str, decoder: str) -> None:
    torch.manual_seed(0)
    model = create_model(encoder, decoder, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        _, dense = model.forward_dense(x)
    assert logits.shape == (2, 5, 64, 96)
    assert dense.shape[1] == model.decoder.out_channels
    assert dense.shape[-1] == pytest.approx(96 / model.decoder.out_stride, abs=1)

    rebuilt = SegmentationModel.from_dict(model.config.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), logits, atol=1e-5)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("encoder", ["test_resnet", "test_convnext", "test_vit"])
@pytest.mark.parametrize("size", [(65, 97), (33, 50)])
def test_odd_input_sizes(encoder: str, decoder: str, size: tuple[int, int]) -> None:
    model = create_model(encoder, decoder, num_classes=3).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats, dense = model.forward_dense(x)
        logits = model(x)
    assert logits.shape == (1, 3, *size) and torch.isfinite(logits).all()
    # the decoder's features cover the image at its stride, as the encoder's maps do
    finest = min(range(len(feats)), key=lambda i: abs(model.encoder.strides[i]
                                                         - model.decoder.out_stride))
    assert dense.shape[-2:] == feats[finest].shape[-2:]
    assert abs(dense.shape[-2] - size[0] / model.decoder.out_stride) < 1


def test_decoder_needs_only_channels_and_strides() -> None:
    dec = DECODERS["unet"]([8, 16, 32], [2, 4, 8], decoder_channels=(16, 8))
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    assert dec(feats).shape == (1, 8, 16, 16)
    dl = DECODERS["deeplabv3plus"]([8, 16, 32], [2, 4, 8], channels=32)
    assert dl(feats).shape == (1, 32, 8, 8)  # fused at the stride-4 feature
    fpn = DECODERS["fpn"]([8, 16, 32], [2, 4, 8], pyramid_channels=16, segmentation_channels=8)
    assert fpn(feats).shape == (1, 8, 8, 8)  # the stride-2 map is left out, as P1 in the paper
    seg = DECODERS["segformer"]([8, 16, 32], [2, 4, 8], channels=24)
    assert seg(feats).shape == (1, 24, 8, 8)
    assert DECODERS["segformer"]([8, 16, 32], [2, 4, 8], finest_stride=2)(feats).shape == (
        1, 256, 16, 16)


def test_predict_returns_class_indices() -> None:
    model = create_model("test_resnet", "unet", num_classes=3)
    pred = model.predict(torch.randn(1, 3, 32, 32))
    assert pred.shape == (1, 32, 32) and pred.dtype == torch.int64
    assert int(pred.max()) < 3 and not model.training


def test_bad_config_and_input() -> None:
    with pytest.raises(ConfigError, match="unknown decoder"):
        create_model("test_resnet", "fpn-xl", 3)
    with pytest.raises(ConfigError, match="unknown timm encoder"):
        create_model("no_such_encoder_xyz", "unet", 3)
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"encoder": "test_resnet", "colour": 1})
    model = create_model("test_resnet", "unet", 3)
    with pytest.raises(ConfigError, match="expected input of shape"):
        model(torch.randn(1, 1, 32, 32))


def test_pretraining_model_has_no_classifier() -> None:
    model = create_model("test_resnet", "unet", num_classes=0)
    assert model.classifier is None
    with pytest.raises(ConfigError, match="no classifier"):
        model(torch.randn(2, 3, 64, 64))
