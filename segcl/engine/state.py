"""Resumable training state: step counters, optimiser, grad scaler and RNG, without pickles."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from segcl.checkpoint import STATE_META, flatten_optimizer_state, unflatten_optimizer_state
from segcl.config import parse_every
from segcl.errors import CheckpointError


@dataclass
class TrainState:
    """Counters of a run. ``epoch`` counts completed epochs, ``epoch_step`` the steps done in
    the current one (a checkpoint saved mid-epoch resumes there); ``best_metric`` is the val
    mIoU; ``stale_evals`` counts the validations since it last improved (early stopping: saved
    with the rest, so a resumed run stops where an uninterrupted one would)."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    best_metric: float = -1.0
    best_step: int = -1
    stale_evals: int = 0

    def record_eval(self, metric: float | None) -> bool:
        """Count one validation; True (and the new best) when ``metric`` beats the best so far.

        ``None`` (no class could be scored) never improves.
        """
        if metric is not None and metric > self.best_metric:
            self.best_metric, self.best_step, self.stale_evals = metric, self.step, 0
            return True
        self.stale_evals += 1
        return False

    def patience_spent(self, patience: int | None) -> bool:
        """Early stopping: ``patience`` validations in a row without improvement (0/None: off)."""
        return bool(patience) and self.stale_evals >= patience  # type: ignore[operator]


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
    """Restore the optimiser, grad scaler and torch RNG; return the counters.

    Raises:
        CheckpointError: the saved state does not fit this run's optimiser or counters.
    """
    try:
        optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        if scaler is not None and "scaler" in meta:
            scaler.load_state_dict(meta["scaler"])
        return TrainState(**meta["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{STATE_META} does not fit this run "
                              f"({type(err).__name__}: {err})") from err


class CheckpointEvery:
    """When to write the resumable ``last/`` checkpoint during an epoch: ``--checkpoint-every N``
    (every N steps) or ``Ns`` (at the first step after N seconds); ``None``: never mid-epoch."""

    def __init__(self, spec: str | None):
        self.steps, self.seconds = parse_every(spec)
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` (and, if so, restart the clock)."""
        hit = bool(self.steps and step % self.steps == 0) or bool(
            self.seconds and time.monotonic() - self.last >= self.seconds)
        if hit:
            self.last = time.monotonic()
        return hit
