"""One value check for every numeric option: flags, config files and Python callers alike."""

from __future__ import annotations

import math

import pytest

from segcl.config import (
    CHECKS,
    DataConfig,
    FinetuneConfig,
    OptimConfig,
    PretrainConfig,
    SemiConfig,
    from_dict,
)
from segcl.errors import ConfigError


@pytest.mark.parametrize("build, message", [
    (lambda: FinetuneConfig(batch_size=0), "--batch-size must be a number > 0, got 0"),
    (lambda: FinetuneConfig(steps=-5), "--steps must be a number > 0"),
    (lambda: OptimConfig(lr=math.nan), "--lr must be a number > 0, got nan"),
    (lambda: OptimConfig(lr=-1), "--lr"),
    (lambda: OptimConfig(weight_decay=-1), "--weight-decay must be a number >= 0"),
    (lambda: DataConfig(workers=-1), "--workers must be a number >= 0"),
    (lambda: DataConfig(labeled_fraction=1.5), r"--labeled-fraction must be a number in \(0, 1\]"),
    (lambda: DataConfig(image_size=(0, 0)), "--image-size must be HxW"),
    (lambda: PretrainConfig(grid=(0, 4)), "--grid must be HxW"),
    (lambda: FinetuneConfig(val_every=0), "--val-every"),
    (lambda: SemiConfig(threshold=1.0), "--semi-threshold must be a number in"),
    (lambda: SemiConfig(batch_size=0), "--unlabeled-batch-size"),
    (lambda: FinetuneConfig(batch_size=True), "--batch-size"),
])
def test_bad_values_name_the_option(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_defaults_and_unset_values_pass() -> None:
    for cls in (DataConfig, OptimConfig, SemiConfig, FinetuneConfig, PretrainConfig):
        cls()
    assert FinetuneConfig(steps=None).steps is None
    assert set(CHECKS) >= {"DataConfig", "OptimConfig", "FinetuneConfig", "PretrainConfig"}


def test_config_files_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="--batch-size"):
        from_dict(FinetuneConfig, {"batch_size": -3})
    with pytest.raises(ConfigError, match="--lr"):
        from_dict(FinetuneConfig, {"optim": {"lr": -1}})


def test_options_that_need_each_other() -> None:
    with pytest.raises(ConfigError, match="--init-parts needs --init"):
        FinetuneConfig(init_parts="encoder")
    FinetuneConfig(init="runs/x", init_parts="encoder")


def test_a_missing_teacher_fails_even_without_unlabelled_images(tmp_path) -> None:
    import torch

    from segcl.data import DatasetInfo
    from segcl.engine.pseudo import pseudo_label
    from segcl.errors import CheckpointError

    with pytest.raises((CheckpointError, ConfigError)):
        pseudo_label(str(tmp_path / "no-such-run"), [], DatasetInfo(["a", "b"]),
                     FinetuneConfig(), torch.device("cpu"))


def test_config_files_name_the_file_and_key(tmp_path) -> None:
    from segcl.config import load_yaml

    bad = tmp_path / "config.yaml"
    bad.write_text("batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: cannot read config"):
        load_yaml(FinetuneConfig, bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(FinetuneConfig, bad)
    bad.write_text("batch_size: '8'\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: --batch-size must be a number"):
        load_yaml(FinetuneConfig, bad)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("data"), "no 'data' section"),
    (lambda c: c["data"].update(image_size=[0, 0]), r"'data\.image_size' must be"),
    (lambda c: c["model"].update(num_classes="4"), r"'model\.num_classes' must be an integer"),
])
def test_checkpoint_configs_are_checked(tiny_run, tmp_path, edit, message) -> None:
    import json
    import shutil

    from segcl.engine.checkpoint import load_model
    from segcl.errors import CheckpointError

    folder = tmp_path / "ck"
    shutil.copytree(tiny_run / "best", folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(folder)


@pytest.mark.parametrize("build, message", [
    (lambda: FinetuneConfig(decoder="upernet"), "--decoder must be one of unet, deeplabv3plus, "
                                                "fpn, segformer, got 'upernet'"),
    (lambda: PretrainConfig(decoder="upernet"), "--decoder must be one of"),
    (lambda: DataConfig(layout="coco"), "--layout must be one of auto, folder, camvid"),
    (lambda: DataConfig(cache="maybe"), "--cache must be one of auto, on, off, got 'maybe'"),
    (lambda: OptimConfig(name="rmsprop"), "--optimizer must be one of sgd, adamw, got 'rmsprop'"),
    (lambda: FinetuneConfig(init="runs/x", init_parts="heads"), "--init-parts must be one of"),
    (lambda: FinetuneConfig(eval_mode="tile"), "--mode must be one of resize, slide, got 'tile'"),
    (lambda: PretrainConfig(method="byol"), "--method must be one of simclr, moco, multiscale, "
                                            "supcon, got 'byol'"),
    (lambda: PretrainConfig(method="semi"), "--method must be one of"),  # a fine-tuning method
    (lambda: PretrainConfig(losses=["global", "edge"]), "--losses must be one of global, local, "
                                                        "pixel, got 'edge'"),
    (lambda: PretrainConfig(variant="pairs"), "--variant must be one of single, batch"),
])
def test_unknown_names_name_the_option_and_the_choices(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_a_config_file_with_an_unknown_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="--decoder must be one of"):
        from_dict(FinetuneConfig, {"decoder": "upernet"})
    with pytest.raises(ConfigError, match="--layout must be one of"):
        from_dict(PretrainConfig, {"data": {"layout": "coco"}})


def test_each_vocabulary_matches_its_owner() -> None:
    """The config keeps the names (so that it is checked without torch); the code that
    implements them must offer exactly those."""
    from segcl import methods
    from segcl.config import DECODER_NAMES, EVAL_MODES, LAYOUTS, PIXEL_VARIANTS, PRETRAIN_METHODS
    from segcl.data import LAYOUTS as DATA_LAYOUTS
    from segcl.engine.inference import EVAL_MODES as INFERENCE_MODES
    from segcl.losses.pixel import VARIANTS
    from segcl.models import DECODERS

    assert tuple(DECODERS) == DECODER_NAMES
    assert DATA_LAYOUTS is LAYOUTS and INFERENCE_MODES is EVAL_MODES
    assert VARIANTS == PIXEL_VARIANTS
    assert methods.names("pretrain") == PRETRAIN_METHODS
