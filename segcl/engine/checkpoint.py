"""Checkpoints: ``model.safetensors`` + ``config.json`` + ``README.md``, written atomically.

A checkpoint folder is written into ``NAME.tmp`` first and then swapped in with renames, so a run
killed at any moment leaves either the previous or the new checkpoint, never a torn one.
Optimiser state for ``--resume`` is stored as ``training_state.safetensors`` (tensors) plus
``training_state.json`` (everything else): loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from segcl.errors import CheckpointError, ConfigError
from segcl.hub.card import render_model_card

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
WEIGHTS_SHA256 = "weights_sha256"  # config.json key: SHA-256 of model.safetensors
STATE_TENSORS = "training_state.safetensors"
STATE_META = "training_state.json"


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def recover(final: Path) -> Path:
    """Return ``final``, restoring it from ``final.old`` if a swap was interrupted."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    return final


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser ``state_dict`` into safetensors-able tensors and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        slot: dict[str, Any] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
                slot[key] = {"tensor": f"optim.{pid}.{key}"}
            else:
                slot[key] = value
        meta["state"][str(pid)] = slot
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for pid, slot in meta["state"].items():
        state[int(pid)] = {
            k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for k, v in slot.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    training_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Atomically write a checkpoint folder (and, optionally, the resume state)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
    config = {**config, WEIGHTS_SHA256: file_sha256(tmp / WEIGHTS)}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=_json_default) + "\n")
    (tmp / CARD).write_text(render_model_card(config))
    if training_state is not None:
        tensors, meta = training_state
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_META).write_text(json.dumps(meta, default=_json_default))
    _swap_in(tmp, folder)
    return folder


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_config(folder: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a checkpoint folder."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a segcl checkpoint (missing {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` of a checkpoint folder (no code is executed).

    When ``config.json`` records the file's SHA-256 (every checkpoint segcl writes does), a
    file that does not match it (tampered, bit-rotted, half-copied) is refused; so are weights
    holding NaN or Inf.
    """
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a segcl checkpoint (missing {WEIGHTS})")
    config_path = Path(folder) / CONFIG
    expected = None
    if config_path.is_file():
        try:
            expected = json.loads(config_path.read_text()).get(WEIGHTS_SHA256)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            expected = None  # read_config reports a bad config.json where it matters
    if expected is not None and file_sha256(path) != expected:
        raise CheckpointError(f"{path}: SHA-256 does not match the one recorded in {CONFIG} "
                              "(the file was modified or corrupted)")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} holds NaN or Inf"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return weights


def read_training_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the resume state written next to a checkpoint."""
    folder = Path(folder)
    if not (folder / STATE_META).is_file() or not (folder / STATE_TENSORS).is_file():
        raise CheckpointError(f"{folder}: no training state to resume from")
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
        meta = json.loads((folder / STATE_META).read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: unreadable training state ({err})") from err
    return tensors, meta


def load_state_into(
    module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str, strict: bool = True
) -> list[str]:
    """Load ``weights`` into ``module``; shape or key mismatches become one CheckpointError line.

    Returns the module keys that were not found in ``weights`` (only when ``strict`` is False).
    """
    own = module.state_dict()
    bad = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: weights do not fit this model ({len(bad)} mismatched tensors, e.g. '{k}' "
            f"{tuple(weights[k].shape)} vs {tuple(own[k].shape)})"
        )
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if strict and (missing or unexpected):
        example = (missing or unexpected)[0]
        raise CheckpointError(
            f"{source}: weights do not fit this model ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys, e.g. '{example}')"
        )
    module.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    return missing


def checkpoint_config(
    model_config: dict[str, Any],
    info: Any,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: tuple[int, int],
    method: str,
    command: str | None = None,
    metrics: dict[str, Any] | None = None,
    heads: list[str] | None = None,
    encoder_weights: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint: everything needed to rebuild and use the model.

    ``encoder_weights`` records where the encoder started (``--encoder-weights``: source, timm
    tag, Hub repository and commit, sha256 of the file; see
    :class:`segcl.models.weights.EncoderWeights`); ``None`` for random initialisation (or
    ``--init``, recorded in the run's ``train`` section).
    """
    from segcl import __version__

    return {
        "segcl_version": __version__,
        "method": method,
        "dataset": info.name,
        "command": command,
        "model": model_config,
        "data": {
            "classes": info.classes,
            "ignore_index": info.ignore_index,
            "palette": [list(c) for c in info.palette] if info.palette else None,
            "mean": list(mean),
            "std": list(std),
            "image_size": list(image_size),
        },
        "heads": heads or [],
        "metrics": metrics or {},
        "encoder_weights": encoder_weights,
    }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


#: what the inference path reads from a checkpoint's config.json: (section, key) -> (check, text)
CONFIG_SCHEMA: dict[tuple[str, str], tuple[Any, str]] = {
    ("model", "encoder"): (lambda v: isinstance(v, str) and v, "a timm model name"),
    ("model", "decoder"): (lambda v: isinstance(v, str) and v, "a decoder name"),
    ("model", "num_classes"): (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("data", "classes"): (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
                          "a list of class names"),
    ("data", "ignore_index"): (_is_int, "an integer"),
    ("data", "image_size"): (lambda v: isinstance(v, list) and len(v) == 2
                             and all(_is_int(x) and x > 0 for x in v),
                             "[height, width] with positive integers"),
    ("data", "mean"): (lambda v: isinstance(v, list) and v and all(map(_is_number, v)),
                       "a list of numbers"),
    ("data", "std"): (lambda v: isinstance(v, list) and v and all(_is_number(x) and x > 0
                                                                    for x in v),
                      "a list of positive numbers"),
}


def check_model_config(config: dict[str, Any], path: str | Path) -> None:
    """Check the keys the inference path reads (:data:`CONFIG_SCHEMA`); a CheckpointError names
    the file, the key and the expected type."""
    for (section, key), (ok, text) in CONFIG_SCHEMA.items():
        part = config.get(section)
        if not isinstance(part, dict):
            raise CheckpointError(f"{path}: no '{section}' section; not a segcl checkpoint")
        if key not in part:
            raise CheckpointError(f"{path}: '{section}.{key}' is missing (expected {text})")
        if not ok(part[key]):
            raise CheckpointError(f"{path}: '{section}.{key}' must be {text}, got "
                                  f"{part[key]!r}")


def load_model(
    ref: str | Path, device: str | torch.device = "cpu", revision: str | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a :class:`SegmentationModel` from a model reference and load its weights.

    ``ref`` is a run directory, a checkpoint folder, ``hf://user/name[@rev]`` or a registry name.
    Projection heads stored with pre-training checkpoints are ignored.
    """
    from segcl.hub.refs import resolve_model_ref
    from segcl.models import SegmentationModel

    folder = resolve_model_ref(ref, revision=revision)
    config = read_config(folder)
    check_model_config(config, folder / CONFIG)
    try:
        model = SegmentationModel.from_dict(config["model"])
    except ConfigError as err:
        raise CheckpointError(f"{folder / CONFIG}: {err}") from err
    weights = {k: v for k, v in read_weights(folder).items() if not k.startswith("heads.")}
    load_state_into(model, weights, str(folder / WEIGHTS))
    return model.to(device).eval(), config
