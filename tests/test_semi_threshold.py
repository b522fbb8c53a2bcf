"""--semi-threshold-mode adaptive: FreeMatch's self-adaptive class-wise thresholds."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from segcl.checkpoint import read_weights
from segcl.config import DataConfig, FinetuneConfig, SemiConfig
from segcl.engine.finetune import finetune
from segcl.engine.semi import (
    THRESHOLDS_PREFIX,
    ClassThresholds,
    PseudoLabels,
    pseudo_labels,
    unlabeled_loss,
)
from segcl.errors import CheckpointError, ConfigError
from tests.conftest import StopAt, run_cli


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Logits (1, C, 1, N) whose softmax at pixel n is ``probs[n]``."""
    return torch.tensor(probs).log().T[None, :, None, :]


def test_update_and_thresholds_match_hand_computed_values() -> None:
    th = ClassThresholds(num_classes=2, momentum=0.5, cap=0.95)
    assert th.global_confidence.item() == 0.5  # 1/C
    assert th.class_probability.tolist() == [0.5, 0.5]
    logits = _logits([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    valid = torch.tensor([[[True, True, False]]])  # the third pixel is padding
    th.update(logits, valid)
    # mean max-prob over the valid pixels: (0.9 + 0.6) / 2 = 0.75; class means 0.75, 0.25
    assert th.global_confidence.item() == pytest.approx(0.5 * 0.5 + 0.5 * 0.75)  # 0.625
    assert th.class_probability.tolist() == pytest.approx([0.625, 0.375])
    assert th.thresholds().tolist() == pytest.approx([0.625, 0.375 / 0.625 * 0.625])
    th.update(logits, valid)
    assert th.global_confidence.item() == pytest.approx(0.6875)
    assert th.class_probability.tolist() == pytest.approx([0.6875, 0.3125])
    thresholds = th.thresholds()
    assert thresholds.tolist() == pytest.approx([0.6875, 0.3125])
    logs = th.logs(thresholds)
    assert logs["threshold_mean"].item() == pytest.approx(0.5)
    assert logs["threshold_global"].item() == pytest.approx(0.6875)
    # each pixel is compared with its pseudo-class's threshold: 0.9 >= 0.6875 (class 0) kept,
    # 0.6 < 0.6875 (class 0) not, the padding pixel never
    target = pseudo_labels(logits, valid)
    assert target.kept(thresholds).tolist() == [[[True, False, False]]]
    # a batch without a valid pixel leaves the statistics as they are
    before = {k: v.clone() for k, v in th.state_dict().items()}
    th.update(logits, torch.zeros_like(valid))
    assert all(torch.equal(before[k], v) for k, v in th.state_dict().items())


def test_thresholds_are_capped_at_the_fixed_threshold() -> None:
    th = ClassThresholds(num_classes=2, momentum=0.0, cap=0.95)  # momentum 0: the last batch
    logits = _logits([[0.99, 0.01], [0.98, 0.02], [0.01, 0.99]])
    th.update(logits, torch.ones(1, 1, 3, dtype=torch.bool))
    assert th.global_confidence.item() == pytest.approx((0.99 + 0.98 + 0.99) / 3)
    thresholds = th.thresholds()
    assert thresholds[0].item() == pytest.approx(0.95)  # p~ ratio 1, tau_t 0.9867 > the cap
    assert thresholds[1].item() == pytest.approx((0.02 + 0.99 + 0.01) / (0.99 + 0.98 + 0.01)
                                                 * 0.98667, rel=1e-4)


def test_rare_classes_get_lower_thresholds_that_rise_as_the_model_learns() -> None:
    gen = torch.Generator().manual_seed(0)
    th = ClassThresholds(num_classes=3, momentum=0.9, cap=0.95)
    # class 0 is predicted on most pixels, class 1 on some, class 2 (a thin class) on few
    labels = torch.tensor([0] * 70 + [1] * 25 + [2] * 5)
    valid = torch.ones(1, 1, 100, dtype=torch.bool)
    seen = []
    for sharpness in (1.0, 2.0, 3.0, 4.0, 5.0):  # the model grows more confident
        logits = torch.randn(1, 3, 1, 100, generator=gen) * 0.3
        logits[0, labels, 0, torch.arange(100)] += sharpness
        for _ in range(5):
            th.update(logits, valid)
        seen.append(th.global_confidence.item())
    thresholds = th.thresholds()
    assert thresholds[2] < thresholds[1] < thresholds[0]
    assert thresholds[0].item() == pytest.approx(th.global_confidence.item())  # the most frequent
    assert all(a < b for a, b in itertools.pairwise(seen))  # annealed: it rises
    assert seen[0] > 1 / 3
    # a thin-class pixel of confidence q with tau(2) <= q < tau(0) counts only in adaptive mode
    q = float((thresholds[2] + thresholds[0]) / 2)
    target = PseudoLabels(torch.tensor([2, 0]), torch.tensor([q, q]), torch.ones(2, dtype=bool))
    assert target.kept(thresholds).tolist() == [True, False]


def _views(n: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    from segcl.data.transforms import WeakStrongTransform

    t = WeakStrongTransform((size, size), scale=(1.0, 1.0), strong_views=1, cutmix=1.0)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    items = [dict(zip(t.keys, t(image, None, np.random.default_rng(i)), strict=True))
             for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in t.keys}


def test_fixed_mode_adds_no_module_and_keeps_its_loss() -> None:
    from segcl.data import DatasetInfo
    from segcl.methods.base import FinetuneStep
    from segcl.methods.semi import Semi
    from segcl.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", "unet", num_classes=3).train()
    info = DatasetInfo(classes=["a", "b", "c"])
    fixed = FinetuneConfig(semi=SemiConfig(enabled=True, strong_views=1, threshold=0.4))
    assert fixed.semi.threshold_mode == "fixed" and fixed.semi.threshold_momentum == 0.999
    assert Semi().module(fixed, model, info) is None
    assert Semi().state_for_checkpoint(None) == {}
    batch = _views()

    def run(cfg: FinetuneConfig, module: ClassThresholds | None) -> tuple:
        torch.manual_seed(1)  # the feature-perturbation dropout
        step = FinetuneStep(cfg, model, 0, 0, torch.zeros(0, 32, 32, dtype=torch.long), 255,
                            [], torch.zeros(0), torch.zeros(0), {"semi": batch})
        return Semi().loss(module, step)

    loss, terms = run(fixed, None)
    assert set(terms) == {"loss_u", "loss_u_strong", "confident", "loss_u_fp"}
    # the same as the loss functions with the one threshold
    torch.manual_seed(1)
    with torch.no_grad():
        from segcl.engine.semi import running_stats_frozen

        with running_stats_frozen(model, True):
            feats, dense = model.forward_dense(batch["image"])
            logits = model.classify(dense, (32, 32))
    reference, ref_terms, _, _ = unlabeled_loss(model, feats, logits, batch, fixed.semi)
    assert loss.item() == pytest.approx(reference.item())
    assert terms["confident"] == ref_terms["confident"]

    adaptive_cfg = FinetuneConfig(semi=SemiConfig(enabled=True, strong_views=1, threshold=0.4,
                                                  threshold_mode="adaptive"))
    module = Semi().module(adaptive_cfg, model, info)
    assert isinstance(module, ClassThresholds) and module.cap == 0.4
    _, adaptive_terms = run(adaptive_cfg, module)
    assert {"threshold_mean", "threshold_global"} <= set(adaptive_terms)
    assert adaptive_terms["threshold_global"].item() == pytest.approx(
        0.999 / 3 + 0.001 * logits.softmax(1).amax(1).mean().item(), rel=1e-5)
    # early on (tau_t near 1/C) adaptive mode keeps at least what the fixed threshold keeps
    assert adaptive_terms["confident"] >= terms["confident"]


def test_threshold_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"--semi-threshold-momentum must be a number in \[0, "):
        SemiConfig(threshold_momentum=1.0)
    with pytest.raises(ConfigError, match="--semi-threshold-momentum"):
        SemiConfig(threshold_momentum=-0.1)
    with pytest.raises(ConfigError, match="--semi-threshold-mode must be one of fixed, adaptive"):
        SemiConfig(threshold_mode="freematch")
    assert SemiConfig(threshold_mode="adaptive", threshold_momentum=0.0).threshold_momentum == 0


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_adaptive_finetune_logs_its_thresholds_and_resumes_bit_exact(synthetic_data,
                                                                      tmp_path) -> None:
    def config(out: str) -> FinetuneConfig:
        return FinetuneConfig(
            data=DataConfig(root=str(synthetic_data), image_size=(48, 64), labeled_count=4,
                            workers=0),
            semi=SemiConfig(enabled=True, strong_views=1, batch_size=2, threshold_mode="adaptive",
                            threshold_momentum=0.9, feature_perturbation=False),
            encoder="test_resnet", out=out, steps=8, batch_size=2, log_every=1, seed=3)

    full = finetune(config(str(tmp_path / "full")))
    assert full["steps"] == 8
    records = [r for r in _records(tmp_path / "full") if "loss_u" in r]
    assert len(records) == 8
    taus = [r["threshold_global"] for r in records]
    # tau_1 = 0.9 / C + 0.1 * (a mean confidence in [1/C, 1]); the synthetic data has 4 classes
    assert 0.25 <= taus[0] <= 0.25 + 0.1 * 0.75 + 1e-6
    assert all(0 < r["threshold_mean"] <= r["threshold_global"] + 1e-6 for r in records)
    assert all(0 <= r["confident"] <= 1 for r in records)
    last = read_weights(tmp_path / "full" / "last")
    saved = {k for k in last if k.startswith(THRESHOLDS_PREFIX)}
    assert saved == {THRESHOLDS_PREFIX + "global_confidence",
                     THRESHOLDS_PREFIX + "class_probability"}
    assert last[THRESHOLDS_PREFIX + "global_confidence"].item() == pytest.approx(taus[-1],
                                                                                abs=1e-5)
    assert math.isclose(last[THRESHOLDS_PREFIX + "class_probability"].sum().item(), 1.0,
                        rel_tol=1e-5)
    assert not any(k.startswith("heads.") for k in read_weights(tmp_path / "full" / "best"))
    restored = ClassThresholds(4)
    restored.load_state(tmp_path / "full" / "last")
    assert restored.global_confidence.item() == last[THRESHOLDS_PREFIX + "global_confidence"]
    with pytest.raises(CheckpointError, match="--semi-threshold-mode adaptive"):
        restored.load_state(tmp_path / "full" / "best")  # the export carries no statistics

    killed = config(str(tmp_path / "killed"))
    with pytest.raises(KeyboardInterrupt):
        finetune(killed, StopAt(5))  # the last checkpoint is the end of epoch 2 (step 4)
    finetune(killed, resume=True)
    again = read_weights(tmp_path / "killed" / "last")
    assert last.keys() == again.keys()
    assert all(torch.equal(last[k], again[k]) for k in last)
    resumed = [r for r in _records(tmp_path / "killed") if "loss_u" in r]
    assert [r["threshold_global"] for r in resumed] == taus


def test_semi_adaptive_arm_runs_from_the_command_line(synthetic_data, tmp_path) -> None:
    out = tmp_path / "adaptive"
    proc = run_cli("finetune", str(synthetic_data), "--encoder", "test_resnet", "--image-size",
                   "48x64", "--labeled-count", "4", "--steps", "3", "--batch-size", "2",
                   "--workers", "0", "--semi", "--semi-views", "1", "--unlabeled-batch-size", "2",
                   "--ema", "0.99", "--semi-teacher", "ema", "--no-semi-fp",
                   "--semi-threshold-mode", "adaptive", "--semi-threshold-momentum", "0.5",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    semi = [r for r in _records(out) if "loss_u" in r]
    assert semi and all(0 < r["threshold_mean"] <= r["threshold_global"] <= 0.95 for r in semi)
    saved = (out / "config.yaml").read_text()
    assert "threshold_mode: adaptive" in saved and "threshold_momentum: 0.5" in saved


def _shared_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    th = ClassThresholds(num_classes=2, momentum=0.5)
    halves = (_logits([[0.9, 0.1], [0.6, 0.4]]), _logits([[0.2, 0.8], [0.3, 0.7]]))
    valid = (torch.tensor([[[True, True]]]), torch.tensor([[[True, False]]]))
    th.update(halves[rank], valid[rank])
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"global": th.global_confidence.item(),
                   "class": th.class_probability.tolist()}, f)
    dist.destroy_process_group()


def test_statistics_are_summed_over_processes(tmp_path) -> None:
    """Two processes with different weak views end with the same statistics: those of one
    process that saw the valid pixels of both."""
    import torch.multiprocessing as mp

    mp.spawn(_shared_worker, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # valid pixels: (0.9, 0.1), (0.6, 0.4) on rank 0 and (0.2, 0.8) on rank 1
    assert ranks[0] == ranks[1]
    assert ranks[0]["global"] == pytest.approx(0.5 * 0.5 + 0.5 * (0.9 + 0.6 + 0.8) / 3)
    assert ranks[0]["class"] == pytest.approx([0.5 * 0.5 + 0.5 * (0.9 + 0.6 + 0.2) / 3,
                                               0.5 * 0.5 + 0.5 * (0.1 + 0.4 + 0.8) / 3])
