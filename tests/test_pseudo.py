"""Pseudo-labels: thresholding of probability maps and labelling images with a teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segcl.checkpoint import CheckpointConfig, save_checkpoint
from segcl.config import FinetuneConfig
from segcl.data import DatasetInfo, load_samples
from segcl.data.synthetic import make_synthetic_dataset
from segcl.engine.callbacks import Callback
from segcl.engine.pseudo import pseudo_label, threshold_probabilities
from segcl.errors import ConfigError
from segcl.models import create_model

IGNORE = 255


def _probs() -> torch.Tensor:
    """3 classes on a 2x3 map; class 0 is the background."""
    top = [[0.98, 0.90, 0.80], [0.85, 0.70, 0.96]]  # top probability per pixel
    arg = [[0, 0, 1], [2, 2, 0]]  # its class
    p = torch.zeros(3, 2, 3)
    for y in range(2):
        for x in range(3):
            rest = (1 - top[y][x]) / 2
            p[:, y, x] = rest
            p[arg[y][x], y, x] = top[y][x]
    return p


def test_threshold_keeps_confident_pixels_only() -> None:
    mask = threshold_probabilities(_probs(), 0.8, 0.97, background_class=0, ignore_index=IGNORE)
    # background needs 0.97 (0.98 kept, 0.90 and 0.96 not); foreground 0.8 (0.80 and 0.85 kept)
    assert mask.tolist() == [[0, IGNORE, 1], [2, IGNORE, IGNORE]]
    assert mask.dtype == torch.int64


def test_threshold_without_background_class_uses_one_threshold() -> None:
    mask = threshold_probabilities(_probs(), 0.8, 0.97, background_class=None,
                                   ignore_index=IGNORE)
    assert mask.tolist() == [[0, 0, 1], [2, IGNORE, 0]]


def test_threshold_numpy_in_numpy_out() -> None:
    mask = threshold_probabilities(_probs().numpy(), 0.9, 0.97, None, 11)
    assert isinstance(mask, np.ndarray)
    assert mask.tolist() == [[0, 0, 11], [11, 11, 0]]


def test_threshold_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="background class 3"):
        threshold_probabilities(_probs(), 0.8, 0.97, background_class=3)
    with pytest.raises(ConfigError, match="probability"):
        threshold_probabilities(_probs(), 1.5, 0.97)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        threshold_probabilities(torch.ones(2, 3), 0.8, 0.97)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("pseudo") / "data", n_train=3,
                                  n_val=1, size=(48, 64))


def _teacher(folder: Path, info: DatasetInfo, bias: list[float]) -> Path:
    """A checkpoint whose classifier ignores the features: logits = ``bias`` everywhere."""
    model = create_model("test_resnet", "unet", num_classes=len(bias))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    config = CheckpointConfig.create(model.config.to_dict(), info, (0.5,) * 3, (0.25,) * 3,
                                     (32, 48), method="finetune")
    return save_checkpoint(folder, model.state_dict(), config)


class Messages(Callback):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, message: str) -> None:
        self.messages.append(message)


def test_pseudo_label_full_size_masks(data, tmp_path) -> None:
    samples, info = load_samples(data, "train")
    # softmax of (0, 3, 0, 0): p(class 1) = e^3 / (e^3 + 3) = 0.87
    teacher = _teacher(tmp_path / "teacher", info, [0.0, 3.0, 0.0, 0.0])
    cb = Messages()
    cfg = FinetuneConfig(pseudo_threshold=0.8)
    masks, out = pseudo_label(str(teacher), samples, info, cfg, torch.device("cpu"), cb)
    assert len(masks) == len(out) == 3
    assert all(s.mask is None for s in out)
    assert [s.image for s in out] == [s.image for s in samples]
    for m in masks:
        assert m.shape == (48, 64) and m.dtype == np.uint8
        assert (m == 1).all()
    assert "100.0% of pixels kept" in cb.messages[-1]

    strict = FinetuneConfig(pseudo_threshold=0.9)
    masks, _ = pseudo_label(str(teacher), samples, info, strict, torch.device("cpu"), cb)
    assert all((m == IGNORE).all() for m in masks)
    assert "0.0% of pixels kept" in cb.messages[-1]


def test_pseudo_label_background_threshold(data, tmp_path) -> None:
    samples, info = load_samples(data, "train")
    # p(class 0) = e^4 / (e^4 + 3) = 0.948: kept as foreground, not as background (0.97)
    teacher = _teacher(tmp_path / "teacher", info, [4.0, 0.0, 0.0, 0.0])
    fg = FinetuneConfig(background_class=None)
    bg = FinetuneConfig(background_class=0)
    masks_fg, _ = pseudo_label(str(teacher), samples[:1], info, fg, torch.device("cpu"))
    masks_bg, _ = pseudo_label(str(teacher), samples[:1], info, bg, torch.device("cpu"))
    assert (masks_fg[0] == 0).all()
    assert (masks_bg[0] == IGNORE).all()


def test_pseudo_label_rejects_teacher_with_other_classes(data, tmp_path) -> None:
    samples, info = load_samples(data, "train")
    other = DatasetInfo(classes=["a", "b"], ignore_index=255)
    teacher = _teacher(tmp_path / "teacher", other, [0.0, 1.0])
    with pytest.raises(ConfigError, match="predicts 2 classes, the dataset has 4"):
        pseudo_label(str(teacher), samples, info, FinetuneConfig(), torch.device("cpu"))
