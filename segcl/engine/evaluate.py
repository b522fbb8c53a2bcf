"""Evaluation: confusion matrix over a dataset at the masks' full resolution."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from segcl.config import TTAConfig
from segcl.data import DatasetInfo, Sample, SegmentationDataset
from segcl.data.transforms import EvalTransform
from segcl.engine.callbacks import Callback
from segcl.engine.data_setup import collate_eval, make_loader
from segcl.engine.inference import infer_logits, masks_from_logits
from segcl.engine.runtime import autocast, eval_mode
from segcl.metrics import ConfusionMatrix


def eval_loader(
    samples: list[Sample],
    info: DatasetInfo,
    image_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    mode: str,
    device: torch.device,
    batch_size: int = 4,
    workers: int = 0,
    cache: str = "off",
) -> DataLoader:
    """Normalised images (resized for ``resize``, full size for ``slide``) and full-size masks;
    ``cache`` as in :class:`~segcl.data.SegmentationDataset` (a loader read many times)."""
    transform = EvalTransform(image_size if mode == "resize" else None, mean=mean, std=std)
    dataset = SegmentationDataset(samples, info, transform, cache=cache)
    return make_loader(dataset, batch_size if mode == "resize" else 1, workers, device,
                       collate_fn=collate_eval)


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    info: DatasetInfo,
    device: torch.device,
    image_size: tuple[int, int],
    mode: str = "resize",
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    callback: Callback | None = None,
    tta: TTAConfig | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader``; the metrics of :func:`segcl.metrics.compute_metrics`.

    ``tta``: test-time augmentation (:func:`segcl.engine.inference.infer_logits`).
    """
    cm = ConfusionMatrix(info.num_classes, info.ignore_index, device=device)
    with eval_mode(model):
        for batch in loader:
            image = batch["image"].to(device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = infer_logits(model, image, mode, image_size, tta)
            for i, mask in enumerate(batch["mask"]):
                mask = mask.to(device, non_blocking=True)
                pred = masks_from_logits(logits[i : i + 1], tuple(mask.shape[-2:]))[0]
                cm.update(pred, mask)
            if callback is not None:
                callback.on_step(-1, {"evaluated": len(batch["mask"])})
    cm.all_reduce()
    return cm.compute()


def evaluate(
    model_ref: str,
    data: str,
    split: str = "val",
    layout: str = "auto",
    mode: str = "resize",
    batch_size: int = 4,
    device: str = "auto",
    workers: int = 2,
    amp: bool = True,
    callback: Callback | None = None,
    tta: TTAConfig | str | None = None,
) -> dict[str, Any]:
    """Evaluate a model reference (or an ``.onnx`` file from ``segcl export``) on one split of a
    dataset (the model's classes and ignore index).

    ``tta``: test-time augmentation, a :class:`~segcl.config.TTAConfig` or its ``--tta`` text
    (``"flip,scales=0.75,1,1.25"``); the views' probabilities are averaged.

    Returns the metrics of :func:`segcl.metrics.compute_metrics` plus ``class_names``,
    ``num_images`` and ``tta`` (the spec used, ``"none"`` without).
    """
    from segcl.data import load_samples, validate_samples
    from segcl.engine.inference import load_for_inference
    from segcl.engine.runtime import amp_dtype

    views = TTAConfig.parse(tta)  # a bad spec fails before the model is loaded
    model, config, dev = load_for_inference(model_ref, device)
    d = config.data
    info = DatasetInfo(classes=d.classes, ignore_index=d.ignore_index, palette=d.palette,
                       name=config.dataset)
    samples, _ = load_samples(data, split, layout, info)
    validate_samples(samples, info)
    size = d.image_size
    loader = eval_loader(samples, info, size, d.mean, d.std, mode, dev, batch_size, workers)
    if callback is not None:
        callback.on_start(len(samples), 0, "evaluate")
    counter = _Counter(callback)
    metrics = evaluate_loader(model, loader, info, dev, size, mode, amp_dtype(dev, amp),
                              dev.type == "cuda", counter, views)
    if callback is not None:
        callback.on_end(metrics)
    metrics["class_names"] = info.classes
    metrics["num_images"] = len(samples)
    metrics["tta"] = str(views) if views is not None else "none"
    return metrics


class _Counter(Callback):
    """Turns per-batch ``evaluated`` counts into a running total for a progress bar."""

    def __init__(self, inner: Callback | None):
        self.inner, self.done = inner, 0

    def on_step(self, step: int, logs: dict[str, Any]) -> None:
        self.done += logs.get("evaluated", 0)
        if self.inner is not None:
            self.inner.on_step(self.done, {})
