"""Transforms (shapes, dtypes, label preservation, reproducibility) and dataset items."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segcl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorDistortion,
    DatasetInfo,
    EvalTransform,
    PairTransform,
    SegmentationDataset,
    TrainTransform,
    TwoViewTransform,
    load_samples,
    to_tensor,
)
from segcl.engine.data_setup import train_loader
from segcl.errors import ConfigError

LABELS = (0, 1, 2, 5)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def image_and_mask(h: int = 30, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colourful image and a blocky mask with labels LABELS."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.dstack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)]).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[: h // 2, w // 2 :] = 1
    mask[h // 2 :, : w // 2] = 2
    mask[h // 2 :, w // 2 :] = 5
    return image, mask


def unnormalise(x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x * std + mean) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)


def test_to_tensor_normalises():
    image = np.full((2, 3, 3), 255, dtype=np.uint8)
    image[0, 0] = (0, 128, 255)
    x = to_tensor(image, IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32 and x.is_contiguous()
    expected = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(unnormalise(x), image)
    x = to_tensor(image[:, ::-1], mean=(0, 0, 0), std=(1, 1, 1))  # negative strides are fine
    assert float(x.max()) == 1.0


@pytest.mark.parametrize("scale", [(0.5, 2.0), (0.25, 0.4), (1.5, 3.0)])
def test_train_transform_shapes_and_labels(scale):
    image, mask = image_and_mask()
    t = TrainTransform((16, 24), scale=scale, brightness=0.3, contrast=0.3, ignore_index=11)
    seen = set()
    for seed in range(10):
        x, y = t(image, mask, rng(seed))
        assert x.shape == (3, 16, 24) and x.dtype == torch.float32
        assert y.shape == (16, 24) and y.dtype == torch.int64
        seen |= set(y.unique().tolist())
    assert seen <= {*LABELS, 11}
    if scale[1] < 1:
        assert 11 in seen  # the scaled image is smaller than the crop: padding is ignore
    if scale[0] >= 1:
        assert 11 not in seen  # the scaled image always covers the crop


def test_train_transform_is_reproducible_and_random():
    image, mask = image_and_mask()
    t = TrainTransform((16, 24), brightness=0.2)
    a, b, c = (t(image, mask, rng(s)) for s in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_train_transform_identity_geometry_and_flip():
    image, mask = image_and_mask()
    plain = TrainTransform((30, 40), scale=(1.0, 1.0), hflip=False)
    x, y = plain(image, mask, rng())
    np.testing.assert_array_equal(unnormalise(x), image)
    np.testing.assert_array_equal(y.numpy(), mask)
    flipping = TrainTransform((30, 40), scale=(1.0, 1.0), hflip=True)
    flips = {
        bool((flipping(image, mask, rng(s))[1].numpy() == mask[:, ::-1]).all()) for s in range(8)
    }
    assert flips == {True, False}


def test_train_transform_image_and_mask_stay_aligned():
    # the image encodes the label as its red channel, so any misalignment shows up
    h, w = 30, 40
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[5:25, 10:30] = 1
    image = np.dstack([mask * 255, mask * 0, mask * 0]).astype(np.uint8)
    t = TrainTransform((20, 20), scale=(0.6, 1.6))
    for seed in range(10):
        x, y = t(image, mask, rng(seed))
        red = unnormalise(x)[..., 0]
        inside = y.numpy() == 1
        assert (red[inside] > 100).mean() > 0.9
        assert (red[y.numpy() == 0] < 155).mean() > 0.9


def test_train_transform_without_mask_and_bad_arguments():
    image, _ = image_and_mask()
    _, y = TrainTransform((8, 8), ignore_index=7)(image, None, rng())
    assert (y == 7).all()
    with pytest.raises(ConfigError, match="size"):
        TrainTransform((0, 8))
    with pytest.raises(ConfigError, match="scale"):
        TrainTransform((8, 8), scale=(2.0, 1.0))


def test_eval_transform_keeps_mask_at_full_size():
    image, mask = image_and_mask()
    x, y = EvalTransform((16, 24))(image, mask)
    assert x.shape == (3, 16, 24)
    assert y.shape == (30, 40) and y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), mask)
    x, y = EvalTransform(None)(image, None)
    assert x.shape == (3, 30, 40) and y is None


def test_color_distortion():
    image, _ = image_and_mask()
    assert ColorDistortion(strength=0.0)(image, rng()) is image
    strong = ColorDistortion(strength=1.0, p_jitter=1.0, p_gray=0.0, blur=False)
    out = strong(image, rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(out, strong(image, rng(1)))
    gray = ColorDistortion(strength=0.5, p_jitter=0.0, p_gray=1.0, blur=False)(image, rng())
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    noise = rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    blur = ColorDistortion(strength=0.5, p_jitter=0.0, p_gray=0.0, p_blur=1.0)
    stds = [blur(noise, rng(s)).std() / noise.std() for s in range(6)]  # sigma in [0.1, 2]
    assert max(stds) <= 1.0 and min(stds) < 0.5  # blurring averages the noise out
    with pytest.raises(ConfigError, match="p_gray"):
        ColorDistortion(p_gray=1.5)


def test_two_view_transform():
    image, mask = image_and_mask(60, 80)
    t = TwoViewTransform((24, 24))
    v1, v2 = t(image, mask, rng(3))
    assert v1.shape == v2.shape == (3, 24, 24) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    w1, w2 = t(image, None, rng(3))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert TwoViewTransform.keys == ("view1", "view2") and not TwoViewTransform.needs_mask
    # a full-size crop at strength 0 without flips is just the resized image
    same = TwoViewTransform((60, 80), crop_scale=(1.0, 1.0), strength=0.0, ratio=(4 / 3, 4 / 3))
    same.hflip = False
    v1, v2 = same(image, None, rng())
    np.testing.assert_array_equal(unnormalise(v1), image)
    assert torch.equal(v1, v2)


def test_pair_transform_shares_geometry():
    image, mask = image_and_mask()
    size = (16, 24)
    for seed in range(5):
        a, b, y = PairTransform(size, strength=0.0)(image, mask, rng(seed))
        assert a.shape == b.shape == (3, *size) and y.shape == size and y.dtype == torch.int64
        assert torch.equal(a, b)
        assert set(y.unique().tolist()) <= {*LABELS, 255}
        # same geometry as the supervised transform drawing from the same seed
        x_ref, y_ref = TrainTransform(size)(image, mask, rng(seed))
        assert torch.equal(a, x_ref) and torch.equal(y, y_ref)
    a, b, y = PairTransform(size, strength=1.0)(image, mask, rng(0))
    a0, _, y0 = PairTransform(size, strength=0.0)(image, mask, rng(0))
    assert torch.equal(a, a0) and torch.equal(y, y0) and not torch.equal(a, b)
    _, _, empty = PairTransform(size, ignore_index=11)(image, None, rng())
    assert (empty == 11).all()


# --------------------------------------------------------------------------------------------
# dataset items


@pytest.fixture
def tiny_dataset(tmp_path: Path):
    root = tmp_path / "data"
    for k in range(3):
        image, mask = image_and_mask()
        (root / "train" / "images").mkdir(parents=True, exist_ok=True)
        (root / "train" / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "images" / f"s{k}.png"), np.roll(image, k, axis=1))
        Image.fromarray(mask).save(root / "train" / "masks" / f"s{k}.png")
    return load_samples(root, info=DatasetInfo([f"c{i}" for i in range(6)]))


@pytest.mark.parametrize(
    "transform, keys",
    [
        (TrainTransform((16, 16)), ("image", "mask")),
        (EvalTransform((16, 16)), ("image", "mask")),
        (TwoViewTransform((16, 16)), ("view1", "view2")),
        (PairTransform((16, 16)), ("image", "image2", "mask")),
    ],
)
def test_dataset_items_and_collation(tiny_dataset, transform, keys):
    samples, info = tiny_dataset
    ds = SegmentationDataset(samples, info, transform, seed=1)
    item = ds[2]
    assert set(item) == {"index", *keys} and item["index"] == 2
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch[keys[0]].shape == (3, 3, 16, 16)


def test_dataset_augmentation_depends_on_seed_epoch_and_index(tiny_dataset):
    samples, info = tiny_dataset
    ds = SegmentationDataset(samples, info, TrainTransform((16, 16)), seed=5)
    first = ds[1]["image"]
    assert torch.equal(first, ds[1]["image"])
    assert torch.equal(first, SegmentationDataset(samples, info, ds.transform, seed=5)[1]["image"])
    assert not torch.equal(first, ds[(1, 1)]["image"])
    assert torch.equal(first, ds[(0, 1)]["image"])
    assert torch.equal(first, ds[-2]["image"])
    other_seed = SegmentationDataset(samples, info, ds.transform, seed=6)
    assert not torch.equal(first, other_seed[1]["image"])
    with pytest.raises(IndexError):
        ds[3]


def test_dataset_rejects_transform_with_other_ignore_index(tiny_dataset):
    samples, _ = tiny_dataset
    camvid_like = DatasetInfo([f"c{i}" for i in range(6)], ignore_index=11)
    with pytest.raises(ConfigError, match="pass ignore_index=11"):
        SegmentationDataset(samples, camvid_like, PairTransform((16, 16)))
    ds = SegmentationDataset(samples, camvid_like, PairTransform((16, 16), ignore_index=11))
    assert set(ds[0]["mask"].unique().tolist()) <= {*LABELS, 11}


# --------------------------------------------------------------------------------------------
# augmentation with DataLoader workers (the epoch travels in the sampler's keys)


def _epochs(ds: SegmentationDataset, workers: int, epochs: int = 2) -> list[list[dict]]:
    loader, sampler = train_loader(ds, 1, seed=3, workers=workers, device=torch.device("cpu"))
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def _by_index(batches: list[dict], key: str) -> dict[int, torch.Tensor]:
    return {int(i): v for b in batches for i, v in zip(b["index"], b[key], strict=True)}


def _same(a: list[dict], b: list[dict], key: str) -> bool:
    return all(torch.equal(x[key], y[key]) for x, y in zip(a, b, strict=True))


def test_persistent_workers_follow_the_epoch(tiny_dataset):
    samples, info = tiny_dataset
    ds = SegmentationDataset(samples, info, TrainTransform((16, 16), scale=(0.5, 2.0)), seed=7)
    serial, parallel = _epochs(ds, 0), _epochs(ds, 2)
    for e in range(2):  # workers 0 and 2 give identical batches, epoch by epoch
        assert _same(serial[e], parallel[e], "image") and _same(serial[e], parallel[e], "mask")
    # epochs 0 and 1 draw other augmentations for the same image (with workers too)
    for batches in (serial, parallel):
        first, second = (_by_index(batches[e], "image") for e in (0, 1))
        assert first.keys() == second.keys()
        assert not any(torch.equal(first[i], second[i]) for i in first)


def test_two_view_pairs_change_every_epoch_with_workers(tiny_dataset):
    samples, info = tiny_dataset
    ds = SegmentationDataset(samples, info, PairTransform((16, 16)), seed=1)
    e0, e1 = _epochs(ds, 2)
    views0, views1 = _by_index(e0, "image2"), _by_index(e1, "image2")
    assert not any(torch.equal(views0[i], views1[i]) for i in views0)
