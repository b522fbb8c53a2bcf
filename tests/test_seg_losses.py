"""Supervised segmentation losses (Dice, focal, OHEM, class weights) against plain reference
implementations written here: per-pixel loops, one-hot sums and hand-computed numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcl.config import SUPERVISED_LOSSES, DataConfig, FinetuneConfig, LossConfig
from segcl.data import DatasetInfo, Sample, write_mask
from segcl.data.stats import class_pixel_counts
from segcl.engine.callbacks import Callback
from segcl.engine.supervised import build_supervised_loss, class_weights
from segcl.errors import ConfigError
from segcl.losses import (
    SEGMENTATION_LOSSES,
    DiceLoss,
    FocalLoss,
    SegmentationLoss,
    cross_entropy,
    focal_loss,
    median_frequency_weights,
    ohem_keep,
    soft_dice_loss,
)
from tests.conftest import run_cli

IGNORE = 255


def _batch(b: int = 2, c: int = 4, h: int = 5, w: int = 6, seed: int = 0, ignore: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < ignore] = IGNORE
    return logits.requires_grad_(), target


def _pixels(logits: torch.Tensor, target: torch.Tensor):
    """(probability vector, label) of every pixel, in (b, y, x) order."""
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                yield logits[i, :, y, x].softmax(0), int(target[i, y, x])


def _close(a: torch.Tensor, b: torch.Tensor | float) -> None:
    torch.testing.assert_close(torch.as_tensor(a).double(), torch.as_tensor(b).double(),
                               rtol=1e-6, atol=1e-8)


# ---- Dice -------------------------------------------------------------------------------------


def _dice_reference(logits, target, weight=None, smooth=1.0):
    c = logits.shape[1]
    inter, p2, g2 = [0.0] * c, [0.0] * c, [0.0] * c
    for p, y in _pixels(logits, target):
        if y == IGNORE:
            continue
        for k in range(c):
            g = 1.0 if y == k else 0.0
            inter[k] = inter[k] + p[k] * g
            p2[k] = p2[k] + p[k] ** 2
            g2[k] += g * g
    losses = [1 - (2 * inter[k] + smooth) / (p2[k] + g2[k] + smooth) for k in range(c)]
    w = [1.0] * c if weight is None else [float(v) for v in weight]
    return sum(wk * lk for wk, lk in zip(w, losses, strict=True)) / sum(w)


@pytest.mark.parametrize("weight", [None, [1.0, 0.5, 2.0, 0.0]])
def test_dice_matches_the_per_pixel_reference(weight) -> None:
    logits, target = _batch()
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    loss = soft_dice_loss(logits, target, w, IGNORE)
    ref = _dice_reference(logits, target, weight)
    _close(loss, ref)
    (g,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(torch.as_tensor(ref), logits)
    torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-4, atol=1e-6)


def test_dice_of_a_perfect_prediction_is_near_zero_and_ignores_ignored_pixels() -> None:
    target = torch.randint(0, 3, (2, 8, 8))
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 50
    assert soft_dice_loss(logits, target, ignore_index=IGNORE).item() < 1e-6
    # pixels marked ignore may hold any logits: the loss does not move
    target2 = target.clone()
    target2[:, :4] = IGNORE
    logits2 = logits.clone()
    logits2[:, :, :4] = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    assert DiceLoss(ignore_index=IGNORE)(logits2, target2).item() < 1e-6


# ---- focal --------------------------------------------------------------------------------------


def _focal_reference(logits, target, gamma, weight=None, keep=None):
    num, den = 0.0, 0.0
    for n, (p, y) in enumerate(_pixels(logits, target)):
        if y == IGNORE or (keep is not None and not bool(keep.reshape(-1)[n])):
            continue
        a = 1.0 if weight is None else float(weight[y])
        num = num + a * -((1 - p[y]) ** gamma) * torch.log(p[y])
        den += a
    return num / den


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("weight", [None, [0.2, 1.0, 3.0, 1.5]])
def test_focal_matches_the_per_pixel_reference(gamma, weight) -> None:
    logits, target = _batch(seed=1)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    _close(focal_loss(logits, target, gamma, w, IGNORE),
           _focal_reference(logits, target, gamma, weight))


def test_focal_with_gamma_0_is_weighted_cross_entropy() -> None:
    logits, target = _batch(seed=2)
    w = torch.tensor([0.2, 1.0, 3.0, 1.5], dtype=torch.float64)
    _close(FocalLoss(0.0, w, IGNORE)(logits, target),
           F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE))
    with pytest.raises(ConfigError, match="gamma"):
        FocalLoss(-1.0)


def test_focal_gradients_stay_finite_for_confident_pixels() -> None:
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.tensor([100.0, -100.0]).view(1, 2, 1, 1).repeat(1, 1, 2, 2).requires_grad_()
    for gamma in (0.5, 2.0):
        (g,) = torch.autograd.grad(focal_loss(logits, target, gamma), logits)
        assert torch.isfinite(g).all()


# ---- OHEM ---------------------------------------------------------------------------------------


def _ohem_reference(logits, target, threshold, min_kept):
    probs = [(float(p[y]), n) for n, (p, y) in enumerate(_pixels(logits.detach(), target))
             if y != IGNORE]
    hard = sum(1 for p, _ in probs if p < threshold)
    n_keep = max(hard, min(min_kept * logits.shape[0], len(probs)))
    kept = {n for _, n in sorted(probs)[:n_keep]}  # stable: ties in pixel order
    return torch.tensor([n in kept for n in range(target.numel())]).view(target.shape)


@pytest.mark.parametrize("threshold, min_kept", [(0.7, 0), (0.7, 20), (0.3, 5), (1.0, 0),
                                                  (0.0, 3)])
def test_ohem_keeps_the_pixels_of_the_documented_rule(threshold, min_kept) -> None:
    logits, target = _batch(b=2, h=6, w=6, seed=3)
    keep = ohem_keep(logits, target, IGNORE, threshold, min_kept)
    assert torch.equal(keep, _ohem_reference(logits, target, threshold, min_kept))
    assert not keep[target == IGNORE].any()
    probs = logits.detach().softmax(1).gather(1, target.clamp(max=3)[:, None])[:, 0]
    valid = target != IGNORE
    expected = max(int(((probs < threshold) & valid).sum()), min(2 * min_kept, int(valid.sum())))
    assert int(keep.sum()) == expected


def test_ohem_cross_entropy_averages_over_the_kept_pixels_only() -> None:
    logits, target = _batch(seed=4)
    keep = ohem_keep(logits, target, IGNORE, 0.6, 4)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    pw = w[target.clamp(max=3)] * keep
    _close(cross_entropy(logits, target, w, IGNORE, keep), (per_pixel * pw).sum() / pw.sum())
    _close(focal_loss(logits, target, 2.0, w, IGNORE, keep),
           _focal_reference(logits, target, 2.0, w, keep))
    # an all-ignore batch is 0 with a graph, not NaN
    empty = torch.full_like(target, IGNORE)
    loss = cross_entropy(logits, empty, None, IGNORE, ohem_keep(logits, empty, IGNORE))
    assert loss.item() == 0.0 and loss.requires_grad


# ---- the composed loss -------------------------------------------------------------------------


def test_plain_cross_entropy_is_unchanged() -> None:
    logits, target = _batch(seed=5)
    loss, terms = SegmentationLoss("ce", ignore_index=IGNORE)(logits, target)
    assert torch.equal(loss, F.cross_entropy(logits.float(), target, ignore_index=IGNORE))
    assert set(terms) == {"ce"}


def test_every_configured_loss_is_the_sum_of_its_terms() -> None:
    assert set(SUPERVISED_LOSSES) == set(SEGMENTATION_LOSSES)
    logits, target = _batch(seed=6)
    w = [1.0, 2.0, 0.5, 1.0]
    wt = torch.tensor(w)
    keep = ohem_keep(logits, target, IGNORE, 0.7, 3)
    for name in SEGMENTATION_LOSSES:
        ohem = name != "dice"
        loss, terms = SegmentationLoss(name, w, IGNORE, ohem=ohem, ohem_min_kept=3)(logits,
                                                                                   target)
        expected = {
            "ce": cross_entropy(logits, target, wt, IGNORE, keep),
            "dice": soft_dice_loss(logits, target, wt, IGNORE),
            "focal": focal_loss(logits, target, 2.0, wt, IGNORE, keep),
        }
        assert set(terms) == set(name.split("+"))
        for term, value in terms.items():
            _close(value, expected[term])
        _close(loss, sum(expected[t] for t in terms))
        assert loss.requires_grad and not any(v.requires_grad for v in terms.values())
    with pytest.raises(ConfigError, match="OHEM needs a pixel-wise term"):
        SegmentationLoss("dice", ohem=True)
    with pytest.raises(ConfigError, match="2 class weights for 4 classes"):
        SegmentationLoss("ce", [1.0, 2.0])(logits, target)


# ---- class weights -----------------------------------------------------------------------------


def test_median_frequency_weights_by_hand() -> None:
    # class 0: 60 of 100 pixels of the images it is in; class 1: 10/100; class 2: 20/50;
    # class 3 never appears. freq = 0.6, 0.1, 0.4 -> median 0.4 -> 2/3, 4, 1; absent -> 1
    weights = median_frequency_weights([60, 10, 20, 0], [100, 100, 50, 0])
    np.testing.assert_allclose(weights, [0.4 / 0.6, 4.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no labelled pixel"):
        median_frequency_weights([0, 0], [0, 0])
    with pytest.raises(ValueError, match="n_c <= N_c"):
        median_frequency_weights([5], [1])


def _masks_dataset(tmp_path, masks: list[np.ndarray]) -> list[Sample]:
    samples = []
    for i, mask in enumerate(masks):
        path = tmp_path / f"m{i}.png"
        write_mask(path, mask.astype(np.uint8))
        samples.append(Sample(image=tmp_path / f"img{i}.png", mask=path))
    return samples


def test_auto_class_weights_count_the_labelled_masks(tmp_path) -> None:
    info = DatasetInfo(classes=["a", "b", "c"], ignore_index=IGNORE)
    m0 = np.zeros((4, 5), np.uint8)  # 12 a, 6 b, 2 ignore
    m0[:2, 2:5] = 1
    m0[3, :2] = IGNORE
    m1 = np.full((2, 5), 2, np.uint8)  # 8 c, 2 a
    m1[0, :2] = 0
    samples = [*_masks_dataset(tmp_path, [m0, m1]), Sample(image=tmp_path / "x.png", mask=None)]
    pixels, image_pixels = class_pixel_counts(samples, info)
    assert pixels.tolist() == [14, 6, 8]
    assert image_pixels.tolist() == [18 + 10, 18, 10]
    weights = class_weights(LossConfig(class_weights="auto"), info, samples)
    np.testing.assert_allclose(weights, median_frequency_weights(pixels, image_pixels))
    assert class_weights(LossConfig(class_weights="1,2,3"), info, samples) == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match=r"--class-weights gives 2 weights but the dataset has "
                                          r"3 classes \(a, b, c\)"):
        class_weights(LossConfig(class_weights=[1, 2]), info, samples)

    class Messages(Callback):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def on_message(self, message: str) -> None:
            self.lines.append(message)

    messages = Messages()
    loss = build_supervised_loss(LossConfig(name="focal", class_weights="auto", ohem=True),
                                 info, samples, messages)
    assert loss.name == "focal" and loss.ohem
    torch.testing.assert_close(loss.class_weights, torch.tensor(weights, dtype=torch.float32))
    assert "median frequency over 3 labelled images" in messages.lines[0]
    messages.lines.clear()
    build_supervised_loss(LossConfig(), info, samples, messages)
    assert messages.lines == []  # plain cross-entropy: nothing to report


# ---- configuration and command line ------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="lovasz"), "--loss must be one of ce, dice, focal, ce\\+dice, got 'lovasz'"),
    (dict(class_weights="1,x"), "--class-weights must be 'auto' or comma-separated numbers"),
    (dict(class_weights=[1, -2]), "--class-weights must be"),
    (dict(class_weights="0,0"), "--class-weights must be"),
    (dict(class_weights=[1, math.inf]), "--class-weights must be"),
    (dict(name="dice", ohem=True), "--ohem needs a pixel-wise loss"),
    (dict(ohem_threshold=1.5), r"--ohem-threshold must be a number in \[0, 1\]"),
    (dict(ohem_min_kept=-1), "--ohem-min-kept must be a number >= 0"),
    (dict(focal_gamma=-1), "--focal-gamma must be a number >= 0"),
])
def test_loss_options_are_validated_by_the_config(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        LossConfig(**kwargs)


def test_loss_config_round_trips_through_yaml(tmp_path) -> None:
    from segcl.config import load_yaml, save_yaml

    cfg = FinetuneConfig(loss=LossConfig(name="ce+dice", class_weights="0.5, 2", ohem=True))
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_yaml(FinetuneConfig, tmp_path / "c.yaml")
    assert back.loss == LossConfig(name="ce+dice", class_weights=[0.5, 2.0], ohem=True)
    assert FinetuneConfig(data=DataConfig()).loss == LossConfig()


def test_cli_trains_with_the_chosen_loss(synthetic_data, tmp_path) -> None:
    common = ["--encoder", "test_resnet", "--image-size", "48x64", "--steps", "2",
              "--batch-size", "4", "--workers", "0", "--warmup-steps", "1", "--quiet"]
    out = tmp_path / "dice"
    proc = run_cli("finetune", str(synthetic_data), "--loss", "ce+dice", "--class-weights",
                   "auto", "--ohem", "--ohem-min-kept", "100", "--out", str(out), *common)
    assert proc.returncode == 0, proc.stderr
    train = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    assert train and all(set(r) >= {"ce", "dice"} for r in train)
    assert train[-1]["loss"] == pytest.approx(train[-1]["ce"] + train[-1]["dice"], abs=1e-4)
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())["loss"]
    assert saved["name"] == "ce+dice" and saved["class_weights"] == "auto" and saved["ohem"]


def test_cli_refuses_bad_loss_options_in_one_line(synthetic_data, tmp_path) -> None:
    out = tmp_path / "bad"
    for args, message in [
        (["--loss", "dice", "--ohem"], "Error: --ohem needs a pixel-wise loss"),
        (["--class-weights", "1,2"], "Error: --class-weights gives 2 weights but the dataset "
                                     "has 4 classes"),
        (["--loss", "bce"], "Error: --loss must be one of ce, dice, focal, ce+dice"),
    ]:
        proc = run_cli("finetune", str(synthetic_data), "--encoder", "test_resnet", "--steps",
                       "1", "--workers", "0", "--out", str(out), *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
