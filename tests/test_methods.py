"""The method registry (segcl.methods): listing, lookup errors, one loss step per method, and a
method registered from outside the package running through the generic pre-training loop."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from segcl import methods
from segcl.config import DataConfig, PretrainConfig
from segcl.engine.pretrain import build_net, check_config, pretrain
from segcl.errors import ConfigError
from segcl.methods import terms as shared_terms
from segcl.methods.base import PretrainMethod
from segcl.models import ModelConfig

SIZE = (32, 48)


def test_registry_lists_the_builtin_methods() -> None:
    from segcl.config import PRETRAIN_METHODS

    assert methods.names("pretrain") == ("simclr", "multiscale", "supcon")
    assert methods.names("pretrain") == PRETRAIN_METHODS
    for name in methods.names():
        method = methods.get(name)
        assert method.name == name and method.kind in methods.KINDS and method.help
        assert isinstance(method, PretrainMethod) == (method.kind == "pretrain")
    assert all(f"{n} (" in methods.describe("pretrain") for n in methods.names("pretrain"))


def test_unknown_method_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown method 'byol'; choose simclr, multiscale, "
                                          "supcon"):
        methods.get("byol")
    with pytest.raises(ConfigError, match="'simclr' is a pretrain method, not a finetune method"):
        methods.get("simclr", kind="finetune")
    with pytest.raises(ConfigError, match="choose simclr, multiscale, supcon"):
        check_config(PretrainConfig(method="byol"))


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


@pytest.mark.parametrize("name", methods.names("pretrain"))
def test_each_method_computes_a_loss(name: str) -> None:
    method = methods.get(name)
    cfg = PretrainConfig(method=name, encoder="test_resnet")
    check_config(cfg)
    terms = method.terms(cfg)
    torch.manual_seed(0)
    net = build_net(cfg, ModelConfig(encoder="test_resnet", num_classes=0), terms, 255,
                    gather=False)
    assert sorted(net.heads) == sorted(terms)
    assert (net.decoder is not None) == method.trains_decoder(terms)
    loss, logged = net(_batch(method, cfg))
    assert sorted(logged) == sorted(terms)
    assert math.isfinite(loss.item()) and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(v.item() for v in logged.values()))
    loss.backward()
    assert all(p.grad is not None for p in net.encoder.parameters() if p.requires_grad)


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
        check_config(PretrainConfig(method="dummy", pseudo_labels="teacher"))
    # the CLI lists it (the help text is built from the registry)
    app = typer.Typer()
    app.callback()(lambda: None)
    pretrain_cli.register(app)
    shown = CliRunner().invoke(app, ["pretrain", "--help"], terminal_width=200)
    assert shown.exit_code == 0 and "dummy (global term" in shown.output
    # and the generic loop trains it
    cfg = PretrainConfig(
        data=DataConfig(root=str(synthetic_data), image_size=SIZE, workers=0), method="dummy",
        encoder="test_resnet", out=str(tmp_path / "run"), steps=1, batch_size=2, log_every=1,
    )
    result = pretrain(cfg)
    assert result["method"] == "dummy" and result["losses"] == ["global"]
    assert math.isfinite(result["final_loss"])
