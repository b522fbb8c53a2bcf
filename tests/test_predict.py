"""The prediction pipeline's building blocks and its output: the same masks as the plain path."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segcl.data import EvalTransform, read_image, read_mask, to_tensor, to_tensor_batch, write_mask
from segcl.data.io import MASK_PNG_OPTIONS
from segcl.engine.checkpoint import load_model
from segcl.engine.inference import input_transform, masks_from_logits, resize_logits
from segcl.engine.predict import predict_files


# ------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_masks_from_logits_equal_argmax_with_ties_and_nan(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (3, 7, 13, 17), generator=g).to(dtype)  # many ties
    logits[0, 4, 2, 2] = float("nan")
    logits[1, 0, 0, 0] = logits[1, 5, 0, 0] = float("nan")
    masks = masks_from_logits(logits)
    assert masks.dtype == torch.uint8 and masks.shape == (3, 13, 17)
    assert torch.equal(masks, logits.argmax(1).to(torch.uint8))  # first maximum, NaN wins
    assert masks[0, 2, 2] == 4 and masks[1, 0, 0] == 0


def test_masks_from_logits_resize_once_like_resize_then_argmax() -> None:
    logits = torch.randn(2, 11, 24, 32, generator=torch.Generator().manual_seed(1)) * 4
    masks = masks_from_logits(logits, (45, 61))
    assert masks.shape == (2, 45, 61)
    assert torch.equal(masks, resize_logits(logits, (45, 61)).argmax(1).to(torch.uint8))
    assert len(masks.unique()) > 5


@pytest.mark.parametrize("shape,size", [((2, 11, 24, 32), (90, 120)), ((1, 5, 7, 9), (7, 40)),
                                        ((1, 4, 1, 6), (5, 13)), ((3, 3, 10, 10), (33, 17))])
def test_upsampled_argmax_equals_the_full_resize(shape, size) -> None:
    from segcl.engine.inference import upsampled_argmax

    g = torch.Generator().manual_seed(2)
    smooth = F.interpolate(torch.randn(shape[0], shape[1], 3, 4, generator=g) * 4,
                           size=shape[2:], mode="bilinear", align_corners=False)
    for logits in (smooth, torch.randn(shape, generator=g) * 4):  # few or many class borders
        reference = resize_logits(logits, size).max(1).indices
        assert torch.equal(upsampled_argmax(logits, size), reference)
    # exact ties (0/1 logits): rounding may break a tie either way, in both implementations
    ties = torch.randint(0, 2, shape, generator=g).float()
    resized = resize_logits(ties, size)
    ours, reference = upsampled_argmax(ties, size), resized.max(1).indices
    differ = ours != reference
    assert differ.float().mean() < 0.01
    a = resized.gather(1, ours[:, None])[:, 0][differ]
    b = resized.gather(1, reference[:, None])[:, 0][differ]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(masks_from_logits(smooth, size),
                       resize_logits(smooth, size).max(1).indices.to(torch.uint8))


def test_masks_from_logits_downsample_and_non_finite_like_the_full_resize() -> None:
    g = torch.Generator().manual_seed(3)
    smooth = F.interpolate(torch.randn(2, 6, 4, 5, generator=g) * 4, size=(30, 40),
                           mode="bilinear", align_corners=False)
    for value in (float("nan"), float("inf"), float("-inf")):  # NaN wins, as in max
        logits = smooth.clone()
        logits[0, 2, 10:12, 10:12] = value
        for size in ((15, 20), (60, 20), (64, 80), (30, 81), (77, 40)):
            assert torch.equal(masks_from_logits(logits, size),
                               resize_logits(logits, size).max(1).indices.to(torch.uint8))


def test_upsampled_argmax_weights_are_pytorchs() -> None:
    from segcl.engine.inference import _source_indices

    for n_in, n_out in ((3, 19), (9, 40), (96, 360), (7, 7), (1, 5)):
        i0, i1, w0, w1 = _source_indices(n_out, n_in, torch.device("cpu"))
        # the weights PyTorch uses: resize the identity "image" of n_in one-hot rows
        eye = torch.eye(n_in)[None, :, :, None]  # (1, n_in channels, n_in rows, 1)
        theirs = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)
        ours = torch.zeros(n_in, n_out)
        ours[i0, torch.arange(n_out)] += w0
        ours[i1, torch.arange(n_out)] += w1
        assert torch.equal(ours, theirs[0, :, :, 0])


def test_masks_from_logits_keep_more_than_256_classes() -> None:
    logits = torch.zeros(1, 300, 2, 2)
    logits[0, 299, 1, 1] = 1.0
    masks = masks_from_logits(logits)
    assert masks.dtype == torch.int32 and masks[0, 1, 1] == 299 and masks[0, 0, 0] == 0


def test_to_tensor_batch_equals_stacked_to_tensor() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (19, 23, 3), dtype=np.uint8) for _ in range(3)]
    images[1] = images[1][:, ::-1]  # a non-contiguous view is fine too
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    batch = to_tensor_batch(images, mean, std)
    assert batch.dtype == torch.float32 and batch.shape == (3, 3, 19, 23)
    assert batch.is_contiguous()
    assert torch.equal(batch, torch.stack([to_tensor(im, mean, std) for im in images]))
    with pytest.raises(ValueError, match="HxWx3"):
        to_tensor_batch([images[0][..., 0]])


def test_eval_transform_resize_is_its_network_input() -> None:
    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    t = EvalTransform((16, 24))
    small = t.resize(image)
    assert small.dtype == np.uint8 and small.shape == (16, 24, 3)
    assert torch.equal(t(image)[0], to_tensor(small))
    assert EvalTransform(None).resize(image) is image


def test_mask_png_is_lossless_and_compressed(tmp_path: Path) -> None:
    mask = np.zeros((360, 480), np.uint8)
    mask[100:250, 50:400] = 3
    mask[:, 300:] = 7
    mask[5, 5] = 255
    palette = [(i, 255 - i, (7 * i) % 256) for i in range(256)]
    write_mask(tmp_path / "m.png", mask, palette)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P" and im.getpalette()[:6] == [0, 255, 0, 1, 254, 7]
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    assert (tmp_path / "m.png").stat().st_size < mask.size // 50  # runs compress well
    wide = (np.arange(360 * 480, dtype=np.int64).reshape(360, 480) % 1000).astype(np.int32)
    write_mask(tmp_path / "w.png", wide)  # 16-bit, no palette
    assert np.array_equal(read_mask(tmp_path / "w.png"), wide)
    assert MASK_PNG_OPTIONS["compress_type"] == zlib.Z_RLE


# ------------------------------------------------------------------- end to end: same masks
def _images(src: Path, out: Path) -> list[Path]:
    """Generated images of several sizes (and formats), some larger than the model's input."""
    files = sorted((src / "val" / "images").iterdir())
    sizes = [(48, 64), (96, 128), (37, 91), (120, 50), (48, 64), (61, 61), (130, 170)]
    out.mkdir()
    paths = []
    for i, size in enumerate(sizes):
        image = cv2.resize(cv2.imread(str(files[i % len(files)])), (size[1], size[0]))
        path = out / f"im{i}.{'jpg' if i % 2 else 'png'}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@torch.inference_mode()
def _reference_mask(model, config, path: Path, mode: str) -> np.ndarray:
    """The plain path, one image at a time: read, resize, normalise, forward, upsample,
    ``argmax`` -- what predict computed before its pipeline was tuned."""
    image = read_image(path)
    x = input_transform(config, mode)(image)[0][None]
    if mode == "resize":
        logits = model(x)
    else:
        from segcl.engine.inference import slide_logits

        logits = slide_logits(model, x, config.data.image_size)
    return resize_logits(logits, image.shape[:2]).argmax(1)[0].to(torch.uint8).numpy()


@pytest.mark.parametrize("mode", ["resize", "slide"])
def test_predict_masks_equal_the_plain_path(tiny_run: Path, synthetic_data: Path,
                                            tmp_path: Path, mode: str) -> None:
    model, config = load_model(tiny_run)
    paths = _images(synthetic_data, tmp_path / "in")
    with torch.no_grad():  # random classes around the mean feature: masks with many boundaries
        x = input_transform(config)(read_image(paths[0]))[0][None]
        mean_feature = model.forward_dense(x)[1].mean(dim=(0, 2, 3))
        w = model.classifier.weight
        w.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
        model.classifier.bias.copy_(-(w[:, :, 0, 0] @ mean_feature))
    out = tmp_path / "out"
    result = predict_files(model, config, [tmp_path / "in"], out, batch_size=3, mode=mode,
                           threads=2)
    assert result.ok and len(result.written) == len(paths)
    classes = set()
    for path in paths:
        with Image.open(out / f"{path.stem}.png") as im:
            assert im.mode == "P"
            got = np.array(im)
        want = _reference_mask(model, config, path, mode)
        assert got.shape == read_image(path).shape[:2]
        assert np.array_equal(got, want), path.name
        classes |= set(np.unique(got).tolist())
    assert len(classes) >= 3
