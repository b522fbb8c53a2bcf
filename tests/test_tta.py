"""Test-time augmentation: the ``--tta`` spec, the probability averaging, and predict/evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segcl.checkpoint import read_config
from segcl.config import TTAConfig
from segcl.engine.inference import infer_logits, tta_probabilities
from segcl.errors import ConfigError
from segcl.models import ModelConfig, SegmentationModel
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    torch.manual_seed(0)
    return SegmentationModel(ModelConfig(encoder="test_resnet", num_classes=4)).eval()


# ---------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("spec, flip, scales", [
    ("flip", True, (1.0,)),
    ("scales=0.75,1,1.25", False, (0.75, 1.0, 1.25)),
    ("flip,scales=0.75,1,1.25", True, (0.75, 1.0, 1.25)),
    ("scales=0.5,2,flip", True, (0.5, 2.0)),
    (" Flip , SCALES = 1.5 ", True, (1.5,)),
])
def test_spec_parses(spec: str, flip: bool, scales: tuple[float, ...]) -> None:
    tta = TTAConfig.parse(spec)
    assert tta == TTAConfig(flip=flip, scales=scales)
    assert TTAConfig.parse(str(tta)) == tta  # round trip through the text form
    assert tta.views == len(scales) * (2 if flip else 1)


@pytest.mark.parametrize("spec", [None, "none", "scales=1", TTAConfig()])
def test_spec_without_augmentation_is_off(spec) -> None:
    assert TTAConfig.parse(spec) is None


@pytest.mark.parametrize("spec, message", [
    ("rot90", "unknown part 'rot90'"),
    ("flip,flip", "repeats 'flip'"),
    ("scales=1,scales=2", "repeats 'scales'"),
    ("scales=", "at least one value"),
    ("scales=0,1", r"in \(0, 4\]"),
    ("scales=-1", r"in \(0, 4\]"),
    ("scales=75", r"in \(0, 4\]"),
    ("scales=nan", r"in \(0, 4\]"),
    ("scales=1,1", "twice"),
    ("scales=1,x", "unknown part 'x'"),
    ("", "empty part"),
    ("flip,,", "empty part"),
])
def test_bad_spec_is_one_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        TTAConfig.parse(spec)
    assert str(err.value).startswith("--tta ") and "\n" not in str(err.value)


# ---------------------------------------------------------------------- the averaging
@torch.inference_mode()
def test_flip_is_the_mean_of_the_two_views(model) -> None:
    x = torch.randn(2, 3, 48, 64)
    out = infer_logits(model, x, "resize", (48, 64), TTAConfig(flip=True))
    expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1).flip(-1)) / 2
    torch.testing.assert_close(out.softmax(1), expected, atol=1e-6, rtol=1e-5)
    plain = model(x).softmax(1)
    assert (plain - expected).abs().max() > 1e-3  # the flipped view really changes the answer


@torch.inference_mode()
def test_identity_tta_is_the_plain_logits(model) -> None:
    x = torch.randn(1, 3, 48, 64)
    assert torch.equal(infer_logits(model, x, "resize", (48, 64), TTAConfig()), model(x))


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["resize", "slide"])
def test_scales_work_at_sizes_off_the_stride(model, mode: str) -> None:
    # 37x53 is no multiple of the encoder's stride 32, nor are 0.75x (28x40) or 1.25x (46x66)
    x = torch.randn(2, 3, 37, 53)
    tta = TTAConfig.parse("flip,scales=0.75,1,1.25")
    window = (32, 32)
    probs = tta_probabilities(model, x, mode, window, tta)
    assert probs.shape == (2, 4, 37, 53) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53))

    def view(scale: float, flip: bool) -> torch.Tensor:
        size = (round(37 * scale), round(53 * scale))
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out = infer_logits(model, xs.flip(-1) if flip else xs, mode, window)
        out = out.flip(-1) if flip else out
        return F.interpolate(out, size=(37, 53), mode="bilinear").softmax(1)

    expected = sum(view(s, f) for s in (0.75, 1.0, 1.25) for f in (False, True)) / 6
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------- predict / evaluate
def test_predict_writes_probabilities_and_colour_masks(tiny_run: Path, synthetic_data: Path,
                                                       tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for f in sorted((synthetic_data / "val" / "images").iterdir())[:2]:
        (src / f.name).write_bytes(f.read_bytes())
    Image.fromarray(np.full((30, 41, 3), 90, np.uint8)).save(src / "odd.png")  # 30x41
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = run_cli("predict", str(tiny_run), str(src), "--out", str(out), "--save-probs",
                   "--color", "--tta", "flip,scales=0.75,1,1.25", "--device", "cpu")
    assert proc.returncode == 1 and "broken.jpg" in proc.stdout + proc.stderr  # still reported
    palette = np.array(read_config(tiny_run / "best").data.palette, np.uint8)
    names = sorted(p.stem for p in out.glob("*.png") if not p.stem.endswith("_color"))
    assert len(names) == 3 and "broken" not in names
    for name in names:
        mask = np.array(Image.open(out / f"{name}.png"))
        probs = np.load(out / f"{name}_probs.npy", mmap_mode="r")
        assert probs.dtype == np.float16 and probs.shape == (len(palette), *mask.shape)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
        assert np.array_equal(probs.argmax(0), mask)
        color = Image.open(out / f"{name}_color.png")
        assert color.mode == "RGB"
        assert np.array_equal(np.array(color), palette[mask])
    assert np.array(Image.open(out / "odd.png")).shape == (30, 41)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_bad_tta_spec_is_one_error_line(tiny_run: Path, synthetic_data: Path,
                                        tmp_path: Path) -> None:
    for command in (["predict", str(tiny_run), str(synthetic_data / "val" / "images"),
                     "--out", str(tmp_path / "out")],
                    ["evaluate", str(tiny_run), str(synthetic_data)]):
        proc = run_cli(*command, "--tta", "flip,scales=0.5,zoom")
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert err.startswith("Error: --tta") and "'zoom'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_evaluate_with_tta_returns_metrics(tiny_run: Path, synthetic_data: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    run_cli("evaluate", str(tiny_run), str(synthetic_data), "--tta", "flip,scales=0.75,1,1.25",
            "--json", str(out), "--workers", "0", "--device", "cpu", "--quiet", check=True)
    metrics = json.loads(out.read_text())
    assert metrics["tta"] == "flip,scales=0.75,1,1.25" and metrics["num_images"] == 4
    assert 0.0 <= metrics["miou"] <= 1.0 and len(metrics["iou"]) == 4
    masks = [np.array(Image.open(f)) for f in (synthetic_data / "val" / "masks").iterdir()]
    scored = sum(int((m != 255).sum()) for m in masks)  # every labelled pixel, at full size
    assert sum(map(sum, metrics["confusion_matrix"])) == scored


def test_evaluate_library_call_takes_the_same_spec(tiny_run: Path, synthetic_data: Path) -> None:
    from segcl.engine.evaluate import evaluate

    plain = evaluate(str(tiny_run), str(synthetic_data), device="cpu", workers=0)
    flip = evaluate(str(tiny_run), str(synthetic_data), device="cpu", workers=0,
                    mode="slide", tta="flip")
    assert plain["tta"] == "none" and flip["tta"] == "flip"
    assert flip["miou"] is not None and flip["num_images"] == plain["num_images"]


def test_pseudo_labels_and_predict_share_one_inference_path(tiny_run: Path, synthetic_data: Path,
                                                            tmp_path: Path) -> None:
    from segcl.config import FinetuneConfig
    from segcl.data import load_samples
    from segcl.engine.predict import predict
    from segcl.engine.pseudo import pseudo_label

    tta = TTAConfig.parse("flip,scales=0.75,1.25")
    samples, info = load_samples(synthetic_data, "val")
    cfg = FinetuneConfig(pseudo_threshold=0.0, pseudo_background_threshold=0.0)
    masks, _ = pseudo_label(str(tiny_run), samples, info, cfg, torch.device("cpu"), tta=tta)
    predict(str(tiny_run), [s.image for s in samples], tmp_path, device="cpu", tta=tta)
    for sample, mask in zip(samples, masks, strict=True):
        assert np.array_equal(np.array(Image.open(tmp_path / f"{Path(sample.image).stem}.png")),
                              mask)
