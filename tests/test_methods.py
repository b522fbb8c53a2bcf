"""The method registry (segcl.methods): listing, lookup errors, one loss step per pre-training
method, one training step per fine-tuning method, and methods registered from outside the package
running through the generic pre-training and fine-tuning loops."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from segcl import methods
from segcl.config import (
    ContrastConfig,
    DataConfig,
    FinetuneConfig,
    PretrainConfig,
    SemiConfig,
)
from segcl.engine.pretrain import build_net, pretrain
from segcl.errors import ConfigError
from segcl.methods import terms as shared_terms
from segcl.methods.base import FinetuneMethod, FinetuneStep, PretrainMethod
from segcl.models import DECODERS, ModelConfig

SIZE = (32, 48)


def test_registry_lists_the_builtin_methods() -> None:
    from segcl.config import PRETRAIN_METHODS

    assert methods.names("pretrain") == ("simclr", "moco", "multiscale", "supcon")
    assert methods.names("pretrain") == PRETRAIN_METHODS
    assert methods.names("finetune") == ("pseudo-labels", "semi", "cross-image")
    assert methods.names() == methods.names("pretrain") + methods.names("finetune")
    for name in methods.names():
        method = methods.get(name)
        assert method.name == name and method.kind in methods.KINDS and method.help
        assert isinstance(method, PretrainMethod) == (method.kind == "pretrain")
        assert isinstance(method, FinetuneMethod) == (method.kind == "finetune")
    assert all(f"{n} (" in methods.describe("pretrain") for n in methods.names("pretrain"))


def test_unknown_method_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown method 'byol'; choose simclr, moco, multiscale, "
                                          r"supcon$"):
        methods.get("byol", kind="pretrain")
    with pytest.raises(ConfigError, match="'simclr' is a pretrain method, not a finetune method; "
                                          "choose pseudo-labels, semi, cross-image"):
        methods.get("simclr", kind="finetune")
    with pytest.raises(ConfigError,
                       match="--method must be one of simclr, moco, multiscale, supcon"):
        PretrainConfig(method="byol")


def _batch(method: PretrainMethod, cfg: PretrainConfig, n: int = 2) -> dict[str, torch.Tensor]:
    """``n`` random images (with 3-class masks) through the method's own transform."""
    rng = np.random.default_rng(0)
    transform = method.transform(cfg, SIZE, (0.5,) * 3, (0.25,) * 3, 255)
    items = []
    for _ in range(n):
        image = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        mask = rng.integers(0, 3, SIZE).astype(np.uint8)
        items.append(dict(zip(transform.keys, transform(image, mask, rng), strict=True)))
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("name", methods.names("pretrain"))
def test_each_method_computes_a_loss(name: str, decoder: str) -> None:
    method = methods.get(name)
    cfg = PretrainConfig(method=name, encoder="test_resnet", decoder=decoder)
    terms = method.terms(cfg)
    torch.manual_seed(0)
    net = build_net(cfg, ModelConfig(encoder="test_resnet", decoder=decoder, num_classes=0),
                    terms, 255, gather=False)
    assert sorted(net.heads) == sorted(terms)
    assert (net.decoder is not None) == method.trains_decoder(terms)
    loss, logged = net(_batch(method, cfg))
    assert sorted(logged) == sorted(terms)
    assert math.isfinite(loss.item()) and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(v.item() for v in logged.values()))
    loss.backward()
    assert all(p.grad is not None for p in net.encoder.parameters() if p.requires_grad)
    if net.decoder is not None:  # the heads see the decoder's features, whichever it is
        assert all(p.grad is not None for p in net.decoder.parameters())


class Dummy(PretrainMethod):
    """A method defined outside segcl.methods: global NT-Xent on an image and its copy."""

    name = "dummy"
    help = "global term on an image and its distorted copy (test only)"
    labels = "none"

    def terms(self, cfg: PretrainConfig) -> list[str]:
        return ["global"]

    def trains_decoder(self, terms: list[str]) -> bool:
        return False

    def transform(self, cfg, size, mean, std, ignore_index) -> Any:
        from segcl.data import PairTransform

        return PairTransform(size, strength=cfg.strength, mean=mean, std=std,
                             ignore_index=ignore_index)

    def heads(self, cfg, model, terms, ignore_index, gather):
        return shared_terms.build_terms(cfg, model, terms, ignore_index, gather)

    def loss(self, net, batch):
        return shared_terms.total(shared_terms.pair_losses(net, batch["image"], batch["image2"]))


@pytest.fixture
def dummy():
    methods.register(Dummy)
    try:
        yield methods.get("dummy")
    finally:
        methods.unregister("dummy")
    assert "dummy" not in methods.names()


def test_registering_a_method_makes_it_available(dummy, synthetic_data: Path,
                                                 tmp_path: Path) -> None:
    from segcl.cli import pretrain as pretrain_cli
    from segcl.config import PRETRAIN_METHODS

    assert isinstance(dummy, Dummy) and methods.get("dummy") is dummy
    assert methods.names("pretrain")[-1] == "dummy" and "dummy" in PRETRAIN_METHODS
    with pytest.raises(ValueError, match="already registered"):
        methods.register(type("Other", (Dummy,), {}))
    with pytest.raises(ConfigError, match="no effect with --method dummy"):
        PretrainConfig(method="dummy", pseudo_labels="teacher")
    # the CLI lists it (the help text is built from the registry)
    app = typer.Typer()
    app.callback()(lambda: None)
    app.add_typer(pretrain_cli.app)
    command = typer.main.get_command(app).commands["pretrain"]  # type: ignore[attr-defined]
    method_help = next(p.help for p in command.params if p.name == "method")
    assert "dummy (global term" in " ".join(method_help.split())
    shown = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    # and the generic loop trains it
    cfg = PretrainConfig(
        data=DataConfig(root=str(synthetic_data), image_size=SIZE, workers=0), method="dummy",
        encoder="test_resnet", out=str(tmp_path / "run"), steps=1, batch_size=2, log_every=1,
    )
    result = pretrain(cfg)
    assert result["method"] == "dummy" and result["losses"] == ["global"]
    assert math.isfinite(result["final_loss"])


# --------------------------------------------------------------------------------------------
# fine-tuning methods


def _finetune_cfg(data: Path, out: Path, steps: int = 1, **kw: Any) -> FinetuneConfig:
    return FinetuneConfig(
        data=DataConfig(root=str(data), image_size=(48, 64), labeled_count=4, workers=0),
        encoder="test_resnet", out=str(out), steps=steps, batch_size=2, log_every=1,
        device="cpu", **kw)


def _records(run: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


@pytest.fixture(scope="module")
def teacher(synthetic_data: Path, tmp_path_factory) -> Path:
    """An untrained teacher checkpoint for the synthetic dataset (its classes, its crop size)."""
    from segcl.checkpoint import CheckpointConfig, save_checkpoint
    from segcl.data import load_samples
    from segcl.models import create_model

    _, info = load_samples(synthetic_data, "train")
    torch.manual_seed(0)
    model = create_model("test_resnet", "unet", num_classes=info.num_classes)
    config = CheckpointConfig.create(model.config.to_dict(), info, (0.5,) * 3, (0.25,) * 3,
                                     (48, 64), method="finetune")
    return save_checkpoint(tmp_path_factory.mktemp("teacher") / "best", model.state_dict(),
                           config)


def _switch_on(name: str, teacher: Path) -> dict[str, Any]:
    """The config that switches fine-tuning method ``name`` on (as its CLI flag does)."""
    options = {
        "pseudo-labels": {"pseudo_labels": str(teacher), "pseudo_threshold": 0.0},
        "semi": {"semi": SemiConfig(enabled=True, threshold=0.0, strong_views=1)},
        "cross-image": {"contrast": ContrastConfig(enabled=True, memory_bank=True,
                                                   memory_size=50, max_views=5)},
    }
    assert name in options, f"add the config that switches '{name}' on to _switch_on"
    return options[name]


def test_finetune_methods_declare_their_config() -> None:
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    assert methods.active(FinetuneConfig()) == ()  # plain fine-tuning by default
    for name in methods.names("finetune"):
        method = methods.get(name, kind="finetune")
        assert isinstance(method, FinetuneMethod) and method.flag.startswith("--")
        assert method.config_keys and set(method.config_keys) <= fields
        assert method.unlabelled in ("none", "optional", "required")
        assert not method.enabled(FinetuneConfig())
    assert methods.get("semi").options(FinetuneConfig()) == SemiConfig()
    assert methods.get("pseudo-labels").options(FinetuneConfig(pseudo_labels="t"))[
        "pseudo_labels"] == "t"
    both = FinetuneConfig(semi=SemiConfig(enabled=True), contrast=ContrastConfig(enabled=True),
                          pseudo_labels="t")
    # composed in registration order: semi's pseudo-labels feed the cross-image contrast
    assert [m.name for m in methods.active(both)] == ["pseudo-labels", "semi", "cross-image"]


def test_step_labels_join_masks_and_method_targets() -> None:
    mask = torch.zeros(2, 3, 4, dtype=torch.long)
    step = FinetuneStep(FinetuneConfig(), None, 0, 2, mask, 255, [], torch.zeros(0),  # type: ignore[arg-type]
                        torch.zeros(0))
    assert step.labels() is mask
    step.segments = {"a": slice(2, 3), "b": slice(3, 5)}
    step.targets["a"] = torch.ones(1, 3, 4, dtype=torch.long)
    labels = step.labels()
    assert labels.shape == (5, 3, 4)
    assert labels[:2].eq(0).all() and labels[2].eq(1).all() and labels[3:].eq(255).all()


def test_step_dense_views_join_the_shared_pass_and_the_methods_views() -> None:
    from segcl.methods.base import DenseView

    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    step = FinetuneStep(FinetuneConfig(), None, 0, 2, mask, 255, [],  # type: ignore[arg-type]
                        torch.zeros(2, 4, 2, 2), torch.zeros(2, 3, 8, 8))
    assert step.dense_views().labels is mask
    step.views["a"] = DenseView(torch.ones(3, 4, 2, 2), torch.full((3, 8, 8), 255),
                                torch.ones(3, 3, 8, 8))
    joined = step.dense_views()
    assert [t.shape[0] for t in joined] == [5, 5, 5]
    assert joined.dense[2:].eq(1).all() and joined.labels[2:].eq(255).all()
    step.views["b"] = DenseView(torch.ones(1, 4, 4, 4), torch.zeros(1, 8, 8),
                                torch.ones(1, 3, 8, 8))
    with pytest.raises(ValueError, match="must match the shared pass"):
        step.dense_views()


@pytest.mark.parametrize("name", methods.names("finetune"))
def test_each_finetune_method_runs_a_step(name: str, synthetic_data: Path, teacher: Path,
                                          tmp_path: Path) -> None:
    from segcl.checkpoint import read_weights
    from segcl.data import load_samples
    from segcl.engine.finetune import finetune
    from segcl.models import SegmentationModel

    method = methods.get(name, kind="finetune")
    cfg = _finetune_cfg(synthetic_data, tmp_path / "run", **_switch_on(name, teacher))
    assert methods.active(cfg) == (method,)
    result = finetune(cfg)
    assert result["steps"] == 1
    train = [r for r in _records(tmp_path / "run") if "split" not in r]
    assert len(train) == 1 and math.isfinite(train[0]["loss"])
    logged = set(train[0]) - {"step", "epoch", "loss", "lr", "images_per_s", "ce"}
    assert logged <= set(method.metrics), f"{name} logs undeclared {logged - set(method.metrics)}"
    if method.metrics:
        assert logged, f"{name} logged none of {method.metrics}"
        assert train[0]["loss"] != pytest.approx(train[0]["ce"])
    # training-only state: in last/ (for --resume) and restorable, never in the exported best/
    best, last = read_weights(tmp_path / "run" / "best"), read_weights(tmp_path / "run" / "last")
    assert not any(k.startswith("heads.") for k in best)
    _, info = load_samples(synthetic_data, "train")
    model = SegmentationModel(ModelConfig(encoder="test_resnet", num_classes=info.num_classes))
    module = method.module(cfg, model, info)
    saved = {k for k in last if k.startswith("heads.")}
    assert saved == set(method.state_for_checkpoint(module))
    assert bool(saved) == (module is not None)
    method.load_state(module, tmp_path / "run" / "last")
    for k, v in method.state_for_checkpoint(module).items():
        assert torch.equal(v, last[k]), k


class Entropy(FinetuneMethod):
    """A fine-tuning method defined outside segcl.methods: entropy minimisation on the labelled
    predictions, scaled by a learnt factor (a module with checkpoint state)."""

    name = "entropy"
    help = "entropy of the labelled predictions (test only)"
    flag = "--entropy"
    config_keys = ("seed",)
    metrics = ("entropy",)
    restored = 0

    def enabled(self, cfg: FinetuneConfig) -> bool:
        return True

    def module(self, cfg, model, info):
        return torch.nn.ParameterDict({"scale": torch.nn.Parameter(torch.tensor(0.1))})

    def loss(self, module, step):
        p = step.logits[: step.n].float().softmax(1)
        entropy = -(p * p.clamp_min(1e-8).log()).sum(1).mean()
        return module["scale"] * entropy, {"entropy": entropy.detach()}

    def state_for_checkpoint(self, module):
        return {"heads.entropy.scale": module["scale"].detach().clone()}

    def load_state(self, module, folder):
        from segcl.checkpoint import read_weights

        with torch.no_grad():
            module["scale"].copy_(read_weights(folder)["heads.entropy.scale"])
        type(self).restored += 1


@pytest.fixture
def entropy():
    methods.register(Entropy)
    try:
        yield methods.get("entropy")
    finally:
        methods.unregister("entropy")
    assert "entropy" not in methods.names()


def test_registering_a_finetune_method_makes_it_active(entropy, synthetic_data: Path,
                                                       tmp_path: Path) -> None:
    from segcl.checkpoint import read_weights
    from segcl.engine.finetune import finetune

    cfg = _finetune_cfg(synthetic_data, tmp_path / "run", steps=1)
    assert methods.names("finetune")[-1] == "entropy" and methods.active(cfg) == (entropy,)
    finetune(cfg)
    record = _records(tmp_path / "run")[0]
    assert record["entropy"] > 0 and record["loss"] > record["ce"]
    scale = read_weights(tmp_path / "run" / "last")["heads.entropy.scale"]
    assert scale.item() != pytest.approx(0.1)  # trained with the model
    assert "heads.entropy.scale" not in read_weights(tmp_path / "run" / "best")
    finetune(dataclasses.replace(cfg, steps=2), resume=True)
    assert Entropy.restored == 1
    assert [r["step"] for r in _records(tmp_path / "run") if "split" not in r] == [1, 2]
