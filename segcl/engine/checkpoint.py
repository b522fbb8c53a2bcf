"""Rebuild a model from any model reference (the format itself: :mod:`segcl.checkpoint`)."""

from __future__ import annotations

from pathlib import Path

import torch

from segcl.checkpoint import (
    CONFIG,
    WEIGHTS,
    CheckpointConfig,
    load_state_into,
    read_config,
    read_weights,
)
from segcl.errors import CheckpointError, ConfigError


def load_model(
    ref: str | Path, device: str | torch.device = "cpu", revision: str | None = None
) -> tuple[torch.nn.Module, CheckpointConfig]:
    """Rebuild a :class:`SegmentationModel` from a model reference and load its weights.

    ``ref`` is a run directory, a checkpoint folder, ``hf://user/name[@rev]`` or a registry name.
    Projection heads stored with pre-training checkpoints are ignored.
    """
    from segcl.hub.refs import resolve_model_ref
    from segcl.models import SegmentationModel

    folder = resolve_model_ref(ref, revision=revision)
    config = read_config(folder)
    try:
        model = SegmentationModel.from_dict(config.model)
    except ConfigError as err:
        raise CheckpointError(f"{folder / CONFIG}: {err}") from err
    weights = {k: v for k, v in read_weights(folder).items() if not k.startswith("heads.")}
    load_state_into(model, weights, str(folder / WEIGHTS))
    return model.to(device).eval(), config
