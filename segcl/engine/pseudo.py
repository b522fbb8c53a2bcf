"""Pseudo-labels from a teacher model, after Zhao et al., "Contrastive Learning for Label
Efficient Semantic Segmentation", ICCV 2021 (used by ``segcl finetune --pseudo-labels``, the
registered method :mod:`segcl.methods.pseudo_labels`, and by ``segcl pretrain --pseudo-labels``).

A teacher (a model fine-tuned on the labelled subset) predicts class probabilities for every
unlabelled image at the image's own resolution; a pixel keeps its predicted class when the top
probability reaches ``threshold`` (0.8) -- or ``background_threshold`` (0.97) when the predicted
class is the dataset's background class -- and becomes the ignore index otherwise. The masks are
kept in memory and handed to :class:`segcl.data.SegmentationDataset` (``masks=``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segcl.config import TTAConfig
from segcl.data import DatasetInfo, Sample
from segcl.engine.callbacks import Callback
from segcl.engine.checkpoint import load_model
from segcl.engine.evaluate import eval_loader
from segcl.engine.inference import infer_logits, resize_logits
from segcl.engine.runtime import amp_dtype, autocast
from segcl.errors import ConfigError


def _check_probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def threshold_probabilities(
    probs: torch.Tensor | np.ndarray,
    threshold: float = 0.8,
    background_threshold: float = 0.97,
    background_class: int | None = None,
    ignore_index: int = 255,
) -> torch.Tensor | np.ndarray:
    """Hard pseudo-label mask from a ``(C, H, W)`` probability map.

    A pixel gets ``argmax_c probs[c]`` when ``max_c probs[c] >= threshold`` (or ``>=
    background_threshold`` when the argmax is ``background_class``), ``ignore_index`` otherwise.

    Returns:
        ``(H, W)`` int64 labels, a tensor for a tensor input and an array for an array input.
    """
    threshold = _check_probability(threshold, "pseudo-label threshold")
    background_threshold = _check_probability(background_threshold,
                                              "pseudo-label background threshold")
    as_numpy = isinstance(probs, np.ndarray)
    p = torch.as_tensor(probs)
    if p.ndim != 3 or p.shape[0] < 1:
        raise ValueError(f"probabilities must be (C, H, W), got {tuple(p.shape)}")
    if background_class is not None and not 0 <= background_class < p.shape[0]:
        raise ConfigError(
            f"background class {background_class} is not a class index 0..{p.shape[0] - 1}"
        )
    confidence, label = p.float().max(dim=0)
    needed = torch.full_like(confidence, threshold)
    if background_class is not None:
        needed = torch.where(label == background_class, background_threshold, needed)
    mask = torch.where(confidence >= needed, label, torch.full_like(label, ignore_index))
    return mask.numpy() if as_numpy else mask


def _mask_dtype(info: DatasetInfo) -> type:
    return np.uint8 if max(info.num_classes - 1, info.ignore_index) <= 255 else np.int32


def pseudo_label(
    teacher_ref: str,
    samples: Sequence[Sample],
    info: DatasetInfo,
    cfg: Any,
    device: torch.device,
    callback: Callback | None = None,
    batch_size: int = 4,
    tta: TTAConfig | None = None,
) -> tuple[list[np.ndarray], list[Sample]]:
    """Pseudo-label ``samples`` with the teacher model ``teacher_ref``.

    Args:
        teacher_ref: run directory, checkpoint folder, ``hf://`` reference or registry name.
        samples: the unlabelled images (any mask file they name is not read).
        info: the class description of the dataset being trained on; the teacher must predict
            the same number of classes.
        cfg: a :class:`~segcl.config.FinetuneConfig` or :class:`~segcl.config.PretrainConfig`
            (``pseudo_threshold``, ``pseudo_background_threshold``, ``background_class``, and
            ``eval_mode`` / ``amp`` when present).
        device: where the teacher runs.
        callback: receives one message with the share of pixels kept.
        tta: test-time augmentation of the teacher (its views' mean probabilities are
            thresholded); see :func:`segcl.engine.inference.infer_logits`.

    Returns:
        ``(masks, samples)``: one mask per sample at the image's original size (uint8, or int32
        when labels exceed 255) and the samples with ``mask=None``, in the input order.
    """
    cb = callback or Callback()
    unlabeled = [dataclasses.replace(s, mask=None) for s in samples]
    model, config = load_model(teacher_ref, device)  # a missing teacher fails even with no images
    if not unlabeled:
        cb.on_message("pseudo-labels: no unlabelled images to label")
        return [], []
    d = config.data
    if len(d.classes) != info.num_classes:
        raise ConfigError(
            f"pseudo-label teacher {teacher_ref} predicts {len(d.classes)} classes, the "
            f"dataset has {info.num_classes}"
        )
    size = d.image_size
    mode = getattr(cfg, "eval_mode", "resize")
    loader = eval_loader(unlabeled, info, size, d.mean, d.std, mode, device,
                         batch_size=batch_size, workers=0)
    amp = amp_dtype(device, getattr(cfg, "amp", True))
    dtype = _mask_dtype(info)
    masks: list[np.ndarray] = []
    kept = total = 0
    with torch.inference_mode():
        for batch in loader:
            image = batch["image"].to(device, non_blocking=True)
            with autocast(device, amp):
                logits = infer_logits(model, image, mode, size, tta)
            for i, full in enumerate(batch["mask"]):  # all-ignore placeholders, original size
                probs = resize_logits(logits[i : i + 1].float(), tuple(full.shape[-2:]))[0]
                mask = threshold_probabilities(
                    probs.softmax(dim=0), cfg.pseudo_threshold, cfg.pseudo_background_threshold,
                    cfg.background_class, info.ignore_index,
                )
                kept += int((mask != info.ignore_index).sum())
                total += mask.numel()
                masks.append(mask.cpu().numpy().astype(dtype))
    share = kept / max(1, total)
    bg = (f", background {cfg.pseudo_background_threshold}"
          if cfg.background_class is not None else "")
    cb.on_message(
        f"pseudo-labels: {len(masks)} images labelled by {teacher_ref}; {share:.1%} of pixels "
        f"kept (threshold {cfg.pseudo_threshold}{bg})"
    )
    return masks, unlabeled
