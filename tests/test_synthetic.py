"""Tests for segcl.data.synthetic: the generated textured-shapes dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segcl.data.synthetic import (
    IGNORE_INDEX,
    SYNTHETIC_CLASSES,
    make_synthetic_dataset,
    render_sample,
)
from segcl.errors import ConfigError

SMALL = {"n_train": 6, "n_val": 3, "size": (48, 64)}


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_sizes(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    assert root == tmp_path / "syn"
    for split, n in (("train", 6), ("val", 3)):
        images = sorted((root / split / "images").glob("*.png"))
        masks = sorted((root / split / "masks").glob("*.png"))
        assert len(images) == n
        assert [p.name for p in images] == [p.name for p in masks]
        for image_path, mask_path in zip(images, masks, strict=True):
            image, mask = Image.open(image_path), Image.open(mask_path)
            assert image.mode == "RGB" and image.size == (64, 48)
            assert mask.mode == "L" and mask.size == (64, 48)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = files_of(make_synthetic_dataset(tmp_path / "a", seed=3, **SMALL))
    b = files_of(make_synthetic_dataset(tmp_path / "b", seed=3, **SMALL))
    c = files_of(make_synthetic_dataset(tmp_path / "c", seed=4, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert a["train/images/synth_0000.png"] != c["train/images/synth_0000.png"]
    # train and val are different images
    assert a["train/images/synth_0000.png"] != a["val/images/synth_0000.png"]


def test_more_images_keep_the_first_ones(tmp_path: Path) -> None:
    small = files_of(make_synthetic_dataset(tmp_path / "s", n_train=2, n_val=1, size=(48, 64)))
    large = files_of(make_synthetic_dataset(tmp_path / "l", n_train=4, n_val=1, size=(48, 64)))
    for name, data in small.items():
        if name.endswith(".png"):
            assert large[name] == data


def test_label_set_covers_every_class_and_the_ignore_band(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", n_train=24, n_val=0, size=(64, 80))
    masks = [np.array(Image.open(p)) for p in sorted((root / "train/masks").glob("*.png"))]
    values = set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist())
    assert values == {*range(len(SYNTHETIC_CLASSES)), IGNORE_INDEX}
    stacked = np.stack(masks)
    ignored = (stacked == IGNORE_INDEX).mean()
    assert 0.0 < ignored < 0.05  # a thin band, not whole regions
    objects = ((stacked > 0) & (stacked != IGNORE_INDEX)).mean()
    assert 0.05 < objects < 0.6


def test_ignore_band_lies_on_shape_borders(tmp_path: Path) -> None:
    for i in range(40):
        image, mask = render_sample(np.random.default_rng([0, 9, i]), (64, 80))
        if (mask == IGNORE_INDEX).any():
            break
    else:
        pytest.fail("no sample with an ignore band in 40 tries")
    assert image.shape == (64, 80, 3) and image.dtype == np.uint8
    band = mask == IGNORE_INDEX
    # every band pixel touches a non-band pixel within 2 pixels (no solid ignored blobs)
    padded = np.pad(band, 2, constant_values=False)
    interior = np.ones_like(band)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            interior &= padded[2 + dy : 2 + dy + band.shape[0], 2 + dx : 2 + dx + band.shape[1]]
    assert not interior.any()


def test_dataset_yaml_content(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    data = yaml.safe_load((root / "dataset.yaml").read_text(encoding="utf-8"))
    assert data["name"] == "synthetic"
    assert data["classes"] == SYNTHETIC_CLASSES
    assert data["ignore_index"] == 255
    assert len(data["palette"]) == len(SYNTHETIC_CLASSES)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in data["palette"])
    assert len({tuple(c) for c in data["palette"]}) == len(SYNTHETIC_CLASSES)


def test_readable_by_the_folder_loader(tmp_path: Path) -> None:
    from segcl.data.info import DatasetInfo
    from segcl.data.layouts import load_samples

    root = make_synthetic_dataset(tmp_path / "syn", **SMALL)
    info = DatasetInfo.from_dict(yaml.safe_load((root / "dataset.yaml").read_text()))
    assert info.num_classes == len(SYNTHETIC_CLASSES)
    samples, loaded = load_samples(root, split="val")
    assert len(samples) == 3 and loaded.classes == SYNTHETIC_CLASSES
    assert all(s.mask is not None and s.mask.stem == s.image.stem for s in samples)


def test_rewrite_removes_surplus_files_and_refuses_foreign_folders(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", n_train=5, n_val=2, size=(48, 64))
    make_synthetic_dataset(root, n_train=2, n_val=2, size=(48, 64))
    assert len(list((root / "train/images").glob("*.png"))) == 2
    assert len(list((root / "train/masks").glob("*.png"))) == 2
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        make_synthetic_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs",
    [{"n_train": 0}, {"n_val": -1}, {"size": (16, 64)}, {"size": (48,)}, {"seed": -1}],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_synthetic_dataset(tmp_path / "syn", **kwargs)
