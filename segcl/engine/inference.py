"""Logits for images of any size: the resize policy and the sliding-window policy.

- ``resize`` (default): the image is resized to the training ``image_size``, and the logits are
  upsampled bilinearly to the original size. Matches how segcl trains (random scale around the
  size that covers ``image_size``).
- ``slide``: the image is kept at its own resolution and covered by ``image_size`` windows with
  2/3 overlap; overlapping logits are averaged. For models trained on crops at native resolution.

Test-time augmentation (:class:`~segcl.config.TTAConfig`, ``--tta flip,scales=0.75,1,1.25``)
wraps either policy: every view (each scale, each with and without a horizontal flip) goes
through the policy, its logits are flipped back and resized to the prepared input's size, and the
views' softmax probabilities are averaged (the mean in probability space, as mmsegmentation and
ttach do). :func:`infer_logits` is the one entry point of predict, evaluate and pseudo-labelling.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segcl.checkpoint import CheckpointConfig
from segcl.config import EVAL_MODES, TTAConfig
from segcl.data.transforms import EvalTransform
from segcl.errors import ConfigError


def input_transform(
    config: CheckpointConfig, mode: str = "resize", size: tuple[int, int] | None = None
) -> EvalTransform:
    """The inference preprocessing a checkpoint's ``config.json`` asks for, for every backend
    (PyTorch or ONNX): resize to ``size`` (default: the training ``image_size``; none for
    ``slide``) and normalise with the checkpoint's mean / std."""
    data = config.data
    if mode == "resize" and size is None:
        size = data.image_size
    return EvalTransform(size if mode == "resize" else None, mean=data.mean, std=data.std)


def load_for_inference(
    ref: str | Path, device: str = "auto"
) -> tuple[nn.Module, CheckpointConfig, torch.device]:
    """A model to predict or evaluate with, its checkpoint config and its device.

    ``ref`` is any model reference (:func:`segcl.engine.checkpoint.load_model`) or an ``.onnx``
    file written by ``segcl export`` (run by onnxruntime: :mod:`segcl.engine.onnx_model`).
    """
    from segcl.engine.onnx_model import is_onnx_ref

    if is_onnx_ref(ref):
        from segcl.engine.onnx_model import load_onnx_model

        return load_onnx_model(ref, device)
    from segcl.engine.checkpoint import load_model
    from segcl.engine.runtime import resolve_device

    dev = resolve_device(device)
    model, config = load_model(ref, dev)
    return model, config, dev


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``(B, C, h, w)`` logits to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def masks_from_logits(
    logits: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Class-index masks ``(B, H, W)`` from ``(B, C, h, w)`` logits, on the logits' device:
    the most probable class of each pixel after one bilinear resize to ``size``
    (:func:`resize_logits`; none when ``size`` is None) -- uint8 for up to 256 classes, else
    int32 -- so that only the masks, not the logits, are copied back from an accelerator.

    The class is the first maximal index, exactly like ``argmax(1)`` (NaN counts as the
    maximum), computed as ``max(1).indices``: on the CPU ``argmax`` over the class dimension of
    a ``(B, C, H, W)`` tensor takes about 10x longer (torch 2.14, 11 classes at 360x480: 177 vs
    17 ms per image on one thread). On the CPU an upsampling resize of finite logits goes
    through :func:`upsampled_argmax`, which interpolates only where the class can change.
    """
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        if (logits.device.type == "cpu" and size[0] >= logits.shape[-2]
                and size[1] >= logits.shape[-1] and bool(torch.isfinite(logits).all())):
            masks = upsampled_argmax(logits.float(), size)
        else:
            masks = resize_logits(logits, size).max(dim=1).indices
    else:
        masks = logits.max(dim=1).indices
    return masks.to(torch.uint8 if logits.shape[1] <= 256 else torch.int32)


#: above this share of source cells on a class border, :func:`upsampled_argmax` resizes every
#: class plane instead (gathering most pixels' class vectors costs more than the resize)
MAX_BORDER_SHARE = 0.5


def _source_indices(n_out: int, n_in: int, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output row (or column) of a bilinear resize from ``n_in`` to ``n_out`` with
    ``align_corners=False``, PyTorch's: the two source indices ``i0``, ``i1`` and their weights
    ``w0``, ``w1``. The source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0, is
    rounded to float32 once (as PyTorch's CPU kernel does); at the far edge, and when the size
    does not change, ``i1 = i0``."""
    if n_out == n_in:
        i = torch.arange(n_in, device=device)
        zero = torch.zeros(n_in, device=device)
        return i, i, 1 - zero, zero
    scale = float(torch.tensor(n_in, dtype=torch.float32) / n_out)  # float32, as PyTorch's
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp(min=0)
    src = src.float()
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0.to(device), i1.to(device), (1 - w1).to(device), w1.to(device)


def border_cells(classes: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` bool: where a source cell -- a pixel of the class map ``classes`` and its
    right, lower and lower-right neighbours (the last row / column repeat at the edge) -- holds
    more than one class."""
    right = torch.cat([classes[:, :, 1:], classes[:, :, -1:]], dim=2)
    down = torch.cat([classes[:, 1:], classes[:, -1:]], dim=1)
    diag = torch.cat([right[:, 1:], right[:, -1:]], dim=1)
    return (classes != right) | (classes != down) | (classes != diag)


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``resize_logits(logits, size).max(1).indices`` for an upsampling ``size`` and finite
    logits, interpolating only the pixels whose class can change; ``(B, H, W)`` int64.

    A bilinear output pixel is a convex combination ``z = sum_j a_j v_j`` (``a_j >= 0``,
    ``sum_j a_j = 1``) of the logit vectors ``v_j`` of its (up to) four source pixels. If all
    four have the same first maximal class ``c`` (``v_jc > v_jk`` for ``k < c``, ``v_jc >= v_jk``
    for ``k > c``), the combination keeps both inequalities, so ``z``'s first maximal class is
    ``c`` too. So the classes are taken at the source resolution; a source cell (a pixel and its
    right, lower and lower-right neighbours) whose four classes agree gives its class to every
    output pixel it covers, and only the pixels of the other cells -- the class borders,
    7.1% of the source cells on CamVid val at 96x128 -- are interpolated, with PyTorch's
    weights, and take their maximum. Where more than :data:`MAX_BORDER_SHARE` of the cells are
    borders (say, an untrained model), every class plane is resized instead. The result equals
    the full resize's up to rounding: both are within a unit in the last place of the exact
    interpolation, so classes whose values are that close (near-ties) may come out either
    way. About 2x faster on the CPU than resizing every class plane (CamVid val, 11 classes,
    96x128 to 360x480; ``scripts/bench_classmap.py``).
    """
    h, w = logits.shape[-2:]
    height, width = size
    low = logits.max(dim=1).indices  # (B, h, w)
    agree = ~border_cells(low)
    if agree.numel() and 1 - agree.float().mean().item() > MAX_BORDER_SHARE:
        return resize_logits(logits, size).max(dim=1).indices
    cell = torch.where(agree, low, -1)
    y0, y1, wy0, wy1 = _source_indices(height, h, logits.device)
    x0, x1, wx0, wx1 = _source_indices(width, w, logits.device)
    out = cell[:, y0[:, None], x0[None, :]]  # (B, H, W), -1 where the class may change
    bi, yi, xi = (out < 0).nonzero(as_tuple=True)
    if bi.numel():
        v = logits.permute(0, 2, 3, 1).contiguous()  # (B, h, w, C): one vector per pixel
        r0, r1, q0, q1 = y0[yi], y1[yi], wy0[yi, None], wy1[yi, None]
        c0, c1, p0, p1 = x0[xi], x1[xi], wx0[xi, None], wx1[xi, None]
        z = ((v[bi, r0, c0] * p0 + v[bi, r0, c1] * p1) * q0
             + (v[bi, r1, c0] * p0 + v[bi, r1, c1] * p1) * q1)
        out[bi, yi, xi] = z.max(dim=1).indices
    return out


def _windows(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


def slide_logits(model: nn.Module, image: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Average the logits of overlapping ``window`` crops over a ``(B, 3, H, W)`` batch."""
    b, _, h, w = image.shape
    wh, ww = window
    pad_h, pad_w = max(0, wh - h), max(0, ww - w)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    hh, wp = image.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, hh, wp, device=image.device)
    for y in _windows(hh, wh, max(1, wh * 2 // 3)):
        for x in _windows(wp, ww, max(1, ww * 2 // 3)):
            out = model(image[:, :, y : y + wh, x : x + ww]).float()
            if total is None:
                total = torch.zeros(b, out.shape[1], hh, wp, device=image.device)
            total[:, :, y : y + wh, x : x + ww] += out
            count[:, :, y : y + wh, x : x + ww] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def _policy_logits(
    model: nn.Module, image: torch.Tensor, mode: str, image_size: tuple[int, int]
) -> torch.Tensor:
    if mode == "resize":
        return model(image)
    if mode == "slide":
        return slide_logits(model, image, image_size)
    raise ConfigError(f"unknown evaluation mode '{mode}'; choose one of {EVAL_MODES}")


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def tta_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    mode: str,
    image_size: tuple[int, int],
    tta: TTAConfig,
) -> torch.Tensor:
    """Mean softmax probabilities ``(B, C, H, W)`` over the views of ``tta``, at the input's size.

    A view rescales the prepared batch by one of ``tta.scales`` (bilinear; any size, the model
    upsamples its logits to its input), optionally flips it horizontally, runs the ``mode``
    policy, undoes the flip, resizes the logits to the input's ``(H, W)`` and takes the softmax
    (in float32). With ``V`` views: ``p = (1/V) sum_v softmax(logits_v)``.
    """
    size = (int(image.shape[-2]), int(image.shape[-1]))
    total: torch.Tensor | None = None
    for scale in tta.scales:
        x = image if scale == 1.0 else F.interpolate(
            image, size=_scaled(size, scale), mode="bilinear", align_corners=False)
        for flip in (False, True) if tta.flip else (False,):
            out = _policy_logits(model, x.flip(-1) if flip else x, mode, image_size)
            if flip:
                out = out.flip(-1)
            probs = resize_logits(out, size).float().softmax(dim=1)
            total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(tta.views)


def infer_logits(
    model: nn.Module,
    image: torch.Tensor,
    mode: str,
    image_size: tuple[int, int],
    tta: TTAConfig | None = None,
) -> torch.Tensor:
    """Logits for a prepared batch: resized images (``resize``) or full-size images (``slide``).

    With ``tta`` (see :func:`tta_probabilities`) the result is the log of the views' mean
    probabilities, so ``softmax`` gives that mean and ``argmax`` its most probable class, and
    callers resize and reduce it exactly like plain logits. Without, it is the model's logits.
    """
    if tta is None or tta.identity:
        return _policy_logits(model, image, mode, image_size)
    probs = tta_probabilities(model, image, mode, image_size, tta)
    return probs.clamp_min_(torch.finfo(probs.dtype).tiny).log_()
