"""Encoder weights trained elsewhere: a local ``.safetensors`` file or a Hub repository.

``--encoder-weights`` accepts

- ``path/to/weights.safetensors``: a timm state dict (or a segcl checkpoint's ``encoder.*`` keys);
- ``hf://user/name[@revision]`` or timm's ``hf-hub:user/name``: the repository's
  ``model.safetensors`` (needs network access, or a warm Hugging Face cache offline).

Only safetensors files are read: loading never executes code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from segcl.errors import CheckpointError, ConfigError
from segcl.models.encoder import TimmEncoder


def _locate(source: str) -> Path:
    if source.startswith(("hf://", "hf-hub:")):
        from segcl.hub.refs import parse_hf_ref
        from segcl.hub.remote import fetch_file

        ref = source if source.startswith("hf://") else "hf://" + source[len("hf-hub:"):]
        repo_id, revision = parse_hf_ref(ref)
        return fetch_file(repo_id, "model.safetensors", revision)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{source}: encoder weights not found (a .safetensors file, hf://user/"
                          "name or hf-hub:user/name)")
    return path


def encoder_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as the timm model inside :class:`TimmEncoder` names them (``encoder.model.`` and
    ``encoder.`` prefixes of segcl checkpoints are stripped)."""
    for prefix in ("encoder.model.", "encoder."):
        if any(k.startswith(prefix) for k in weights):
            return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return weights


def load_encoder_weights(encoder: TimmEncoder, source: str) -> int:
    """Load weights from ``source`` into ``encoder``; returns the number of tensors loaded.

    Keys the feature extractor does not have (a classifier head) are skipped; a shape mismatch or
    no matching key at all is a :class:`CheckpointError`.
    """
    path = _locate(source)
    try:
        weights = encoder_state(load_file(str(path)))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    own = encoder.model.state_dict()
    matched = {k: v for k, v in weights.items() if k in own}
    bad = [k for k, v in matched.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: weights do not fit encoder '{encoder.name}' (e.g. "
                              f"'{bad[0]}' {tuple(matched[bad[0]].shape)} vs "
                              f"{tuple(own[bad[0]].shape)})")
    if not matched:
        raise CheckpointError(f"{source}: no tensor matches encoder '{encoder.name}'")
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} encoder tensors missing, e.g. "
                              f"'{missing[0]}'")
    encoder.model.load_state_dict(matched, strict=False)
    return len(matched)
