"""Cross-image pixel contrast as the auxiliary fine-tuning loss: schedule, memory, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from segcl.checkpoint import CheckpointConfig, read_weights, save_checkpoint
from segcl.config import ContrastConfig, DataConfig, FinetuneConfig
from segcl.data import DatasetInfo
from segcl.data.synthetic import make_synthetic_dataset
from segcl.engine.contrast_aux import CrossImageAux
from segcl.engine.finetune import finetune
from segcl.errors import CheckpointError
from segcl.models import create_model

INFO = DatasetInfo(classes=["a", "b", "c"], ignore_index=255)
CONFIG = CheckpointConfig.create({"encoder": "test_resnet", "decoder": "unet", "num_classes": 3},
                                 INFO, (0.5,) * 3, (0.25,) * 3, (32, 32))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense features (2, 8, 8, 8); masks (2, 32, 32) with classes 0 and 1 on the left/right
    halves of image 0, class 2 on image 1 with an ignored top band; random logits."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(2, 8, 8, 8, generator=g, requires_grad=True)
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[0, :, 16:] = 1
    mask[1] = 2
    mask[1, :8] = 255
    logits = torch.randn(2, 3, 32, 32, generator=g)
    return dense, mask, logits


def _aux(**kw) -> CrossImageAux:
    cfg = ContrastConfig(enabled=True, weight=0.1, max_views=5, max_samples=60, dim=16, **kw)
    torch.manual_seed(0)
    return CrossImageAux(cfg, in_channels=8, info=INFO)


def test_weight_is_exactly_zero_during_warmup_then_positive() -> None:
    aux = _aux(warmup_steps=3)
    dense, mask, logits = _batch()
    for step in range(3):
        loss = aux(dense, mask, logits, step)
        assert loss.dtype == torch.float32
        assert loss.item() == 0.0
    loss = aux(dense, mask, logits, 3)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in aux.head.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert dense.grad is not None and dense.grad.abs().sum() > 0


def test_weight_scales_the_loss() -> None:
    dense, mask, logits = _batch()
    small_aux, big_aux = _aux(), _aux()  # same initial head
    big_aux.cfg.weight = 1.0
    torch.manual_seed(1)  # same anchor sampling
    small = small_aux(dense, mask, logits, 0)
    torch.manual_seed(1)
    big = big_aux(dense, mask, logits, 0)
    assert big.item() == pytest.approx(10 * small.item(), rel=1e-5)


def test_memory_bank_fills_on_the_embedding_grid_during_warmup() -> None:
    aux = _aux(memory_bank=True, memory_size=20, warmup_steps=5)
    dense, mask, logits = _batch()
    assert aux(dense, mask, logits, 0).item() == 0.0
    memory = aux.memory
    assert memory is not None
    # labels nearest-downsampled to the 8x8 embedding grid: image 0 holds classes 0 and 1,
    # image 1 class 2 -> one region entry per (image, class), ten pixels each
    assert memory.region_count.tolist() == [1, 1, 1]
    assert memory.pixel_count.tolist() == [10, 10, 10]
    loss = aux(dense, mask, logits, 5)
    assert loss.item() > 0
    assert memory.region_count.tolist() == [2, 2, 2]


def test_loss_is_float32_under_autocast() -> None:
    aux = _aux()
    dense, mask, logits = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = aux(dense, mask, logits, 0)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item()) and loss.item() > 0


def test_state_round_trip_with_memory(tmp_path) -> None:
    aux = _aux(memory_bank=True, memory_size=20)
    dense, mask, logits = _batch()
    aux(dense, mask, logits, 0).backward()
    state = aux.state_for_checkpoint()
    assert state and all(k.startswith(("heads.contrast.", "heads.memory.")) for k in state)
    assert any(k.startswith("heads.memory.") for k in state)
    save_checkpoint(tmp_path / "last", state, CONFIG)
    fresh = _aux(memory_bank=True, memory_size=20)
    fresh.load_state(tmp_path / "last")
    for k, v in fresh.state_for_checkpoint().items():
        assert torch.equal(v, state[k]), k
    save_checkpoint(tmp_path / "plain", {"encoder.w": torch.zeros(1)}, CONFIG)
    with pytest.raises(CheckpointError, match=r"heads\.contrast"):
        fresh.load_state(tmp_path / "plain")


def test_finetune_exports_model_without_aux_head(tmp_path) -> None:
    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(48, 64))
    cfg = FinetuneConfig(
        data=DataConfig(root=str(data), image_size=(32, 48), workers=0),
        contrast=ContrastConfig(enabled=True, warmup_steps=1, memory_bank=True, memory_size=30,
                                max_views=5),
        encoder="test_resnet", out=str(tmp_path / "run"), steps=2, batch_size=2, log_every=1,
    )
    finetune(cfg)
    records = [r for r in _records(tmp_path / "run") if "contrast" in r]
    assert [r["contrast"] == 0.0 for r in records] == [True, False]
    best = read_weights(tmp_path / "run" / "best")
    last = read_weights(tmp_path / "run" / "last")
    assert not any(k.startswith("heads.") for k in best)
    assert any(k.startswith("heads.contrast.") for k in last)
    assert any(k.startswith("heads.memory.") for k in last)
    # what finetune --resume restores
    channels = create_model("test_resnet", "unet", 4).decoder.out_channels
    aux = CrossImageAux(cfg.contrast, channels, DatasetInfo(classes=list("abcd")))
    aux.load_state(tmp_path / "run" / "last")
    assert torch.equal(aux.memory.region_queue, last["heads.memory.region_queue"])


def _records(run) -> list[dict]:
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
