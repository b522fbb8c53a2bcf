"""The files of a checkpoint folder, and the only code in segcl that opens a safetensors file.

A checkpoint folder holds ``model.safetensors`` (the weights), ``config.json`` (a
:class:`~segcl.checkpoint.config.CheckpointConfig`: everything needed to rebuild and use the
model, with the SHA-256 of the weights) and ``README.md`` (a model card generated from
``config.json``). A checkpoint a run can resume from also holds its optimiser state as
``training_state.safetensors`` (tensors) plus ``training_state.json`` (everything else).

The folder is written as ``NAME.tmp`` and swapped in (:func:`segcl.fileio.atomic_write_folder`),
so a run killed at any moment leaves the previous or the new checkpoint, never a torn one.
Reading never executes code: safetensors and JSON only, never pickles. torch is imported only
by the functions that need it, so ``segcl hub`` commands do not load it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from segcl.checkpoint.card import render_model_card
from segcl.checkpoint.config import CONFIG, WEIGHTS_SHA256, CheckpointConfig
from segcl.errors import CheckpointError
from segcl.fileio import atomic_write_folder, recover_folder

if TYPE_CHECKING:
    import torch

WEIGHTS = "model.safetensors"
CARD = "README.md"
STATE_TENSORS = "training_state.safetensors"
STATE_META = "training_state.json"
#: the files of a checkpoint that travel (to the Hub and back)
CHECKPOINT_FILES = (WEIGHTS, CONFIG, CARD)
#: the files a folder needs to be loaded as a checkpoint
REQUIRED_FILES = (WEIGHTS, CONFIG)

__all__ = [
    "CARD", "CHECKPOINT_FILES", "CONFIG", "REQUIRED_FILES", "STATE_META", "STATE_TENSORS",
    "WEIGHTS", "WEIGHTS_SHA256", "check_safetensors_header", "file_sha256",
    "flatten_optimizer_state", "load_state_into", "read_config", "read_safetensors",
    "read_training_state", "read_weights", "recover", "save_checkpoint",
    "unflatten_optimizer_state",
]


def recover(folder: str | Path) -> Path:
    """Return ``folder``, restoring it from ``folder.old`` if a swap was interrupted."""
    return recover_folder(folder)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (no code is executed); an unreadable file is one
    CheckpointError line naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err


def check_safetensors_header(path: Path) -> None:
    """Refuse a file whose safetensors header is malformed (reads the header only)."""
    try:
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) != 8:
                raise ValueError("shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw_len)
            if length <= 0 or length > min(100 * 1024 * 1024, path.stat().st_size - 8):
                raise ValueError(f"header length {length} is out of range")
            header = json.loads(handle.read(length))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser ``state_dict`` into safetensors-able tensors and JSON metadata."""
    import torch

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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_checkpoint(
    folder: str | Path,
    weights: dict[str, torch.Tensor],
    config: CheckpointConfig,
    training_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Atomically write a checkpoint folder (and, optionally, the resume state).

    ``config.json`` is ``config`` with the SHA-256 of the weights just written
    (:data:`WEIGHTS_SHA256`); the card is rendered from it.
    """
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
                  str(tmp / WEIGHTS))
        document = config.with_weights_sha256(file_sha256(tmp / WEIGHTS)).to_dict()
        (tmp / CONFIG).write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
        (tmp / CARD).write_text(render_model_card(document), encoding="utf-8")
        if training_state is not None:
            tensors, meta = training_state
            save_file(tensors, str(tmp / STATE_TENSORS))
            (tmp / STATE_META).write_text(json.dumps(meta, default=_json_default))

    return atomic_write_folder(folder, write)


def read_config(folder: str | Path) -> CheckpointConfig:
    """The checked ``config.json`` of a checkpoint folder (:meth:`CheckpointConfig.from_file`)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a segcl checkpoint (missing {CONFIG})")
    return CheckpointConfig.from_file(path)


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` of a checkpoint folder (no code is executed).

    When ``config.json`` records the file's SHA-256 (every checkpoint segcl writes does), a
    file that does not match it (tampered, bit-rotted, half-copied) is refused; so are weights
    holding NaN or Inf.
    """
    import torch

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a segcl checkpoint (missing {WEIGHTS})")
    expected = CheckpointConfig.recorded_sha256(Path(folder) / CONFIG)
    if expected is not None and file_sha256(path) != expected:
        raise CheckpointError(f"{path}: SHA-256 does not match the one recorded in {CONFIG} "
                              "(the file was modified or corrupted)")
    weights = read_safetensors(path)
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor {bad[0]} holds NaN or Inf"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
    return weights


def read_training_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the resume state written next to a checkpoint (CheckpointError naming the file
    when it is missing, unreadable, or not shaped like a training state)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / STATE_META).is_file() or not (folder / STATE_TENSORS).is_file():
        raise CheckpointError(f"{folder}: no training state to resume from")
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
        meta = json.loads((folder / STATE_META).read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: unreadable training state ({err})") from err
    optim = meta.get("optimizer") if isinstance(meta, dict) else None
    if not (isinstance(meta.get("state") if isinstance(meta, dict) else None, dict)
            and isinstance(optim, dict) and isinstance(optim.get("state"), dict)
            and isinstance(optim.get("param_groups"), list)):
        raise CheckpointError(f"{folder / STATE_META}: not a training state (expected "
                              "'state' and 'optimizer' with 'state' and 'param_groups')")
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


def load_prefixed_state(module: torch.nn.Module, folder: str | Path, prefix: str,
                        missing_hint: str, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Load the tensors saved under ``prefix`` in ``folder``'s weights into ``module`` (a
    method's training-only state in ``last/``); a CheckpointError naming the file and
    ``missing_hint`` when there are none. ``weights``: the folder's weights, if already read."""
    source = str(Path(folder) / WEIGHTS)
    weights = read_weights(folder) if weights is None else weights
    sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointError(f"{source}: no '{prefix}*' tensors; {missing_hint}")
    load_state_into(module, sub, source)
