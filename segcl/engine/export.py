"""``segcl export``: a trained model as an ONNX file, checked against PyTorch with onnxruntime.

The graph maps ``image`` ``(B, 3, H, W)`` (float32, normalised with the checkpoint's mean / std)
to ``logits`` ``(B, C, H, W)`` at the input resolution. Batch, height and width are dynamic axes
when the architecture allows it: the model must run in PyTorch at a second size, and the exported
graph must give the same logits there as PyTorch (a traced shape that does not generalise would
not); otherwise height and width are fixed at the training ``image_size`` and the batch alone is
dynamic. The checkpoint's ``config.json`` (classes, palette, normalisation, image size, ...) and
the opset are stored in the model's ``metadata_props`` (:mod:`segcl.engine.onnx_model`), so
``segcl predict model.onnx`` needs nothing else.

The export uses torch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx``
package, where the torch.export-based one also needs ``onnxscript``. The check runs the
serialised model in onnxruntime and PyTorch on the same preprocessed images
(:func:`segcl.engine.inference.input_transform`, the preprocessing ``predict`` uses) and reports
the largest absolute logit difference and the share of pixels whose arg-max class agrees.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segcl.checkpoint import CheckpointConfig
from segcl.config import ExportConfig
from segcl.engine.callbacks import Callback
from segcl.errors import CheckpointError, SegclError
from segcl.extras import require
from segcl.fileio import atomic_write


@dataclass
class ParityCheck:
    """onnxruntime against PyTorch on the same inputs of one size."""

    size: tuple[int, int]
    images: int
    max_abs_diff: float
    argmax_agreement: float  # share of pixels with the same arg-max class, in [0, 1]


@dataclass
class ExportResult:
    """What ``segcl export`` wrote and how its check went."""

    path: Path
    opset: int
    dynamic_axes: list[str]
    size_bytes: int
    images_source: str | None = None  # where the check images came from
    checks: list[ParityCheck] = field(default_factory=list)
    max_diff: float = 1e-3  # the accepted max |logit difference|

    @property
    def max_abs_diff(self) -> float | None:
        return max((c.max_abs_diff for c in self.checks), default=None)

    @property
    def ok(self) -> bool:
        """The check passed (or was not run)."""
        return all(c.max_abs_diff <= self.max_diff for c in self.checks)


class _ExportFailed(Exception):
    """The exporter could not convert the traced graph (first line of its message)."""


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Discard what native code writes to the process's stdout and stderr meanwhile: torch's
    TorchScript exporter dumps the whole graph there when it fails, whatever ``verbose`` says
    (the failure itself is reported as an exception)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _trace(model: nn.Module, example: torch.Tensor, opset: int, dynamic_size: bool) -> bytes:
    """The ONNX graph of ``model`` traced on ``example`` (serialised).

    Raises:
        _ExportFailed: the exporter does not support an operator of the graph (e.g. the
            antialiased bicubic resampling of a ViT's position embeddings at a dynamic size).
    """
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    # torch >= 2.5 has both exporters (the torch.export-based one by default from 2.9)
    legacy = ({"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters
              else {})
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # tracer and deprecation notices are not the user's concern
        warnings.simplefilter("ignore")
        try:
            with _native_output_silenced():
                torch.onnx.export(model, (example,), buffer, opset_version=opset, verbose=False,
                                  input_names=["image"], output_names=["logits"],
                                  dynamic_axes={"image": axes, "logits": axes},
                                  do_constant_folding=True, **legacy)
        except RuntimeError as err:  # torch.onnx's errors derive from it
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise _ExportFailed(first) from err
    return buffer.getvalue()


def _fixed_size_model(model: nn.Module, size: tuple[int, int]) -> tuple[nn.Module, Any]:
    """``model`` for an export at one input size, and a context to trace it in.

    A timm ViT built for any input size resamples its position embeddings to the input's patch
    grid on every forward (antialiased bicubic, which the exporter does not support), and timm
    keeps that resampling in traced graphs. At one size it is a constant: a copy of the model
    gets its embeddings resampled once, in PyTorch (timm's ``set_input_size``, the same
    function), and the trace runs with timm's size-match shortcut on. Other models are returned
    as they are.
    """
    import copy
    import math

    vits = [m for m in model.modules()
            if getattr(m, "dynamic_img_size", False) and hasattr(m, "set_input_size")]
    if not vits:
        return model, contextlib.nullcontext()
    fixed = copy.deepcopy(model)
    for m in fixed.modules():
        if getattr(m, "dynamic_img_size", False) and hasattr(m, "set_input_size"):
            ph, pw = m.patch_embed.patch_size
            m.set_input_size(img_size=(math.ceil(size[0] / ph) * ph,
                                       math.ceil(size[1] / pw) * pw))
    try:
        from unittest import mock

        import timm.layers.pos_embed as pos_embed

        shortcut = mock.patch.object(pos_embed, "is_exporting", lambda: False)
    except (ImportError, AttributeError):
        shortcut = contextlib.nullcontext()
    return fixed, shortcut


def _trace_fixed(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """:func:`_trace` at the size of ``example`` only (height and width fixed)."""
    fixed, context = _fixed_size_model(model, tuple(example.shape[-2:]))  # type: ignore[arg-type]
    with context:
        return _trace(fixed, example, opset, dynamic_size=False)


def _with_metadata(graph: bytes, config: CheckpointConfig, cfg: ExportConfig,
                   dynamic_size: bool) -> bytes:
    """Add segcl's ``metadata_props`` (and a doc string) to a serialised model; check it."""
    from segcl import __version__
    from segcl.engine import onnx_model as om

    onnx = require("onnx", "onnx", "segcl export --format onnx")
    proto = onnx.load_from_string(graph)
    axes = "batch,height,width" if dynamic_size else "batch"
    onnx.helper.set_model_props(proto, {
        om.META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
        om.META_FORMAT: om.FORMAT_VERSION,
        om.META_OPSET: str(cfg.opset),
        om.META_DYNAMIC: axes,
        om.META_SOURCE: str(cfg.model),
        om.META_VERSION: __version__,
    })
    classes = config.data.classes
    proto.doc_string = (f"segcl {config.model['encoder']} + {config.model['decoder']} "
                        f"semantic segmentation ({len(classes)} classes). Input 'image': float32 "
                        f"(batch, 3, height, width), RGB scaled to [0, 1] and normalised with "
                        f"mean {list(config.data.mean)} and std {list(config.data.std)}. Output "
                        "'logits': float32 (batch, classes, height, width). The checkpoint's "
                        f"config.json is in the metadata under '{om.META_CONFIG}'.")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _runs_at(model: nn.Module, size: tuple[int, int]) -> bool:
    """Whether the PyTorch model accepts inputs of ``size`` (a ViT with a fixed size may not)."""
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, *size))
    except (RuntimeError, AssertionError, ValueError, SegclError):
        return False
    return tuple(out.shape[-2:]) == tuple(size)


def _second_size(model: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """Another input size for the dynamic-size check: one and two coarsest strides larger."""
    stride = max(getattr(getattr(model, "encoder", None), "strides", None) or [32])
    return size[0] + stride, size[1] + 2 * stride


def check_images(cfg: ExportConfig, config: CheckpointConfig) -> tuple[list[np.ndarray], str]:
    """Up to ``cfg.check_count`` RGB images for the parity check, and where they came from:
    ``--check-images``, else the validation split of the dataset the checkpoint was trained on
    (``config.json``'s ``train.data``) when it is found, else generated images."""
    from segcl.data import find_images, read_image

    if cfg.check_images:
        files = [path for path, _ in find_images([cfg.check_images])][: cfg.check_count]
        return [read_image(f) for f in files], str(cfg.check_images)
    data = (config.train or {}).get("data") or {}
    root = data.get("root")
    if root and Path(root).is_dir():
        from segcl.data import load_samples

        split = data.get("val_split") or "val"
        try:
            samples, _ = load_samples(root, split, data.get("layout") or "auto",
                                      require_masks=False)
            files = [s.image for s in samples[: cfg.check_count]]
            if files:
                return [read_image(f) for f in files], f"{root} ({split} split)"
        except SegclError:
            pass  # the dataset moved or changed: fall back to generated images
    from segcl.data.synthetic import render_sample

    size = config.data.image_size
    images = [render_sample(np.random.default_rng([7, i]), size)[0]
              for i in range(cfg.check_count)]
    return images, "generated images"


def compare(reference: nn.Module, exported: nn.Module, batches: list[torch.Tensor]) -> ParityCheck:
    """Max |logit difference| and arg-max agreement of two models over ``batches``."""
    worst, same, total = 0.0, 0, 0
    with torch.inference_mode():
        for x in batches:
            a, b = reference(x).float(), exported(x).float()
            if a.shape != b.shape:
                raise CheckpointError(f"the exported model returned logits of shape "
                                      f"{tuple(b.shape)}, PyTorch {tuple(a.shape)}")
            worst = max(worst, float((a - b).abs().max()))
            same += int((a.argmax(1) == b.argmax(1)).sum())
            total += a.shape[0] * a.shape[2] * a.shape[3]
    size = tuple(batches[0].shape[-2:])
    n = sum(x.shape[0] for x in batches)
    return ParityCheck(size, n, worst, same / max(1, total))  # type: ignore[arg-type]


def _batches(images: list[np.ndarray], config: CheckpointConfig, size: tuple[int, int],
             batch_size: int) -> list[torch.Tensor]:
    """The check images preprocessed as ``predict`` does, at ``size``, in batches."""
    from segcl.engine.inference import input_transform

    transform = input_transform(config, "resize", size)
    tensors = [transform(image)[0] for image in images]
    return [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]


def export(cfg: ExportConfig, callback: Callback | None = None) -> ExportResult:
    """Export ``cfg.model`` to ``cfg.out`` (ONNX) and, with ``cfg.check``, compare onnxruntime
    with PyTorch; the file is written atomically (a complete file or none)."""
    from segcl.engine.checkpoint import load_model
    from segcl.engine.onnx_model import OnnxModel, onnxruntime

    cb = callback or Callback()
    require("onnx", "onnx", "segcl export --format onnx")
    if cfg.check:
        onnxruntime("checking the export (--check)")
    model, config = load_model(cfg.model, "cpu")
    if getattr(model, "classifier", None) is None:
        raise CheckpointError(f"{cfg.model}: a pre-training checkpoint has no classifier; "
                              "fine-tune it, then export the fine-tuned model")
    size = config.data.image_size
    second = _second_size(model, size)
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))

    def fixed() -> bytes:
        cb.on_message(f"height and width fixed at {size[0]}x{size[1]} (the batch stays "
                      "dynamic)")
        try:
            return _with_metadata(_trace_fixed(model, example, cfg.opset), config, cfg, False)
        except _ExportFailed as err:
            raise CheckpointError(f"{cfg.model}: cannot be exported to ONNX opset {cfg.opset} "
                                  f"({err})") from None

    dynamic = _runs_at(model, second)
    blob = b""
    if dynamic:
        try:
            blob = _with_metadata(_trace(model, example, cfg.opset, True), config, cfg, True)
        except _ExportFailed as err:
            cb.on_message(f"no export with a dynamic height and width ({err})")
            dynamic = False
    if not dynamic:
        blob = fixed()

    images_source, checks = None, []
    if cfg.check:
        images, images_source = check_images(cfg, config)
        cb.on_message(f"checking the export on {len(images)} images ({images_source})")
        at_size = _batches(images, config, size, cfg.batch_size)
        other = None
        if dynamic:  # does the traced graph generalise to another size?
            try:
                other = compare(model, OnnxModel(blob), _batches(images, config, second,
                                                                 cfg.batch_size))
            except Exception:  # onnxruntime's own error types: the traced shapes do not fit
                other = None
            if other is None or other.max_abs_diff > cfg.max_diff:
                cb.on_message("the graph does not generalise to other input sizes")
                dynamic, other = False, None
                blob = fixed()
        exported = OnnxModel(blob, fixed_size=None if dynamic else size)
        checks.append(compare(model, exported, at_size))
        if other is not None:
            checks.append(other)

    out = Path(cfg.out)
    atomic_write(out, lambda tmp: tmp.write_bytes(blob))
    axes = ["batch", "height", "width"] if dynamic else ["batch"]
    return ExportResult(path=out, opset=cfg.opset, dynamic_axes=axes, size_bytes=len(blob),
                        images_source=images_source, checks=checks, max_diff=cfg.max_diff)
