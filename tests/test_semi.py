"""Online semi-supervised fine-tuning: views, the unlabelled stream, the loss, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcl.checkpoint import read_weights
from segcl.config import DataConfig, FinetuneConfig, SemiConfig
from segcl.data.transforms import WeakStrongTransform, cutmix_box
from segcl.engine.data_setup import StreamSampler
from segcl.engine.finetune import finetune
from segcl.engine.semi import PseudoLabels, consistency_loss, mix_views, pseudo_labels
from segcl.errors import ConfigError
from tests.conftest import StopAt


def _image(h: int = 40, w: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_weak_strong_views_share_geometry_and_mark_padding() -> None:
    t = WeakStrongTransform((32, 32), scale=(0.5, 0.6), strong_views=2, cutmix=1.0)
    assert t.keys == ("image", "strong1", "strong2", "box1", "box2", "valid")
    out = dict(zip(t.keys, t(_image(), None, np.random.default_rng(1)), strict=True))
    assert out["image"].shape == out["strong1"].shape == (3, 32, 32)
    valid = out["valid"]
    assert valid.dtype == torch.bool and 0 < valid.sum() < valid.numel()  # scaled down: padding
    pad = out["image"][:, ~valid]
    assert torch.allclose(pad, pad[:, :1].expand_as(pad))  # the padding is one constant colour
    assert not torch.equal(out["strong1"], out["strong2"])  # independent distortions
    assert out["box1"].any() and out["box2"].any()  # cutmix=1: a box in every view
    again = dict(zip(t.keys, t(_image(), None, np.random.default_rng(1)), strict=True))
    assert all(torch.equal(out[k], again[k]) for k in t.keys)  # a function of the generator


def test_cutmix_box_area_and_probability() -> None:
    rng = np.random.default_rng(0)
    assert not cutmix_box((20, 30), 0.0, rng).any()
    areas = [cutmix_box((100, 100), 1.0, rng).mean() for _ in range(200)]
    assert min(areas) > 0.01 and max(areas) <= 0.45


def test_stream_is_a_function_of_the_step() -> None:
    full = StreamSampler(5, batch=3, seed=2)
    it = iter(full)
    keys = [next(it) for _ in range(3 * 10)]
    # every epoch is a permutation of the 5 images
    by_epoch: dict[int, list[int]] = {}
    for epoch, i in keys:
        by_epoch.setdefault(epoch, []).append(i)
    assert sorted(by_epoch[0]) == list(range(5)) and sorted(by_epoch[1]) == list(range(5))
    assert by_epoch[0] != by_epoch[1]
    # resuming at step 4 continues the same stream
    resumed = iter(StreamSampler(5, batch=3, seed=2, start_step=4))
    assert [next(resumed) for _ in range(6)] == keys[12:18]
    # two processes share each global step's batches between them
    ranks = [iter(StreamSampler(5, batch=3, seed=2, rank=r, world=2)) for r in range(2)]
    shares = [[next(r) for _ in range(3)] for r in ranks]
    assert shares[0] + shares[1] == keys[:6]
    with pytest.raises(ConfigError):
        StreamSampler(0, 1, 0)


def test_consistency_loss_matches_a_reference() -> None:
    torch.manual_seed(0)
    weak, strong = torch.randn(2, 4, 6, 6) * 3, torch.randn(2, 4, 6, 6)
    valid = torch.ones(2, 6, 6, dtype=torch.bool)
    valid[:, :, :2] = False
    target = pseudo_labels(weak, valid)
    prob = weak.softmax(1)
    assert torch.equal(target.label, prob.argmax(1))
    loss = consistency_loss(strong, target, threshold=0.7)
    ce = F.cross_entropy(strong, prob.argmax(1), reduction="none")
    keep = (prob.max(1).values >= 0.7) & valid
    assert math.isclose(loss.item(), (ce[keep].sum() / valid.sum()).item(), rel_tol=1e-6)
    assert consistency_loss(strong, target, threshold=1.0).item() == 0.0
    masked = target.masked(0.7, ignore_index=255)
    assert torch.equal(masked == 255, ~keep)


def test_cutmix_mixes_images_and_targets_alike() -> None:
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 4, 4).clone()
    box = torch.zeros(3, 4, 4, dtype=torch.bool)
    box[:, :2, :2] = True
    mixed = mix_views(images, box)
    assert torch.equal(mixed[1, 0, :2, :2], torch.zeros(2, 2))  # pasted from image 0
    assert torch.equal(mixed[0, 0, :2, :2], torch.full((2, 2), 2.0))  # from image 2 (roll)
    assert torch.equal(mixed[1, 0, 2:, 2:], torch.ones(2, 2))
    labels = images[:, 0].long()
    target = PseudoLabels(labels, torch.ones(3, 4, 4), torch.ones(3, 4, 4, dtype=torch.bool))
    assert torch.equal(target.mixed(box).label, mixed[:, 0].long())


def test_semi_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="--semi-threshold"):
        SemiConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="--semi-views"):
        SemiConfig(strong_views=0)


def test_semi_finetune_logs_the_unlabelled_loss_and_resumes_bit_exact(synthetic_data,
                                                                      tmp_path) -> None:
    def config(out: str) -> FinetuneConfig:
        return FinetuneConfig(
            data=DataConfig(root=str(synthetic_data), image_size=(48, 64), labeled_count=4,
                            workers=2),
            semi=SemiConfig(enabled=True, threshold=0.0, strong_views=1, batch_size=3),
            encoder="test_resnet", out=out, steps=8, batch_size=2, log_every=1, seed=3)

    full = finetune(config(str(tmp_path / "full")))
    assert full["steps"] == 8
    records = [r for r in _records(tmp_path / "full") if "loss_u" in r]
    assert len(records) == 8 and all(r["loss_u"] > 0 and r["confident"] == 1.0 for r in records)

    killed = config(str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        finetune(killed, StopAt(5))  # the last checkpoint is the end of epoch 2 (step 4)
    finetune(killed, resume=True)
    a, b = read_weights(tmp_path / "full" / "last"), read_weights(tmp_path / "killed" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_semi_needs_unlabelled_images(synthetic_data, tmp_path) -> None:
    cfg = FinetuneConfig(data=DataConfig(root=str(synthetic_data), image_size=(48, 64),
                                         workers=0),
                         semi=SemiConfig(enabled=True), encoder="test_resnet",
                         out=str(tmp_path / "x"), steps=1, batch_size=2)
    with pytest.raises(ConfigError, match="needs unlabelled images"):
        finetune(cfg)


def _records(run) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("clean", [True, False])
def test_strong_views_leave_running_stats_alone_when_asked(clean: bool) -> None:
    from segcl.engine.semi import unlabeled_loss
    from segcl.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", "unet", num_classes=3).train()
    t = WeakStrongTransform((32, 32), strong_views=1)
    items = [dict(zip(t.keys, t(_image(), None, np.random.default_rng(i)), strict=True))
             for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in t.keys}
    feats, dense = model.forward_dense(batch["image"])
    logits = model.classify(dense, (32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    cfg = SemiConfig(strong_views=1, threshold=0.0, shared_forward=not clean)
    loss, _, _, _ = unlabeled_loss(model, feats, logits, batch, cfg)
    loss.backward()
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    same = all(torch.equal(before[k], after[k]) for k in before)
    assert same == clean
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("shared", [False, True])
def test_the_contrast_sees_the_unlabelled_images_with_their_pseudo_labels(shared: bool) -> None:
    from segcl.config import ContrastConfig
    from segcl.data import DatasetInfo
    from segcl.engine.contrast_aux import CrossImageAux
    from segcl.methods import get
    from segcl.methods.base import FinetuneStep
    from segcl.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", "unet", num_classes=3).train()
    t = WeakStrongTransform((32, 32), strong_views=2, cutmix=1.0)
    items = [dict(zip(t.keys, t(_image(), None, np.random.default_rng(i)), strict=True))
             for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in t.keys}
    cfg = FinetuneConfig(semi=SemiConfig(enabled=True, strong_views=2, threshold=0.0,
                                         shared_forward=shared, feature_perturbation=False),
                         contrast=ContrastConfig(enabled=True, warmup_steps=0))
    image, mask = batch["image"] + 0.5, torch.zeros(2, 32, 32, dtype=torch.long)
    x = torch.cat([image, batch["image"]]) if shared else image
    feats, dense = model.forward_dense(x)
    logits = model.classify(dense, (32, 32))
    segments = {"semi": slice(2, 4)} if shared else {}
    step = FinetuneStep(cfg, model, 0, 2, mask, 255, feats, dense, logits, {"semi": batch},
                        segments)
    get("semi").loss(None, step)
    if shared:  # the weak views' rows of the shared pass carry the pseudo-labels
        assert not step.views and step.targets["semi"].shape == (2, 32, 32)
        assert step.dense_views().dense is dense
    else:  # the strong views, K x B of them, with the mixed pseudo-labels on valid pixels
        view = step.views["semi"]
        assert view.dense.shape[0] == view.labels.shape[0] == view.logits.shape[0] == 4
        assert view.dense.requires_grad
        valid = torch.cat([torch.where(batch[f"box{k}"], batch["valid"].roll(1, 0),
                                       batch["valid"]) for k in (1, 2)])
        assert view.labels[~valid].eq(255).all() and view.labels[valid].lt(3).all()
        joined = step.dense_views()
        assert joined.dense.shape[0] == joined.labels.shape[0] == 6
        assert torch.equal(joined.labels[:2], mask) and torch.equal(joined.labels[2:],
                                                                    view.labels)
    aux = CrossImageAux(cfg.contrast, model.decoder.out_channels,
                        DatasetInfo(classes=["a", "b", "c"]))
    loss, _ = get("cross-image").loss(aux, step)
    assert torch.isfinite(loss)
