"""--encoder-weights: timm weights from a safetensors file; clear errors otherwise."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from segcl.errors import CheckpointError, ConfigError, HubError
from segcl.models import create_model
from segcl.models.weights import load_encoder_weights


def test_timm_state_dict_loads_into_encoder(tmp_path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)  # a full classifier model
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model("test_resnet", "unet", 3)
    n = load_encoder_weights(model.encoder, str(tmp_path / "w.safetensors"))
    assert n > 0
    own = model.encoder.model.state_dict()
    for k, v in source.state_dict().items():
        if k in own:
            assert torch.equal(own[k], v), k


def test_segcl_checkpoint_weights_are_accepted(tmp_path) -> None:
    src = create_model("test_resnet", "unet", 3)
    save_file(src.state_dict(), str(tmp_path / "m.safetensors"))
    dst = create_model("test_resnet", "unet", 5)
    load_encoder_weights(dst.encoder, str(tmp_path / "m.safetensors"))
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k


def test_wrong_weights_are_refused(tmp_path) -> None:
    other = timm.create_model("test_convnext", pretrained=False)
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_model("test_resnet", "unet", 3)
    with pytest.raises(CheckpointError, match="test_resnet"):
        load_encoder_weights(model.encoder, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="not found"):
        load_encoder_weights(model.encoder, str(tmp_path / "missing.safetensors"))


def test_hub_weights_offline_name_what_failed(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    model = create_model("test_resnet", "unet", 3)
    with pytest.raises(HubError, match=r"timm/resnet18\.a1_in1k"):
        load_encoder_weights(model.encoder, "hf-hub:timm/resnet18.a1_in1k")
