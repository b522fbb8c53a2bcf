"""Segmentation metrics computed from one confusion matrix.

Every score is derived from per-class true-positive, false-positive and false-negative counts,
which are read off a ``(C, C)`` confusion matrix (rows = ground truth, columns = prediction):

* ``tp_c = M[c, c]``, ``fp_c = sum_k M[k, c] - tp_c``, ``fn_c = sum_k M[c, k] - tp_c``
* IoU ``= tp / (tp + fp + fn)``; F1 = Dice ``= 2 tp / (2 tp + fp + fn)``
* precision ``= tp / (tp + fp)``; recall ``= tp / (tp + fn)`` (per-class accuracy)

A score whose denominator is zero is undefined and reported as ``None`` (never NaN), and class
means are taken over the classes where the score is defined. A class that appears neither in the
ground truth nor in the prediction therefore does not pull the mean IoU down, while a class that
is predicted but absent from the ground truth counts with IoU 0.

:class:`ConfusionMatrix` accumulates the counts batch by batch (on any device, summed across
distributed ranks with :meth:`ConfusionMatrix.all_reduce`); :func:`compute_metrics` is the pure
function that turns counts into a JSON-serialisable dictionary.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ConfusionMatrix", "compute_metrics"]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with NaN where ``den == 0``."""
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _to_list(values: np.ndarray) -> list[float | None]:
    """Convert a float array to a list of Python floats with NaN replaced by ``None``."""
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def _nanmean(values: np.ndarray) -> float | None:
    """Mean over the non-NaN entries, ``None`` when there is none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def compute_metrics(matrix: np.ndarray | Tensor) -> dict[str, Any]:
    """Compute segmentation metrics from a confusion matrix.

    Args:
        matrix: ``(C, C)`` non-negative counts, rows = ground truth, columns = prediction.

    Returns:
        A JSON-serialisable dictionary of plain Python values:

        * ``"iou"``, ``"f1"``, ``"precision"``, ``"recall"``: per-class lists of length ``C``,
          ``None`` where the score is undefined (IoU and F1 when ``tp + fp + fn == 0``, precision
          when ``tp + fp == 0``, recall when ``tp + fn == 0``);
        * ``"miou"``, ``"mean_f1"``, ``"mean_dice"`` (same as ``mean_f1``), ``"mean_precision"``,
          ``"mean_recall"``: means over the classes where the score is defined (``None`` if none);
        * ``"pixel_accuracy"``: ``trace / total``; ``"mean_accuracy"``: the mean recall;
        * ``"confusion_matrix"``: the counts as a list of lists of ints; ``"num_pixels"``: total.

    Raises:
        ValueError: if ``matrix`` is not a square 2-D array of non-negative counts.
    """
    if isinstance(matrix, Tensor):
        matrix = matrix.detach().cpu().numpy()
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square (C, C) with C >= 1, got {m.shape}")
    if np.issubdtype(m.dtype, np.floating) and not np.isfinite(m).all():
        raise ValueError("confusion matrix contains NaN or infinite values")
    if (m < 0).any():
        raise ValueError("confusion matrix contains negative counts")
    counts = m.astype(np.float64)

    tp = np.diag(counts)
    fp = counts.sum(axis=0) - tp
    fn = counts.sum(axis=1) - tp
    total = counts.sum()

    iou = _safe_div(tp, tp + fp + fn)
    f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    mean_f1 = _nanmean(f1)
    mean_recall = _nanmean(recall)

    as_ints = m.astype(np.int64) if np.issubdtype(m.dtype, np.integer) else np.rint(m)
    return {
        "iou": _to_list(iou),
        "f1": _to_list(f1),
        "precision": _to_list(precision),
        "recall": _to_list(recall),
        "miou": _nanmean(iou),
        "mean_f1": mean_f1,
        "mean_dice": mean_f1,
        "mean_precision": _nanmean(precision),
        "mean_recall": mean_recall,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "mean_accuracy": mean_recall,
        "confusion_matrix": [[int(v) for v in row] for row in as_ints.tolist()],
        "num_pixels": int(as_ints.sum()),
    }


class ConfusionMatrix:
    """Accumulates a ``(C, C)`` int64 confusion matrix (rows = ground truth, cols = prediction).

    Args:
        num_classes: number of classes ``C``.
        ignore_index: target value whose pixels are skipped (255 by default, 11 for CamVid).
        device: where the matrix lives; ``None`` means the device of the first ``update``.

    Example:
        >>> cm = ConfusionMatrix(num_classes=3)
        >>> cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
        >>> cm.compute()["pixel_accuracy"]
        0.6666666666666666
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._device = torch.device(device) if device is not None else None
        self._matrix: Tensor | None = None

    # ------------------------------------------------------------------ state
    def _ensure(self, device: torch.device) -> Tensor:
        """Create the zero matrix on first use (on ``self._device`` or ``device``)."""
        if self._matrix is None:
            target_device = self._device if self._device is not None else device
            c = self.num_classes
            self._matrix = torch.zeros((c, c), dtype=torch.int64, device=target_device)
        return self._matrix

    @property
    def matrix(self) -> Tensor:
        """The accumulated int64 ``(C, C)`` counts (zeros before the first update)."""
        return self._ensure(self._device or torch.device("cpu"))

    def reset(self) -> None:
        """Set all counts back to zero."""
        if self._matrix is not None:
            self._matrix.zero_()

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch of predicted and ground-truth label maps.

        Args:
            pred: integer class indices in ``[0, C)``, any shape.
            target: integer labels, same shape as ``pred``. Pixels equal to ``ignore_index`` or
                outside ``[0, C)`` are skipped (callers validate labels earlier).

        Raises:
            ValueError: on a shape mismatch, non-integer tensors, or predictions outside ``[0, C)``.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
        c = self.num_classes
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
        target = target.reshape(-1).to(torch.int64)
        valid = (target != self.ignore_index) & (target >= 0) & (target < c)
        pred = pred[valid]
        target = target[valid]
        if pred.numel() and bool(((pred < 0) | (pred >= c)).any()):
            raise ValueError(f"pred contains class indices outside [0, {c})")
        counts = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        matrix = self._ensure(counts.device)
        matrix += counts.to(matrix.device)

    # ------------------------------------------------------------ combination
    def merge(self, other: ConfusionMatrix) -> None:
        """Add the counts of another matrix with the same number of classes."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix into a "
                f"{self.num_classes}-class matrix"
            )
        if other._matrix is None:
            return
        matrix = self._ensure(other._matrix.device)
        matrix += other._matrix.to(matrix.device)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks when ``torch.distributed`` is initialised.

        A no-op in a single process. Every rank must call it (it is a collective). With the NCCL
        backend the counts travel through the current CUDA device.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        matrix = self.matrix
        comm_device = matrix.device
        if dist.get_backend() == "nccl" and comm_device.type != "cuda":
            comm_device = torch.device("cuda", torch.cuda.current_device())
        buf = matrix.to(comm_device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        matrix.copy_(buf.to(matrix.device))

    # ---------------------------------------------------------------- results
    def compute(self) -> dict[str, Any]:
        """Metrics of the accumulated counts, see :func:`compute_metrics`."""
        return compute_metrics(self.matrix)

    def __repr__(self) -> str:
        n = int(self._matrix.sum()) if self._matrix is not None else 0
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, pixels={n})"
        )
