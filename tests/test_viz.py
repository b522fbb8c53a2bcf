"""Tests for segcl.viz: palettes, colorize round trip, overlays, plots written as PNG files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcl.viz import (
    colorize,
    default_palette,
    overlay,
    plot_confusion,
    plot_curves,
    plot_lines,
    save_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_size: tuple[int, int] = (100, 100)) -> Image.Image:
    """The file exists, is a readable PNG of a reasonable size, and no temp file was left."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = Image.open(path)
    image.load()
    assert image.width >= min_size[0] and image.height >= min_size[1]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0  # something was drawn
    return image


def test_default_palette_voc_colours_and_distinct() -> None:
    pal = default_palette(256)
    assert pal[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert pal[8] == (64, 0, 0)
    assert len(set(pal)) == 256
    assert default_palette(0) == []
    assert default_palette(3) == pal[:3]


def test_the_voc_layout_uses_the_one_palette() -> None:
    from segcl.data.info import VOC

    assert VOC.palette == default_palette(21)
    assert VOC.palette[15] == (192, 128, 128)  # person, the VOC devkit's colour


def test_colorize_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, size=(21, 34)).astype(np.uint8)
    mask[0, :] = 255  # ignore band
    pal = default_palette(5)
    image = colorize(mask, pal)
    assert image.mode == "P"
    out = save_png(image, tmp_path / "sub" / "mask.png")
    back = Image.open(out)
    assert back.mode == "P"
    np.testing.assert_array_equal(np.array(back), mask)
    rgb = np.array(back.convert("RGB"))
    assert tuple(rgb[0, 0]) == (0, 0, 0)  # 255 not in palette -> black
    r, c = np.argwhere(mask == 1)[0]
    assert tuple(rgb[r, c]) == pal[1]


def test_colorize_uses_palette_entry_255_when_given() -> None:
    pal = [(0, 0, 0)] * 255 + [(255, 255, 255)]
    rgb = np.array(colorize(np.full((2, 2), 255, np.uint8), pal).convert("RGB"))
    assert (rgb == 255).all()


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 1), np.uint8), np.full((2, 2), 256), np.zeros((2, 2), np.float32)]
)
def test_colorize_rejects_bad_masks(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        colorize(bad, default_palette(3))


def test_overlay_shape_dtype_and_blend() -> None:
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.int64)
    mask[:, 3:] = 1
    mask[0, 0] = 255
    pal = [(0, 0, 0), (200, 100, 0)]
    out = overlay(image, mask, pal, alpha=0.5, ignore_index=255)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (100, 100, 100)  # ignored pixel unchanged
    assert tuple(out[1, 0]) == (50, 50, 50)  # class 0 = black at 50 %
    assert tuple(out[1, 4]) == (150, 100, 50)
    np.testing.assert_array_equal(overlay(image, mask, pal, 0.0, 255), image)
    gray = overlay(np.full((4, 6), 100, np.uint8), mask, pal, 1.0, 255)
    assert tuple(gray[1, 4]) == (200, 100, 0)


def test_overlay_rejects_mismatch_and_unknown_index() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((4, 5), np.int64), default_palette(2))
    with pytest.raises(ValueError, match="palette"):
        overlay(image, np.full((4, 6), 255), default_palette(2))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((4, 6), np.int64), default_palette(2), alpha=1.5)


def _run_records() -> list[dict]:
    records: list[dict] = []
    for epoch in range(3):
        for step in range(epoch * 10, epoch * 10 + 10):
            records.append({"step": step, "epoch": epoch, "loss": 2.0 / (1 + step), "lr": 0.01})
        records.append({"epoch": epoch, "split": "val", "miou": 0.3 + 0.1 * epoch, "loss": 1.0})
    return records


def test_plot_curves_writes_png(tmp_path: Path) -> None:
    out = plot_curves(_run_records(), tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    image = assert_png(out)
    assert image.width > image.height  # two panels side by side


def test_plot_curves_tolerates_missing_data_and_extra_keys(tmp_path: Path) -> None:
    only_train = [r for r in _run_records() if "split" not in r]
    assert_png(plot_curves(only_train, tmp_path / "a.png"))
    assert_png(plot_curves(_run_records(), tmp_path / "b.png", keys=["loss", "lr", "miou"]))
    with pytest.raises(ValueError):
        plot_curves(_run_records(), tmp_path / "c.png", keys=[])


def test_plot_curves_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    out.write_bytes(b"old")
    plot_curves(_run_records(), out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_confusion_writes_png(tmp_path: Path) -> None:
    matrix = np.array([[50, 3, 0], [4, 20, 6], [0, 0, 0]])
    assert_png(plot_confusion(matrix, ["bg", "disc", "square"], tmp_path / "cm.png"))
    assert_png(plot_confusion(matrix, ["a", "b", "c"], tmp_path / "raw.png", normalize=False))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(matrix, ["a", "b"], tmp_path / "bad.png")


def test_plot_lines_writes_png(tmp_path: Path) -> None:
    series = {
        "supervised": [(8, 0.31), (2, 0.2), (32, 0.45)],
        "pixel contrast": [(2, 0.26), (8, 0.38), (32, 0.5)],
    }
    out = plot_lines(
        series, tmp_path / "lines.png", "labelled images", "val mIoU", "budget", logx=True
    )
    assert_png(out)
    with pytest.raises(ValueError):
        plot_lines({}, tmp_path / "empty.png", "x", "y", "t")


def test_plots_do_not_switch_pyplot_backend(tmp_path: Path) -> None:
    import matplotlib

    before = matplotlib.get_backend()
    plot_lines({"a": [(0, 0), (1, 1)]}, tmp_path / "x.png", "x", "y", "t")
    assert matplotlib.get_backend() == before


def test_import_segcl_viz_does_not_import_matplotlib() -> None:
    import subprocess

    code = "import sys, segcl.viz; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "False"


def test_curve_series_axes() -> None:
    from segcl.viz import _series_for_key

    # one x axis for every panel: val mIoU (no training values) is placed at the step too
    x_name, lines = _series_for_key(_run_records(), "miou")
    assert x_name == "step" and lines == {"val": [(9.0, 0.3), (19.0, 0.4), (29.0, 0.5)]}
    # val loss shares the train loss panel: placed at the last training step of its epoch
    x_name, lines = _series_for_key(_run_records(), "loss")
    assert x_name == "step"
    assert len(lines["train"]) == 30
    assert [x for x, _ in lines["val"]] == [9.0, 19.0, 29.0]


def test_curve_series_use_the_steps_evaluation_records_carry() -> None:
    from segcl.viz import _series_for_key

    # what finetune logs: training records every 12 steps, val records with their own step
    records = []
    for epoch in range(4):
        records.append({"step": 12 * (2 * epoch + 1), "epoch": epoch + 1, "loss": 1.0})
        records.append({"step": 24 * (epoch + 1), "epoch": epoch + 1, "loss": 0.5})
        records.append({"step": 24 * (epoch + 1), "epoch": epoch, "split": "val", "miou": 0.1})
    for key in ("loss", "miou"):
        assert _series_for_key(records, key)[0] == "step", key
    assert [x for x, _ in _series_for_key(records, "miou")[1]["val"]] == [24.0, 48.0, 72.0, 96.0]
    # records without any step (an evaluation-only log) keep the epoch axis
    epochs_only = [{"epoch": e, "split": "val", "miou": 0.1 * e} for e in range(3)]
    assert _series_for_key(epochs_only, "miou")[0] == "epoch"


def test_curves_of_a_finetune_run_share_the_step_axis(tiny_run) -> None:
    import json

    from segcl.viz import _series_for_key

    records = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    val_steps = [float(r["step"]) for r in records if r.get("split") == "val"]
    assert val_steps
    for key in ("loss", "miou"):
        assert _series_for_key(records, key)[0] == "step", key
    assert [x for x, _ in _series_for_key(records, "miou")[1]["val"]] == val_steps
