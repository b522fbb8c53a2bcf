"""Plain ViT encoders: any input size (timm's dynamic image size, interpolated position
embeddings) and ViTDet's simple feature pyramid inside the encoder adapter.

The ViTs are tiny timm models built without pretrained weights (small embedding, 3 blocks).
"""

from __future__ import annotations

import pytest
import timm
import torch

from segcl.engine.callbacks import Callback
from segcl.errors import ConfigError
from segcl.models import DECODERS, ModelConfig, SegmentationModel, TimmEncoder, create_model

#: a ViT-Ti/16 (pretraining size 224) and a DINOv2 ViT-S/14 (518), shrunk to a few channels
TINY = {"embed_dim": 32, "depth": 3, "num_heads": 2}
VIT16, DINOV2 = "vit_tiny_patch16_224", "vit_small_patch14_dinov2"
SIZES = [(96, 128), (224, 320)]


def _tiny(encoder: str = VIT16, decoder: str = "unet", **kw) -> SegmentationModel:
    torch.manual_seed(0)
    return create_model(encoder, decoder, num_classes=3, encoder_kwargs=dict(TINY),
                        pyramid_channels=32, **kw).eval()


def test_timm_alone_rejects_other_sizes() -> None:
    """What segcl had before: a ViT built for 224x224 refuses any other size."""
    vit = timm.create_model(VIT16, features_only=True, **TINY)
    with pytest.raises(AssertionError):
        vit(torch.randn(1, 3, 96, 128))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_a_vit_takes_non_square_sizes_with_every_decoder(decoder: str,
                                                         size: tuple[int, int]) -> None:
    model = _tiny(decoder=decoder)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats, dense = model.forward_dense(x)
        logits = model(x)
    assert logits.shape == (2, 3, *size) and torch.isfinite(logits).all()
    # the simple feature pyramid: strides 4, 8, 16, 32 from the stride-16 map
    assert model.encoder.strides == [4, 8, 16, 32] and model.encoder.channels == [32] * 4
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // s, size[1] // s)
                                                    for s in (4, 8, 16, 32)]
    assert dense.shape[1] == model.decoder.out_channels
    assert dense.shape[-2:] == (size[0] // model.decoder.out_stride,
                                size[1] // model.decoder.out_stride)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_sizes_off_the_patch_grid_are_padded_and_cropped_back(decoder: str) -> None:
    model = _tiny(decoder=decoder)
    x = torch.randn(1, 3, 100, 130)  # neither a multiple of 16
    with torch.no_grad():
        feats, _ = model.forward_dense(x)
        logits = model(x)
    assert logits.shape == (1, 3, 100, 130)
    # ceil(size / stride), like a CNN's maps: the padding-only rows and columns are dropped
    assert [tuple(f.shape[-2:]) for f in feats] == [(25, 33), (13, 17), (7, 9), (4, 5)]


@pytest.mark.parametrize("size", SIZES)
def test_a_dinov2_vit_with_14_pixel_patches(size: tuple[int, int]) -> None:
    model = _tiny(DINOV2, "fpn")
    assert model.encoder.strides == [3.5, 7, 14, 28]
    with torch.no_grad():
        feats, dense = model.forward_dense(torch.randn(1, 3, *size))
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 3, *size)
    rows = -(-size[0] // 14)
    assert [f.shape[-2] for f in feats] == [4 * rows, 2 * rows, rows, -(-rows // 2)]
    assert model.decoder.out_stride == 3.5 and dense.shape[-2] == 4 * rows  # P2 at stride 3.5


def test_the_position_embeddings_are_interpolated_not_replaced() -> None:
    """At the pretraining size the dynamic-size encoder computes what timm's fixed-size model
    computes with the same weights; at other sizes the same weights still apply."""
    encoder = TimmEncoder(VIT16, pyramid=False, **TINY).eval()
    fixed = timm.create_model(VIT16, features_only=True, **TINY).eval()
    fixed.load_state_dict(encoder.model.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(encoder(x), fixed(x), strict=True):
            torch.testing.assert_close(a, b)
        grid = encoder(torch.randn(1, 3, 96, 128))[-1]
    assert grid.shape == (1, 32, 6, 8)
    assert encoder.model.state_dict()["model.pos_embed"].shape[1] == 1 + 14 * 14


def test_a_fixed_size_vit_names_the_size_it_cannot_take() -> None:
    """BEiT has no dynamic size in timm: it keeps the pyramid and its own size, and another size
    is a one-line ConfigError instead of timm's assertion."""
    model = _tiny("beit_base_patch16_224", "fpn")
    assert model.encoder.strides == [4, 8, 16, 32]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3, 224, 224)
        with pytest.raises(ConfigError, match=r"encoder 'beit_base_patch16_224' cannot take "
                                              r"96x128 inputs .*--image-size"):
            model(torch.randn(1, 3, 96, 128))


def test_hierarchical_encoders_keep_their_own_maps() -> None:
    encoder = TimmEncoder("test_resnet")
    assert encoder.pyramid is None and encoder.strides == [2, 4, 8, 16, 32]
    plain = TimmEncoder(VIT16, pyramid=False, **TINY)
    assert plain.pyramid is None and plain.strides == [16, 16, 16]


def test_the_pyramid_is_trained_saved_and_rebuilt() -> None:
    model = _tiny(decoder="segformer").train()
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 3, (2, 64, 96))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.encoder.pyramid.parameters())
    state = model.state_dict()
    assert any(k.startswith("encoder.pyramid.") for k in state)
    config = model.config.to_dict()
    assert config["pyramid"] is True and config["pyramid_channels"] == 32
    rebuilt = SegmentationModel.from_dict(config)
    rebuilt.load_state_dict(state)


def test_configs_saved_before_the_pyramid_rebuild_without_it() -> None:
    legacy = {"encoder": VIT16, "decoder": "unet", "num_classes": 3, "encoder_kwargs": TINY}
    model = SegmentationModel.from_dict(legacy)
    assert model.encoder.pyramid is None and model.encoder.strides == [16, 16, 16]
    assert not any(k.startswith("encoder.pyramid.") for k in model.state_dict())
    with torch.no_grad():  # and it also takes any size now
        assert model(torch.randn(1, 3, 96, 128)).shape == (1, 3, 96, 128)
    assert ModelConfig().pyramid is True  # new models get the pyramid


def test_bad_pyramid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="pyramid_channels must be a positive integer"):
        create_model(VIT16, "unet", 3, encoder_kwargs=dict(TINY), pyramid_channels=0)
    with pytest.raises(ConfigError, match="'pyramid' must be true or false"):
        SegmentationModel.from_dict({"encoder": VIT16, "pyramid": "yes",
                                     "encoder_kwargs": TINY})


class _Messages(Callback):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, message: str) -> None:
        self.messages.append(message)


@pytest.mark.parametrize("legacy", [True, False])
def test_finetune_init_from_a_vit_checkpoint(legacy: bool, tmp_path) -> None:
    """A ViT pre-trained before the pyramid existed gives its encoder, not its decoder (which
    was fed other maps); one pre-trained with the pyramid gives both."""
    from segcl.checkpoint import CheckpointConfig, save_checkpoint
    from segcl.data.info import DatasetInfo
    from segcl.engine.finetune import initialize_from

    config = {"encoder": "test_vit", "decoder": "unet", "num_classes": 0}
    source = SegmentationModel.from_dict(config if legacy else {**config, "pyramid": True})
    folder = save_checkpoint(
        tmp_path / "pre", source.state_dict(),
        CheckpointConfig.create(source.config.to_dict(), DatasetInfo(classes=["a", "b"]),
                                (0.5,) * 3, (0.25,) * 3, (48, 64), method="supcon"))
    model = create_model("test_vit", "unet", num_classes=2)
    assert model.encoder.pyramid is not None
    cb = _Messages()
    initialize_from(model, str(folder), "auto", cb)
    assert cb.messages[-1].startswith("initialised encoder from" if legacy
                                      else "initialised encoder, decoder from")
    own, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], v) for k, v in theirs.items() if k.startswith("encoder."))
    decoder_loaded = all(torch.equal(own[k], v) for k, v in theirs.items()
                         if k.startswith("decoder.") and k in own and own[k].shape == v.shape)
    assert decoder_loaded != legacy
