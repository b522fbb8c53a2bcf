"""Checkpoint folders: atomic writes, interrupted swaps, optimiser state without pickles, and
config.json as a checked CheckpointConfig that reads and writes the format unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from segcl.checkpoint import (
    WEIGHTS_SHA256,
    CheckpointConfig,
    file_sha256,
    load_state_into,
    read_config,
    read_training_state,
    read_weights,
    recover,
    save_checkpoint,
)
from segcl.data import DatasetInfo
from segcl.engine import state as train_state
from segcl.errors import CheckpointError
from segcl.models import create_model
from tests.hub_server import write_checkpoint

INFO = DatasetInfo(classes=["sky", "road", "car"], ignore_index=3,
                   palette=[(0, 0, 255), (128, 64, 128), (64, 0, 128)], name="synthetic")


def _config(model: dict | None = None, **provenance) -> CheckpointConfig:
    model = model or {"encoder": "test_resnet", "decoder": "unet", "num_classes": 3}
    return CheckpointConfig.create(model, INFO, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (32, 48),
                                   **provenance)


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
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), _config(model.config.to_dict()))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    assert read_config(tmp_path / "ckpt").model["encoder"] == "test_resnet"
    other = create_model("test_resnet", "unet", 3)
    load_state_into(other, read_weights(tmp_path / "ckpt"), "ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_state_round_trip(tmp_path, name: str) -> None:
    model, opt = _trained_optimizer(name)
    st = train_state.TrainState(step=7, epoch=2, best_metric=0.5, best_step=6)
    save_checkpoint(tmp_path / "last", model.state_dict(), _config(),
                    train_state.pack(st, opt, None))
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
    save_checkpoint(tmp_path / "last", {"w": torch.ones(2)}, _config(command="first"))
    # simulate a kill between "move old away" and "move new in"
    (tmp_path / "last").rename(tmp_path / "last.old")
    assert recover(tmp_path / "last").exists()
    assert read_config(tmp_path / "last").command == "first"


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
    from safetensors.torch import save_file

    folder = save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, _config())
    recorded = json.loads((folder / "config.json").read_text())[WEIGHTS_SHA256]
    assert recorded == file_sha256(folder / "model.safetensors")
    assert torch.equal(read_weights(folder)["w"], torch.ones(3))
    save_file({"w": torch.zeros(3)}, str(folder / "model.safetensors"))  # tampered
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        read_weights(folder)
    nan = save_checkpoint(tmp_path / "nan", {"w": torch.tensor([1.0, float("nan")])}, _config())
    with pytest.raises(CheckpointError, match="tensor w holds NaN or Inf"):
        read_weights(nan)


def test_config_json_layout(tmp_path) -> None:
    """The keys and values of config.json, in the order every segcl checkpoint has them."""
    folder = save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)},
                             _config(method="finetune", command="segcl finetune d",
                                     metrics={"val": {"miou": 0.5}}, train={"seed": 0}))
    text = (folder / "config.json").read_text()
    document = json.loads(text)
    assert list(document) == ["segcl_version", "method", "dataset", "command", "model", "data",
                              "heads", "metrics", "encoder_weights", "train", WEIGHTS_SHA256]
    assert document["data"] == {
        "classes": ["sky", "road", "car"], "ignore_index": 3,
        "palette": [[0, 0, 255], [128, 64, 128], [64, 0, 128]],
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "image_size": [32, 48]}
    assert document["dataset"] == "synthetic" and document["encoder_weights"] is None
    assert text == json.dumps(document, indent=2) + "\n"
    config = read_config(folder)
    assert config.data.image_size == (32, 48) and config.data.palette[1] == (128, 64, 128)
    assert config.to_dict() == document  # read and written again: unchanged


def test_existing_config_json_reads_back_unchanged(tmp_path) -> None:
    """A config.json written by hand (the hub tests' fixture: no heads, no weights_sha256) and
    keys a newer segcl may add survive a round trip as they are."""
    folder = write_checkpoint(tmp_path / "c", future={"x": 1})
    raw = json.loads((folder / "config.json").read_text())
    config = read_config(folder)
    assert config.to_dict() == raw and list(config.to_dict()) == list(raw)
    assert config.extra == {"future": {"x": 1}} and config.weights_sha256 is None
    assert config.data.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda c: c.pop("data"), "no 'data' section"),
    (lambda c: c["model"].pop("encoder"), r"'model\.encoder' is missing \(expected a timm"),
    (lambda c: c["data"].update(std=[0.2, 0]), r"'data\.std' must be a list of positive"),
    (lambda c: c.update(heads="global"), "'heads' must be a list of head names, got 'global'"),
    (lambda c: c.update(weights_sha256="abc"), "'weights_sha256' must be the 64-character"),
    (lambda c: c["data"].update(palette=[[0, 0]]), r"'data\.palette' must be a list of \[r, g"),
    (lambda c: c.update(train=[]), "'train' must be an object"),
])
def test_bad_config_json_names_the_file_and_key(tmp_path, edit, expected) -> None:
    folder = write_checkpoint(tmp_path / "c")
    path = folder / "config.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=expected) as err:
        read_config(folder)
    assert str(err.value).startswith(f"{path}: ")


def test_unreadable_config_json(tmp_path) -> None:
    folder = write_checkpoint(tmp_path / "c")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object, got list"):
        read_config(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        read_config(folder)
