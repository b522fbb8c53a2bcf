"""A model exported by ``segcl export`` (ONNX), run by onnxruntime behind the PyTorch model's
interface, so that ``predict`` and ``evaluate`` use the same pre- and post-processing code for
both backends.

The ``.onnx`` file is self-contained: its ``metadata_props`` hold the checkpoint's
``config.json`` (classes, palette, normalisation, image size, ...) under :data:`META_CONFIG`,
so nothing but the file is needed to predict. onnxruntime is the ``segcl[onnx]`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segcl.checkpoint import CheckpointConfig
from segcl.errors import CheckpointError, ConfigError
from segcl.extras import require

#: ``metadata_props`` keys written by ``segcl export``
META_CONFIG = "segcl.config"  # the checkpoint's config.json (JSON)
META_FORMAT = "segcl.format"  # version of this metadata layout
META_OPSET = "segcl.opset"  # the ONNX opset of the graph
META_DYNAMIC = "segcl.dynamic_axes"  # comma-separated: batch[,height,width]
META_SOURCE = "segcl.source"  # the model reference that was exported
META_VERSION = "segcl.version"  # segcl version that exported it
FORMAT_VERSION = "1"
INPUT_NAME = "image"  # (B, 3, H, W) float32, normalised with data.mean / data.std
OUTPUT_NAME = "logits"  # (B, num_classes, H, W) float32 at the input resolution


def is_onnx_ref(ref: str | Path) -> bool:
    """Whether a model reference names an ONNX file (by its ``.onnx`` suffix)."""
    return str(ref).lower().endswith(".onnx")


def onnxruntime(feature: str = "running an .onnx model") -> Any:
    """The ``onnxruntime`` module, or a one-line ConfigError naming the ``segcl[onnx]`` extra."""
    return require("onnxruntime", "onnx", feature)


def providers(device: str) -> tuple[list[Any], torch.device]:
    """onnxruntime execution providers for ``--device`` and the torch device of the tensors.

    ``cpu``: the CPU provider. ``cuda[:N]``: the CUDA provider (onnxruntime-gpu), an error when
    this onnxruntime has none. ``auto``: CUDA when onnxruntime has it, else CPU.
    """
    ort = onnxruntime()
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    cpu = torch.device("cpu")
    if device == "cpu" or (device == "auto" and not has_cuda):
        return ["CPUExecutionProvider"], cpu
    try:
        dev = torch.device("cuda" if device == "auto" else device)
    except RuntimeError as err:
        raise ConfigError(f"invalid device '{device}'") from err
    if dev.type != "cuda":
        raise ConfigError(f"--device {device}: an .onnx model runs on cpu or cuda")
    if not has_cuda:
        raise ConfigError(f"--device {device}: this onnxruntime has no CUDA provider (available: "
                          f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    index = dev.index or 0
    tensors = torch.device("cuda", index) if torch.cuda.is_available() else cpu
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], tensors


class OnnxModel(nn.Module):
    """An onnxruntime session called like :class:`~segcl.models.SegmentationModel`:
    ``(B, 3, H, W)`` normalised images -> ``(B, C, H, W)`` logits, on the input's device.

    Args:
        model: the serialised ONNX model (bytes) or the path of an ``.onnx`` file.
        providers: onnxruntime execution providers (see :func:`providers`).
        fixed_size: ``(H, W)`` when the graph has fixed spatial axes (checked on every call).
    """

    def __init__(self, model: bytes | str | Path, providers: list[Any] | None = None,
                 fixed_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        ort = onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 4  # fatal only: errors reach the caller as exceptions
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own (pybind) exception types
            where = "the exported model" if isinstance(model, bytes) else str(model)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{where}: onnxruntime cannot load it ({first})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.fixed_size = fixed_size

    @property
    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props``."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise ConfigError(f"this ONNX model takes {h}x{w} inputs only (its height and width "
                              f"were fixed at export), got {x.shape[-2]}x{x.shape[-1]}")
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits).to(x.device)


def onnx_config(metadata: dict[str, str], path: str | Path) -> CheckpointConfig:
    """The checkpoint configuration embedded by ``segcl export``, checked like a config.json."""
    if META_CONFIG not in metadata:
        raise CheckpointError(f"{path}: no '{META_CONFIG}' metadata; export the model with "
                              "`segcl export` to predict with it")
    try:
        config = json.loads(metadata[META_CONFIG])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid '{META_CONFIG}' metadata ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: '{META_CONFIG}' metadata must be a JSON object")
    return CheckpointConfig.from_dict(config, f"{path} ({META_CONFIG})")


def load_onnx_model(
    path: str | Path, device: str = "auto"
) -> tuple[OnnxModel, CheckpointConfig, torch.device]:
    """Open an ``.onnx`` file written by ``segcl export``.

    Returns:
        the model, the checkpoint configuration embedded in it, and the torch device its inputs
        and outputs live on.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    chosen, tensors = providers(device)
    model = OnnxModel(path, chosen)
    config = onnx_config(model.metadata, path)
    axes = model.metadata.get(META_DYNAMIC, "batch,height,width").split(",")
    if "height" not in axes or "width" not in axes:
        model.fixed_size = config.data.image_size
    return model, config, tensors
