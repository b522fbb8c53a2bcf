"""The moving average of the weights (--ema) and the mean teacher of --semi (--semi-teacher ema)."""

from __future__ import annotations

import json

import pytest
import torch

from segcl.checkpoint import read_training_state, read_weights
from segcl.config import DataConfig, FinetuneConfig, SemiConfig
from segcl.engine.ema import WeightAverage
from segcl.engine.finetune import TRAINED, finetune
from segcl.errors import CheckpointError, ConfigError
from tests.conftest import StopAt, run_cli


def test_average_starts_as_a_copy_and_warms_up_its_decay() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.99)
    assert avg.decay_at(1) == 0.0
    assert avg.decay_at(100) == pytest.approx(1 - 100 ** (-2 / 3))
    assert avg.decay_at(10_000) == 0.99  # capped at --ema
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(model, 1)  # d_1 = 0: a copy
    assert torch.equal(avg.module.weight, model.weight)
    with torch.no_grad():
        model.weight.copy_(before)
    avg.update(model, 2)  # d_2 = 1 - 2^(-2/3)
    d = 1 - 2 ** (-2 / 3)
    expected = d * (before + 1.0) + (1 - d) * before
    assert torch.allclose(avg.module.weight, expected)
    assert not avg.module.training and not avg.module.weight.requires_grad


def test_ema_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="--ema must be a number in \\[0, 1\\)"):
        FinetuneConfig(ema=1.0)
    with pytest.raises(ConfigError, match="--semi-teacher ema needs --ema"):
        FinetuneConfig(semi=SemiConfig(enabled=True, teacher="ema"))
    with pytest.raises(ConfigError, match="--semi-teacher must be one of student, ema"):
        SemiConfig(teacher="teacher")


def _config(data, out: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        data=DataConfig(root=str(data), image_size=(48, 64), labeled_count=4, workers=0),
        encoder="test_resnet", out=out, steps=8, batch_size=2, log_every=1, seed=5, ema=0.9,
        **kw)


def test_ema_run_exports_the_average_and_resumes_bit_exact(synthetic_data, tmp_path) -> None:
    full = finetune(_config(synthetic_data, str(tmp_path / "full")))
    assert full["steps"] == 8
    last = tmp_path / "full" / "last"
    exported = read_weights(last)
    tensors, _ = read_training_state(last)
    trained = {k[len(TRAINED):]: v for k, v in tensors.items() if k.startswith(TRAINED)}
    assert trained.keys() == exported.keys()
    # the export is the average, not the trained weights; both are kept
    key = next(k for k in exported if k.endswith("weight") and exported[k].dtype.is_floating_point)
    assert not torch.equal(exported[key], trained[key])
    best = json.loads((tmp_path / "full" / "best" / "config.json").read_text())
    assert best["metrics"]["val"]["miou"] == pytest.approx(full["best_miou"])

    killed = _config(synthetic_data, str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        finetune(killed, StopAt(5))
    finetune(killed, resume=True)
    again = read_weights(tmp_path / "killed" / "last")
    assert all(torch.equal(exported[k], again[k]) for k in exported)
    again_trained, _ = read_training_state(tmp_path / "killed" / "last")
    assert all(torch.equal(tensors[k], again_trained[k]) for k in tensors if k.startswith(TRAINED))


def test_resuming_with_ema_needs_a_run_that_had_it(synthetic_data, tmp_path) -> None:
    cfg = _config(synthetic_data, str(tmp_path / "plain"))
    plain = FinetuneConfig(**{**cfg.__dict__, "ema": None, "steps": 2})
    finetune(plain)
    with pytest.raises(CheckpointError, match="saved without --ema"):
        finetune(FinetuneConfig(**{**cfg.__dict__, "steps": 4}), resume=True)


def test_mean_teacher_gives_the_pseudo_labels(synthetic_data, tmp_path) -> None:
    out = tmp_path / "teacher"
    proc = run_cli("finetune", str(synthetic_data), "--encoder", "test_resnet", "--image-size",
                   "48x64", "--labeled-count", "4", "--steps", "4", "--batch-size", "2",
                   "--workers", "0", "--semi", "--semi-views", "1", "--semi-threshold", "0",
                   "--unlabeled-batch-size", "2", "--ema", "0.9", "--semi-teacher", "ema",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    semi = [r for r in records if "loss_u" in r]
    assert semi and all(r["confident"] == 1.0 and r["loss_u"] > 0 for r in semi)
    saved = (out / "config.yaml").read_text()
    assert "teacher: ema" in saved and "ema: 0.9" in saved


class _Constant(torch.nn.Module):
    """A teacher that predicts ``label`` everywhere, confidently."""

    def __init__(self, label: int, classes: int) -> None:
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.classes, *x.shape[-2:])
        logits[:, self.label] = 10.0
        return logits


def test_the_teacher_not_the_student_labels_the_weak_views() -> None:
    import numpy as np

    from segcl.data.transforms import WeakStrongTransform
    from segcl.methods.base import FinetuneStep
    from segcl.methods.semi import Semi
    from segcl.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", "unet", num_classes=3).train()
    t = WeakStrongTransform((32, 32), scale=(1.0, 1.0), strong_views=1)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    items = [dict(zip(t.keys, t(image, None, np.random.default_rng(i)), strict=True))
             for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) for k in t.keys}
    cfg = FinetuneConfig(semi=SemiConfig(enabled=True, strong_views=1, threshold=0.9,
                                         shared_forward=True, teacher="ema"), ema=0.99)
    feats, dense = model.forward_dense(batch["image"])
    logits = model.classify(dense, (32, 32))
    step = FinetuneStep(cfg, model, 0, 0, torch.zeros(0, 32, 32, dtype=torch.long), 255, feats,
                        dense, logits, {"semi": batch}, {"semi": slice(0, 2)},
                        teacher=_Constant(2, 3))
    loss, terms = Semi().loss(None, step)
    assert loss.requires_grad and terms["confident"] == 1.0
    assert torch.equal(step.targets["semi"], torch.full((2, 32, 32), 2))
