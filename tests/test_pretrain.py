"""Contrastive pre-training end to end on generated data: checkpoints, init, resume, DDP."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from segcl.checkpoint import (
    CheckpointConfig,
    read_config,
    read_training_state,
    read_weights,
    save_checkpoint,
)
from segcl.config import DataConfig, FinetuneConfig, PretrainConfig, load_yaml
from segcl.data import load_samples
from segcl.data.synthetic import make_synthetic_dataset
from segcl.engine.callbacks import Callback
from segcl.engine.data_setup import load_splits
from segcl.engine.finetune import finetune, initialize_from
from segcl.engine.pretrain import build_net, pretrain, split_samples
from segcl.errors import ConfigError
from segcl.models import ModelConfig, create_model
from tests.conftest import run_torchrun

SIZE = (32, 48)
PARTS = {
    "simclr": {"encoder", "heads.global"},
    "multiscale": {"encoder", "decoder", "heads.global", "heads.local", "heads.pixel"},
    "supcon": {"encoder", "decoder", "heads.pixel"},
}


class Recorder(Callback):
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.steps: list[int] = []

    def on_message(self, message: str) -> None:
        self.messages.append(message)

    def on_step(self, step: int, logs: dict) -> None:
        self.steps.append(step)


def _cfg(data: Path, out: Path, method: str, **kw) -> PretrainConfig:
    data_kw = {k: kw.pop(k) for k in ("labeled_count", "labeled_fraction") if k in kw}
    return PretrainConfig(
        data=DataConfig(root=str(data), image_size=SIZE, workers=0, **data_kw),
        method=method, encoder="test_resnet", out=str(out), steps=kw.pop("steps", 2),
        batch_size=kw.pop("batch_size", 2), log_every=1, **kw,
    )


def _parts(weights: dict) -> set[str]:
    return {".".join(k.split(".")[:2]) if k.startswith("heads.") else k.split(".")[0]
            for k in weights}


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("pretrain") / "data", n_train=8,
                                  n_val=4, size=(48, 64))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, tuple[Path, dict, Recorder]]:
    """One 2-step run per method: (run dir, result, callback)."""
    out = {}
    for method in PARTS:
        cb = Recorder()
        run = tmp_path_factory.mktemp("runs") / method
        result = pretrain(_cfg(data, run, method), cb)
        out[method] = (run, result, cb)
    return out


@pytest.mark.parametrize("method", list(PARTS))
def test_run_writes_checkpoints_with_the_right_keys(runs, method) -> None:
    run, result, cb = runs[method]
    assert result["steps"] == 2 and cb.steps == [1, 2]
    assert math.isfinite(result["final_loss"]) and result["final_loss"] > 0
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "best/model.safetensors",
                 "best/README.md", "last/training_state.json"):
        assert (run / name).is_file(), name
    assert not (run / "best" / "training_state.json").exists()
    best, last = read_weights(run / "best"), read_weights(run / "last")
    assert _parts(best) == PARTS[method]
    assert best.keys() == last.keys()
    assert all(torch.equal(best[k], last[k]) for k in best)  # best = the last step's weights
    config = read_config(run / "best")
    assert config.method == method
    assert config.model["num_classes"] == 0
    assert sorted(config.heads) == sorted(p.split(".")[1] for p in PARTS[method]
                                             if p.startswith("heads."))
    records = _records(run)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for term in config.heads:
            assert math.isfinite(r[term])
        assert r["loss"] == pytest.approx(sum(r[t] for t in config.heads), abs=1e-4)
    saved = load_yaml(PretrainConfig, run / "config.yaml")
    assert saved.steps == 2 and saved.method == method


@pytest.mark.parametrize("method", list(PARTS))
def test_finetune_init_loads_pretrained_weights(runs, method) -> None:
    run, _, _ = runs[method]
    torch.manual_seed(123)
    model = create_model("test_resnet", "unet", num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = Recorder()
    initialize_from(model, str(run), "auto", cb)
    pretrained = read_weights(run / "best")
    after = model.state_dict()
    encoder = [k for k in after if k.startswith("encoder.")]
    decoder = [k for k in after if k.startswith("decoder.")]
    assert encoder and decoder
    assert all(torch.equal(after[k], pretrained[k]) for k in encoder)
    if method == "simclr":  # the decoder was not trained: it keeps its fresh initialisation
        assert all(torch.equal(after[k], before[k]) for k in decoder)
        assert "decoder" not in cb.messages[-1]
    else:
        assert all(torch.equal(after[k], pretrained[k]) for k in decoder)
        assert "encoder, decoder" in cb.messages[-1]
    assert any(not torch.equal(after[k], before[k]) for k in encoder)


def test_finetune_from_pretrained_run(runs, data, tmp_path) -> None:
    run, _, _ = runs["supcon"]
    cb = Recorder()
    cfg = FinetuneConfig(data=DataConfig(root=str(data), image_size=SIZE, workers=0),
                         encoder="test_resnet", init=str(run), out=str(tmp_path / "ft"),
                         steps=1, batch_size=4)
    result = finetune(cfg, cb)
    assert result["steps"] == 1
    assert any(m.startswith("initialised encoder, decoder") for m in cb.messages)


def test_resume_continues_at_the_saved_step(runs, tmp_path) -> None:
    source, _, _ = runs["simclr"]
    run = tmp_path / "simclr"
    shutil.copytree(source, run)
    cfg = replace(load_yaml(PretrainConfig, run / "config.yaml"), out=str(run), steps=3)
    cb = Recorder()
    result = pretrain(cfg, cb, resume=True)
    assert any("at step 2" in m for m in cb.messages)
    assert cb.steps == [3] and result["steps"] == 3
    assert [r["step"] for r in _records(run)] == [1, 2, 3]
    _, meta = read_training_state(run / "last")
    assert meta["state"]["step"] == 3
    new, old = read_weights(run / "best"), read_weights(source / "best")
    assert any(not torch.equal(new[k], old[k]) for k in new if k.startswith("encoder."))
    again = pretrain(cfg, resume=True)  # a finished run: nothing to train, nothing rewritten
    assert again["steps"] == 3 and again["final_loss"] is None
    assert read_config(run / "best").pretrain["final"]["loss"] == result["final_loss"]
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(cfg)
    with pytest.raises(ConfigError, match="nothing to resume"):
        pretrain(replace(cfg, out=str(tmp_path / "empty")), resume=True)


def test_pixel_term_dropped_without_masks(data, tmp_path) -> None:
    images_only = tmp_path / "images_only"
    shutil.copytree(data / "train" / "images", images_only / "train" / "images")
    shutil.copy(data / "dataset.yaml", images_only / "dataset.yaml")
    cb = Recorder()
    run = tmp_path / "ms"
    result = pretrain(_cfg(images_only, run, "multiscale", steps=1), cb)
    assert result["losses"] == ["global", "local"] and result["dropped_losses"] == ["pixel"]
    assert any("pixel term is unavailable" in m for m in cb.messages)
    config = read_config(run / "best")
    assert config.pretrain["dropped_losses"] == ["pixel"]
    assert config.heads == ["global", "local"]
    assert _parts(read_weights(run / "best")) == {"encoder", "heads.global", "heads.local"}
    assert load_yaml(PretrainConfig, run / "config.yaml").losses == ["global", "local"]
    assert any(r.get("dropped_losses") == ["pixel"] for r in _records(run))
    with pytest.raises(ConfigError, match="supcon needs masks"):
        pretrain(_cfg(images_only, tmp_path / "sc", "supcon", steps=1))


def test_supcon_with_pseudo_labels(data, tmp_path) -> None:
    teacher = create_model("test_resnet", "unet", num_classes=4)
    with torch.no_grad():  # a teacher that is sure of class 1 everywhere (p = 0.87)
        teacher.classifier.weight.zero_()
        teacher.classifier.bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0]))
    info = load_samples(data, "train")[1]
    save_checkpoint(tmp_path / "teacher", teacher.state_dict(),
                    CheckpointConfig.create(teacher.config.to_dict(), info, (0.5,) * 3, (0.25,) * 3,
                                            SIZE, method="finetune"))
    cb = Recorder()
    cfg = _cfg(data, tmp_path / "run", "supcon", labeled_count=2, steps=1, variant="batch",
               max_pixels=300, pseudo_labels=str(tmp_path / "teacher"))
    result = pretrain(cfg, cb)
    assert math.isfinite(result["final_loss"])
    assert any(m.startswith("pseudo-labels: 6 images") and "100.0% of pixels kept" in m
               for m in cb.messages)
    assert any("on 8 images (2 labelled, 6 pseudo-labelled)" in m for m in cb.messages)


def test_losses_compute_in_float32_under_autocast() -> None:
    cfg = PretrainConfig(method="multiscale", encoder="test_resnet", variant="batch",
                         max_pixels=100)
    torch.manual_seed(0)
    net = build_net(cfg, ModelConfig(encoder="test_resnet", num_classes=0),
                    ["global", "local", "pixel"], 255, gather=False)
    x = torch.randn(2, 3, *SIZE)
    mask = torch.randint(0, 3, (2, *SIZE))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = net({"image": x, "image2": x + 0.1 * torch.randn_like(x), "mask": mask})
    assert sorted(terms) == ["global", "local", "pixel"]
    for value in [loss, *terms.values()]:
        assert value.dtype == torch.float32 and math.isfinite(value.item())
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_labelled_subset_matches_finetune(data) -> None:
    cfg = _cfg(data, Path("unused"), "supcon", labeled_fraction=0.25)
    _, labeled, unlabeled = split_samples(cfg)
    assert labeled == load_splits(cfg.data, cfg.seed, need_val=False).labeled
    assert len(labeled) == 2 and len(unlabeled) == 6
    assert all(s.mask is None for s in unlabeled)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "byol"}, "--method must be one of"),
        ({"method": "multiscale", "losses": ["global", "edge"]}, "--losses must be one of"),
        ({"method": "multiscale", "losses": []}, "--losses is empty"),
        ({"variant": "pairs"}, "--variant must be one of"),
        ({"max_pixels": 100}, "only applies to --variant batch"),
        ({"method": "simclr", "pseudo_labels": "teacher"}, "no effect with --method simclr"),
    ],
)
def test_invalid_configs_are_rejected(data, tmp_path, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        pretrain(replace(_cfg(data, tmp_path / "run", "supcon"), **changes))
    assert not (tmp_path / "run").exists()


def _cli() -> typer.Typer:
    from segcl.cli import pretrain as pretrain_cli

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app."""

    app.add_typer(pretrain_cli.app)
    return app


def test_cli_pretrain(data, tmp_path) -> None:
    runner = CliRunner()
    shown = runner.invoke(_cli(), ["pretrain", "--help"])
    assert shown.exit_code == 0 and "Examples" in shown.output and "--losses" in shown.output
    out = tmp_path / "run"
    args = ["pretrain", str(data), "--method", "multiscale", "--losses", "local,pixel",
            "--variant", "batch", "--max-pixels", "200", "--grid", "8x12", "--encoder",
            "test_resnet", "--image-size", "32x48", "--steps", "1", "--batch-size", "2",
            "--workers", "0", "--out", str(out), "--quiet"]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    cfg = load_yaml(PretrainConfig, out / "config.yaml")
    assert cfg.losses == ["local", "pixel"] and tuple(cfg.grid) == (8, 12) and cfg.max_pixels == 200
    assert _parts(read_weights(out / "best")) == {"encoder", "decoder", "heads.local",
                                                  "heads.pixel"}
    resumed = runner.invoke(_cli(), ["pretrain", "--resume", "--out", str(out), "--steps", "2",
                                     "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in _records(out)] == [1, 2]


def test_torchrun_two_processes(data, tmp_path) -> None:
    out = tmp_path / "ddp"
    run_torchrun("pretrain", str(data), "--method", "simclr", "--encoder", "test_resnet",
                 "--image-size", "32x48", "--steps", "2", "--batch-size", "2", "--workers", "0",
                 "--device", "cpu", "--out", str(out), "--quiet")
    assert sorted(p.name for p in out.iterdir()) == ["best", "config.yaml", "curves.png",
                                                     "last", "metrics.jsonl"]
    records = _records(out)
    assert [r["step"] for r in records] == [2] and math.isfinite(records[0]["loss"])
    _, meta = read_training_state(out / "last")
    assert meta["state"]["step"] == 2
    assert _parts(read_weights(out / "best")) == PARTS["simclr"]
