"""Tests for segcl.metrics: confusion counts -> IoU / F1 / precision / recall / accuracy."""

from __future__ import annotations

import json
import os
import socket
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from segcl.metrics import ConfusionMatrix, compute_metrics

# Rows = ground truth, columns = prediction.
HAND = np.array(
    [
        [3, 1, 0],
        [1, 2, 1],
        [0, 0, 2],
    ],
    dtype=np.int64,
)
# tp = (3, 2, 2); fp = column sums - tp = (1, 1, 1); fn = row sums - tp = (1, 2, 0)
HAND_IOU = [Fraction(3, 5), Fraction(2, 5), Fraction(2, 3)]
HAND_F1 = [Fraction(3, 4), Fraction(4, 7), Fraction(4, 5)]
HAND_PRECISION = [Fraction(3, 4), Fraction(2, 3), Fraction(2, 3)]
HAND_RECALL = [Fraction(3, 4), Fraction(1, 2), Fraction(1, 1)]


def labels_from_matrix(matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Expand a confusion matrix into (pred, target) pixel vectors that reproduce it."""
    preds, targets = [], []
    for gt in range(matrix.shape[0]):
        for pr in range(matrix.shape[1]):
            preds += [pr] * int(matrix[gt, pr])
            targets += [gt] * int(matrix[gt, pr])
    return torch.tensor(preds), torch.tensor(targets)


def brute_force(pred: np.ndarray, target: np.ndarray, c: int, ignore: int) -> dict[str, list]:
    """Straightforward per-class metrics from boolean masks (the reference implementation)."""
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    out: dict[str, list] = {"iou": [], "f1": [], "precision": [], "recall": []}
    for k in range(c):
        p, t = pred == k, target == k
        inter = np.logical_and(p, t).sum()
        union = np.logical_or(p, t).sum()
        out["iou"].append(inter / union if union else None)
        out["f1"].append(2 * inter / (p.sum() + t.sum()) if union else None)
        out["precision"].append(inter / p.sum() if p.sum() else None)
        out["recall"].append(inter / t.sum() if t.sum() else None)
    return out


def assert_close_lists(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
        else:
            assert a == pytest.approx(float(e), abs=1e-12)


def test_hand_computed_matrix() -> None:
    m = compute_metrics(HAND)
    assert_close_lists(m["iou"], HAND_IOU)
    assert_close_lists(m["f1"], HAND_F1)
    assert_close_lists(m["precision"], HAND_PRECISION)
    assert_close_lists(m["recall"], HAND_RECALL)
    assert m["miou"] == pytest.approx(float(sum(HAND_IOU) / 3))
    assert m["miou"] == pytest.approx(5 / 9)
    assert m["mean_f1"] == pytest.approx(float(sum(HAND_F1) / 3))
    assert m["mean_dice"] == m["mean_f1"]
    assert m["mean_precision"] == pytest.approx(float(sum(HAND_PRECISION) / 3))
    assert m["mean_recall"] == pytest.approx(float(sum(HAND_RECALL) / 3))
    assert m["mean_accuracy"] == m["mean_recall"]
    assert m["pixel_accuracy"] == pytest.approx(0.7)
    assert m["num_pixels"] == 10
    assert m["confusion_matrix"] == HAND.tolist()


def test_confusion_matrix_update_reproduces_hand_matrix() -> None:
    pred, target = labels_from_matrix(HAND)
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, target)
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == HAND.tolist()
    assert cm.compute()["miou"] == pytest.approx(5 / 9)


def test_result_is_json_serialisable_without_nan() -> None:
    cm = ConfusionMatrix(num_classes=4)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))  # classes 2, 3 absent
    text = json.dumps(cm.compute(), allow_nan=False)
    back = json.loads(text)
    assert back["iou"][2] is None and back["iou"][3] is None
    for key in ("iou", "f1", "precision", "recall"):
        for value in back[key]:
            assert value is None or isinstance(value, float)


def test_ignore_index_and_out_of_range_targets_are_skipped() -> None:
    target = torch.tensor([[0, 1, 255], [2, 255, 7]])
    pred = torch.tensor([[0, 1, 2], [2, 0, 1]])
    cm = ConfusionMatrix(num_classes=3, ignore_index=255)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    m = cm.compute()
    assert m["num_pixels"] == 3
    assert m["miou"] == 1.0
    assert m["pixel_accuracy"] == 1.0


def test_custom_ignore_index_counts_255_is_not_special() -> None:
    # CamVid style: 11 classes, void = 11.
    cm = ConfusionMatrix(num_classes=11, ignore_index=11)
    cm.update(torch.tensor([3, 3, 4]), torch.tensor([3, 11, 4]))
    assert int(cm.matrix.sum()) == 2
    assert cm.compute()["pixel_accuracy"] == 1.0


def test_absent_class_excluded_from_mean_but_false_positive_class_counts() -> None:
    # 4 classes; class 3 never appears (neither truth nor prediction) -> excluded.
    # class 2 is predicted but absent from the truth -> IoU 0, precision 0, recall undefined.
    target = torch.tensor([0, 0, 1, 1, 1])
    pred = torch.tensor([0, 0, 1, 1, 2])
    m = compute_metrics(np.array([[2, 0, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, target)
    assert cm.compute() == m
    assert m["iou"] == [1.0, pytest.approx(2 / 3), 0.0, None]
    assert m["precision"] == [1.0, 1.0, 0.0, None]
    assert m["recall"] == [1.0, pytest.approx(2 / 3), None, None]
    assert m["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["mean_recall"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["mean_precision"] == pytest.approx(2 / 3)


def test_empty_matrix_has_no_defined_scores() -> None:
    m = ConfusionMatrix(num_classes=2).compute()
    assert m["miou"] is None and m["pixel_accuracy"] is None and m["mean_f1"] is None
    assert m["iou"] == [None, None]
    assert m["num_pixels"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_brute_force_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c, ignore = 6, 255
    target = rng.integers(0, c - 1, size=(3, 17, 23))  # class c-1 never in the truth
    target[rng.random(target.shape) < 0.1] = ignore
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, c, target.shape))
    pred[pred == ignore] = 0
    cm = ConfusionMatrix(num_classes=c, ignore_index=ignore)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    got = cm.compute()
    ref = brute_force(pred, target, c, ignore)
    for key in ("iou", "f1", "precision", "recall"):
        assert_close_lists(got[key], ref[key])
    keep = target != ignore
    assert got["pixel_accuracy"] == pytest.approx(float((pred[keep] == target[keep]).mean()))
    assert got["miou"] == pytest.approx(float(np.mean([v for v in ref["iou"] if v is not None])))
    assert got["num_pixels"] == int(keep.sum())


def test_several_batches_equal_one_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (8, 16, 16), generator=gen)
    target[:, :2] = 255
    pred = torch.randint(0, 5, (8, 16, 16), generator=gen)
    whole = ConfusionMatrix(num_classes=5)
    whole.update(pred, target)
    parts = ConfusionMatrix(num_classes=5)
    for i in range(0, 8, 3):
        parts.update(pred[i : i + 3], target[i : i + 3])
    assert torch.equal(whole.matrix, parts.matrix)
    assert whole.compute() == parts.compute()


def test_merge_sums_counts_and_checks_classes() -> None:
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    b.update(torch.tensor([2, 2]), torch.tensor([2, 1]))
    both = ConfusionMatrix(3)
    both.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 2, 1]))
    a.merge(b)
    assert torch.equal(a.matrix, both.matrix)
    a.merge(ConfusionMatrix(3))  # empty: no change
    assert torch.equal(a.matrix, both.matrix)
    with pytest.raises(ValueError, match="4-class"):
        a.merge(ConfusionMatrix(4))


def test_reset_clears_counts() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_all_reduce_is_a_noop_without_distributed() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _all_reduce_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([rank]), torch.tensor([rank]))
        cm.all_reduce()
        assert cm.matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32",
    reason="needs torch.distributed with the gloo backend and fork",
)
def test_all_reduce_sums_over_two_gloo_ranks() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.start_processes(
        _all_reduce_worker, args=(2, port), nprocs=2, join=True, start_method="fork"
    )


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.tensor([0, 1]), torch.tensor([0, 1, 1]), "shapes differ"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer"),
        (torch.tensor([0, 3]), torch.tensor([0, 1]), "outside"),
        (torch.tensor([0, -1]), torch.tensor([0, 1]), "outside"),
    ],
)
def test_update_rejects_bad_input(pred: torch.Tensor, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConfusionMatrix(3).update(pred, target)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3)), np.zeros(3), np.array([[1, -1], [0, 0]]), np.full((2, 2), np.nan)]
)
def test_compute_metrics_rejects_bad_matrix(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        compute_metrics(bad)


def test_accepts_uint8_and_int32_inputs() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2], dtype=torch.int32), torch.tensor([0, 255], dtype=torch.uint8))
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_update_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (2, 32, 32), generator=gen)
    pred = torch.randint(0, 4, (2, 32, 32), generator=gen)
    cpu = ConfusionMatrix(4)
    cpu.update(pred, target)
    gpu = ConfusionMatrix(4)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)
    pinned = ConfusionMatrix(4, device="cpu")
    pinned.update(pred.cuda(), target.cuda())
    assert pinned.matrix.device.type == "cpu"
    assert torch.equal(pinned.matrix, cpu.matrix)
