"""Checkpoint folders: atomic writes, interrupted swaps, optimiser state without pickles."""

from __future__ import annotations

import json

import pytest
import torch

from segcl.engine import state as train_state
from segcl.engine.checkpoint import (
    load_state_into,
    read_config,
    read_training_state,
    read_weights,
    recover,
    save_checkpoint,
)
from segcl.errors import CheckpointError
from segcl.models import create_model


def _trained_optimizer(name: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if name == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=0.01))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_checkpoint_round_trip(tmp_path) -> None:
    model = create_model("test_resnet", "unet", 3)
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), {"model": model.config.to_dict()})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    assert read_config(tmp_path / "ckpt")["model"]["encoder"] == "test_resnet"
    other = create_model("test_resnet", "unet", 3)
    load_state_into(other, read_weights(tmp_path / "ckpt"), "ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_state_round_trip(tmp_path, name: str) -> None:
    model, opt = _trained_optimizer(name)
    st = train_state.TrainState(step=7, epoch=2, best_metric=0.5, best_step=6)
    save_checkpoint(tmp_path / "last", model.state_dict(), {}, train_state.pack(st, opt, None))
    assert not list(tmp_path.glob("*.tmp"))
    _, fresh = _trained_optimizer(name)
    restored = train_state.unpack(*read_training_state(tmp_path / "last"), fresh, None)
    assert restored == st
    a, b = opt.state_dict(), fresh.state_dict()
    for pid, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][pid][key]))
    # nothing pickled: the metadata is plain JSON
    json.loads((tmp_path / "last" / "training_state.json").read_text())


def test_interrupted_swap_is_recovered(tmp_path) -> None:
    save_checkpoint(tmp_path / "last", {"w": torch.ones(2)}, {"v": 1})
    # simulate a kill between "move old away" and "move new in"
    (tmp_path / "last").rename(tmp_path / "last.old")
    assert recover(tmp_path / "last").exists()
    assert read_config(tmp_path / "last")["v"] == 1


def test_wrong_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"missing config\.json"):
        read_config(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        read_weights(tmp_path)
    small = create_model("test_resnet", "unet", 3)
    big = create_model("test_resnet", "unet", 5)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        load_state_into(small, big.state_dict(), "other.safetensors")


def test_modified_or_non_finite_weights_are_refused(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    from segcl.engine.checkpoint import WEIGHTS_SHA256, file_sha256, read_weights, save_checkpoint
    from segcl.errors import CheckpointError

    folder = save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, {"model": {}})
    recorded = json.loads((folder / "config.json").read_text())[WEIGHTS_SHA256]
    assert recorded == file_sha256(folder / "model.safetensors")
    assert torch.equal(read_weights(folder)["w"], torch.ones(3))
    save_file({"w": torch.zeros(3)}, str(folder / "model.safetensors"))  # tampered
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        read_weights(folder)
    nan = save_checkpoint(tmp_path / "nan", {"w": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(CheckpointError, match="tensor w holds NaN or Inf"):
        read_weights(nan)
