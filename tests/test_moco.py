"""Momentum contrast (``segcl pretrain --method moco``): the queue InfoNCE against a direct
computation, the key queue's first-in first-out order, the key branch's moving average, keys
normalised in shuffled groups, and a short run from the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segcl import methods
from segcl.config import PretrainConfig
from segcl.engine.pretrain import build_net
from segcl.losses import KeyQueue, queue_info_nce
from segcl.models import ModelConfig
from tests.conftest import run_cli


def test_queue_info_nce_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, neg = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), \
        torch.randn(7, 8, generator=g)
    tau = 0.2
    expected = 0.0
    for i in range(5):
        qi, ki = F.normalize(q[i], dim=0), F.normalize(k[i], dim=0)
        pos = math.exp(float(qi @ ki) / tau)
        negs = sum(math.exp(float(qi @ F.normalize(n, dim=0)) / tau) for n in neg)
        expected += -math.log(pos / (pos + negs)) / 5
    assert queue_info_nce(q, k, neg, tau).item() == pytest.approx(expected, rel=1e-5)
    # no negatives (an empty queue): -log 1 = 0
    assert queue_info_nce(q, k, neg[:0], tau).item() == pytest.approx(0.0, abs=1e-6)


def test_queue_info_nce_trains_the_queries_only() -> None:
    q, k = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    queue_info_nce(q, k, torch.randn(6, 8)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None
    with pytest.raises(ValueError, match="q, k"):
        queue_info_nce(q, k[:3], torch.randn(6, 8))


def test_key_queue_is_first_in_first_out() -> None:
    queue = KeyQueue(5, 2)
    assert queue.negatives().shape == (0, 2)
    keys = F.normalize(torch.arange(1.0, 17.0).reshape(8, 2), dim=1)
    queue.push(keys[:3])
    before = queue.negatives()
    assert torch.allclose(before, keys[:3]) and int(queue.filled) == 3
    queue.push(keys[3:7])  # wraps: the two oldest are overwritten
    assert torch.allclose(before, keys[:3])  # an earlier copy is unaffected
    assert int(queue.filled) == 5 and int(queue.ptr) == 2
    assert torch.allclose(queue.negatives(), torch.cat([keys[5:7], keys[2:5]]))
    queue.push(torch.cat([keys, keys]))  # more keys than room: the last 5 stay
    assert {tuple(r.tolist()) for r in queue.negatives()} == \
        {tuple(r.tolist()) for r in keys[3:8]}
    assert set(queue.state_dict()) == {"keys", "ptr", "filled"}


def _net(momentum: float = 0.9, queue: int = 16):
    cfg = PretrainConfig(method="moco", encoder="test_resnet", queue_size=queue,
                         key_momentum=momentum)
    torch.manual_seed(0)
    net = build_net(cfg, ModelConfig(encoder="test_resnet", num_classes=0), ["global"], 255,
                    gather=False)
    return net


def _views(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"view1": torch.randn(n, 3, 32, 48, generator=g),
            "view2": torch.randn(n, 3, 32, 48, generator=g)}


def test_key_branch_follows_the_query_branch_as_a_moving_average() -> None:
    net = _net(momentum=0.9)
    head = net.heads["global"]
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert not any(id(p) in trainable for p in head.key_encoder.parameters())
    assert not any(id(p) in trainable for p in head.key_head.parameters())
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    net.train()
    loss, _ = net(_views())
    assert int(head.queue.filled) == 6  # both views' keys entered the queue
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # first step: no negatives yet
    loss, _ = net(_views(seed=1))
    assert loss.item() > 0 and int(head.queue.filled) == 12
    key_before = [p.clone() for p in head.key_encoder.parameters()]
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in head.key_encoder.parameters())
    optimizer.step()
    net(_views(seed=2))  # a step starts by moving the key branch towards the query branch
    for pk, before, pq in zip(head.key_encoder.parameters(), key_before,
                              net.encoder.parameters(), strict=True):
        assert torch.allclose(pk, 0.9 * before + 0.1 * pq, atol=1e-6)


def test_keys_use_shuffled_batch_normalisation() -> None:
    """Keys are normalised in random groups of the batch (MoCo's shuffling BN), returned in
    the input order: not with the statistics of the whole batch, which the queries use."""
    from segcl.methods.moco import KEY_BN_SPLITS

    net = _net()
    net.train()
    head = net.heads["global"]
    x = _views(4)["view1"]
    torch.manual_seed(3)
    keys = head.keys(x)
    torch.manual_seed(3)
    order = torch.randperm(4)
    expected = torch.empty_like(keys)
    with torch.no_grad():
        for rows in order.chunk(KEY_BN_SPLITS):
            expected[rows] = head.key_head(head.key_encoder(x[rows])[-1])
        whole = head.key_head(head.key_encoder(x)[-1])
    assert torch.allclose(keys, expected, atol=1e-5)
    assert not torch.allclose(keys, whole, atol=1e-3)
    assert head.key_encoder.training  # batch statistics, not running ones
    assert head.keys(x[:2]).shape == (2, keys.shape[1])  # two rows: one group of two


def test_moco_pretrains_from_the_command_line(synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "moco"
    run_cli("pretrain", str(synthetic_data), "--method", "moco", "--encoder", "test_resnet",
            "--image-size", "48x64", "--steps", "6", "--batch-size", "4", "--queue-size", "8",
            "--workers", "0", "--out", str(out), "--quiet", check=True)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6 and np.isfinite(records[-1]["global"])
    from segcl.checkpoint import read_weights

    weights = read_weights(out / "last")
    assert int(weights["heads.global.queue.filled"]) == 8
    assert any(k.startswith("heads.global.key_encoder.") for k in weights)
    assert methods.get("moco").terms(PretrainConfig(method="moco")) == ["global"]
    bad = run_cli("pretrain", str(synthetic_data), "--method", "moco", "--key-momentum", "1",
                  "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("Error:")
    assert "--key-momentum" in bad.stderr
