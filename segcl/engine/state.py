"""Resumable training state: step counters, optimiser, grad scaler and RNG, without pickles."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from segcl.engine.checkpoint import flatten_optimizer_state, unflatten_optimizer_state


@dataclass
class TrainState:
    """Counters of a run. ``epoch`` counts completed epochs; ``best_metric`` is the val mIoU."""

    step: int = 0
    epoch: int = 0
    best_metric: float = -1.0
    best_step: int = -1


def pack(
    state: TrainState, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (optimiser buffers, RNG state) and JSON metadata for ``training_state.*``."""
    tensors, optim_meta = flatten_optimizer_state(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    meta: dict[str, Any] = {"state": asdict(state), "optimizer": optim_meta}
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = {k: (v.item() if torch.is_tensor(v) else v)
                          for k, v in scaler.state_dict().items()}
    return tensors, meta


def unpack(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> TrainState:
    """Restore the optimiser, grad scaler and torch RNG; return the counters."""
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    return TrainState(**meta["state"])
