"""``segcl predict``: masks for files and folders; decoding and writing overlap with compute.

Pipeline: a thread pool decodes and resizes images a few batches ahead (OpenCV releases the GIL),
the main thread normalises each batch, runs the model, upsamples the logits once to the images'
size and takes the class of each pixel (:func:`~segcl.engine.inference.masks_from_logits`, on
the model's device), and a second thread pool writes palette PNGs (and overlays). Files that
cannot be read are collected and reported; they never stop the run.

The reader and writer threads run no torch operations: images stay uint8 until the main thread
batches them (:func:`~segcl.data.to_tensor_batch`), because every thread that calls a parallel
torch operation starts an OpenMP team of its own, whose threads then compete with the model's
for the cores. OpenCV runs single-threaded inside each call (``cv2.setNumThreads(0)`` in
:mod:`segcl.data.io`). Masks are written with a fast PNG setting (see
:data:`segcl.data.io.MASK_PNG_OPTIONS`).

Outputs per image ``NAME`` (every file written atomically, at the image's original size):

- ``NAME.png``: the class-index mask, a palette PNG (always; the file evaluation and
  relabelling tools read).
- ``NAME_color.png`` (``color=True``): an RGB image, each pixel the dataset palette's colour of
  its class, next to the index mask -- for viewers and tools that ignore PNG palettes.
- ``NAME_probs.npy`` (``save_probs=True``): the per-class probabilities, ``(C, H, W)`` float16.
  NumPy's ``.npy`` rather than a multi-page TIFF: it needs no extra dependency, stores float16
  exactly with its shape and dtype in the header, and ``np.load(path, mmap_mode="r")[c]`` reads
  one class plane without loading the rest (class planes are contiguous). The index mask is then
  the argmax of these stored probabilities (float16 ties go to the lower class index), so the
  two files always agree.
- ``NAME_overlay.jpg`` (``overlay=True``): the mask blended over the image.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from segcl.checkpoint import CheckpointConfig
from segcl.config import TTAConfig
from segcl.data import EvalTransform, find_images, read_image, to_tensor_batch, write_mask
from segcl.engine.callbacks import Callback
from segcl.engine.inference import (
    infer_logits,
    input_transform,
    masks_from_logits,
    resize_logits,
)
from segcl.engine.runtime import autocast
from segcl.errors import DataError
from segcl.fileio import atomic_write, check_target


@dataclass
class PredictResult:
    """What a prediction run did."""

    written: list[Path] = field(default_factory=list)
    #: (input file, one-line reason naming the file)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _Item:
    path: Path
    rel: Path
    shape: tuple[int, int] = (0, 0)
    image: np.ndarray | None = None
    #: the network input before normalisation: ``HxWx3`` uint8, resized for ``resize`` mode
    pixels: np.ndarray | None = None
    error: str | None = None


def _load(path: Path, rel: Path, transform: EvalTransform, keep: bool) -> _Item:
    """Decode and resize one image (runs in a reader thread); the same
    :class:`~segcl.data.EvalTransform` as evaluation and pseudo-labelling, whose normalisation
    the main thread applies to the whole batch."""
    try:
        image = read_image(path)
    except DataError as err:
        return _Item(path, rel, error=str(err))
    return _Item(path, rel, shape=image.shape[:2], image=image if keep else None,
                 pixels=transform.resize(image))


def _imwrite_jpg(path: Path, bgr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", bgr)
    if not ok:
        raise DataError(f"{path}: cannot encode the overlay")
    path.write_bytes(buf.tobytes())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, array, allow_pickle=False)


def _write(item: _Item, mask: np.ndarray, probs: np.ndarray | None, out_dir: Path, palette,
           overlay: bool, alpha: float, color: bool) -> Path:
    target = out_dir / item.rel.with_suffix(".png")
    write_mask(target, mask, palette)
    stem = out_dir / item.rel.parent / item.rel.name
    if color:
        from segcl.viz import colorize, save_png

        save_png(colorize(mask, palette).convert("RGB"), f"{stem}_color.png")
    if probs is not None:
        atomic_write(f"{stem}_probs.npy", lambda tmp: _save_npy(tmp, probs))
    if overlay:
        from segcl.viz import overlay as blend

        assert item.image is not None
        over = blend(item.image, mask, palette, alpha=alpha)
        ov = out_dir / item.rel.parent / f"{item.rel.name}_overlay.jpg"
        bgr = cv2.cvtColor(over, cv2.COLOR_RGB2BGR)
        atomic_write(ov, lambda tmp: _imwrite_jpg(tmp, bgr))
    return target


def predict_files(
    model: torch.nn.Module,
    config: CheckpointConfig,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    mode: str = "resize",
    overlay: bool = False,
    alpha: float = 0.5,
    threads: int = 2,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    callback: Callback | None = None,
    tta: TTAConfig | str | None = None,
    save_probs: bool = False,
    color: bool = False,
) -> PredictResult:
    """Predict a mask for every image under ``inputs``; masks keep each image's original size.

    ``tta``: test-time augmentation, a :class:`~segcl.config.TTAConfig` or its ``--tta`` text
    (the mean probabilities of its views); ``save_probs`` / ``color``: also write
    ``NAME_probs.npy`` / ``NAME_color.png`` (see the module docstring).
    """
    tta = TTAConfig.parse(tta)
    cb = callback or Callback()
    device = torch.device(device)
    out_dir = Path(out_dir)
    files = find_images(inputs)
    window = config.data.image_size
    transform = input_transform(config, mode)
    palette = config.data.palette
    if palette is None:
        from segcl.viz import default_palette

        palette = default_palette(len(config.data.classes))
    result = PredictResult()
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)

    readers = ThreadPoolExecutor(max(1, threads))
    writers = ThreadPoolExecutor(max(1, threads))
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    pending: deque[list[Future]] = deque()
    writes: list[tuple[_Item, Future]] = []

    def submit(k: int) -> None:
        if k < len(batches):
            pending.append([readers.submit(_load, p, r, transform, overlay)
                            for p, r in batches[k]])

    cb.on_start(len(files), 0, "predict")
    done = 0
    try:
        for k in range(min(3, len(batches))):
            submit(k)
        for k in range(len(batches)):
            items = [f.result() for f in pending.popleft()]
            submit(k + 3)
            good = [it for it in items if it.error is None]
            result.failed += [(it.path, it.error or "") for it in items if it.error is not None]
            if good:
                outs = _forward(model, good, transform, device, mode, window, amp,
                                channels_last, tta, save_probs)
                writes += [(it, writers.submit(_write, it, m, pr, out_dir, palette, overlay,
                                               alpha, color))
                           for it, (m, pr) in zip(good, outs, strict=True)]
            done += len(items)
            cb.on_step(done, {})
        for item, fut in writes:
            try:
                result.written.append(fut.result())
            except (OSError, DataError) as err:
                result.failed.append((item.path, f"{item.path}: could not write mask: {err}"))
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)
    cb.on_end({"written": len(result.written), "failed": len(result.failed)})
    return result


def _outputs(
    logits: torch.Tensor, size: tuple[int, int] | None, probs: bool
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``(B, C, h, w)`` logits -> ``(mask, probabilities or None)`` per image, at ``size``
    (``None``: the logits' own)."""
    if not probs:
        return [(m, None) for m in masks_from_logits(logits, size).cpu().numpy()]
    if size is not None:
        logits = resize_logits(logits, size)
    p = logits.float().softmax(dim=1).to(torch.float16).cpu().numpy()
    return [(pi.argmax(0).astype(np.uint8), pi) for pi in p]


@torch.inference_mode()
def _forward(
    model, items: list[_Item], transform: EvalTransform, device, mode, window, amp,
    channels_last, tta: TTAConfig | None = None, probs: bool = False,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Logits -> full-size masks (and probabilities). Same-size inputs share one batched
    upsample."""
    mean, std = transform.mean, transform.std
    if mode == "resize":
        x = to_tensor_batch([it.pixels for it in items], mean, std)
        if device.type == "cuda":
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = infer_logits(model, x, mode, window, tta)
        sizes = [it.shape for it in items]
        if len(set(sizes)) == 1:
            return _outputs(logits, sizes[0], probs)
        return [_outputs(logits[i : i + 1], s, probs)[0] for i, s in enumerate(sizes)]
    out = []
    for it in items:
        x = to_tensor_batch([it.pixels], mean, std).to(device)
        with autocast(device, amp):
            logits = infer_logits(model, x, mode, window, tta)
        out += _outputs(logits, None, probs)
    return out


def predict(
    model_ref: str,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    device: str = "auto",
    mode: str = "resize",
    overlay: bool = False,
    threads: int = 2,
    amp: bool = True,
    callback: Callback | None = None,
    tta: TTAConfig | str | None = None,
    save_probs: bool = False,
    color: bool = False,
) -> PredictResult:
    """Load a model reference (or an ``.onnx`` file from ``segcl export``, run by onnxruntime
    with the same pre- and post-processing) and predict masks for ``inputs`` (files and
    folders).

    ``tta``: a :class:`~segcl.config.TTAConfig` or its ``--tta`` text
    (``"flip,scales=0.75,1,1.25"``). ``save_probs`` / ``color``: also write the per-class
    probabilities (``NAME_probs.npy``) / an RGB colour mask (``NAME_color.png``).
    """
    from segcl.engine.inference import load_for_inference
    from segcl.engine.runtime import amp_dtype

    views = TTAConfig.parse(tta)  # a bad spec fails before the model is loaded
    check_target(out_dir, folder=True)  # so does an --out that cannot be a folder
    model, config, dev = load_for_inference(model_ref, device)
    return predict_files(model, config, inputs, out_dir, batch_size=batch_size, device=dev,
                         mode=mode, overlay=overlay, threads=threads, amp=amp_dtype(dev, amp),
                         channels_last=dev.type == "cuda", callback=callback, tta=views,
                         save_probs=save_probs, color=color)
