"""Callbacks: the engine never prints; it reports progress to these hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Preview:
    """One validation image with its masks, at the training size: ``image`` (H, W, 3) uint8,
    ``truth`` and ``prediction`` (H, W) class indices (``truth`` holds the ignore index where
    unlabelled)."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


@dataclass
class RunInfo:
    """What a training run tells its callbacks once its folder and configuration are ready
    (:meth:`Callback.on_run`), before the first step.

    Attributes:
        path: the run directory (a logger keeps its files or its run id there).
        kind: ``finetune`` or ``pretrain``.
        resume: whether the run continues from ``start_step``; steps after it are logged again.
        start_step: the step the run starts from (0 for a fresh run).
        config: the run's configuration as a plain dictionary (``config.yaml``).
        classes / palette / ignore_index: the dataset's classes, their RGB colours (None: the
            default palette of :func:`segcl.viz.default_palette`), and the label of unlabelled
            pixels.
        previews: for runs with validation, ``previews(step)`` returns a few fixed validation
            images with the current model's predictions (computed once per step, on demand);
            None when the run has no validation.
    """

    path: Path
    kind: str
    resume: bool
    start_step: int
    config: dict[str, Any]
    classes: list[str]
    palette: list[tuple[int, int, int]] | None
    ignore_index: int
    previews: Callable[[int], list[Preview]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.palette is None:
            from segcl.viz import default_palette

            self.palette = default_palette(len(self.classes))


class Callback:
    """No-op base. The CLI supplies a rich progress bar; loggers (:mod:`segcl.loggers`) write
    the scalars elsewhere; tests may record events."""

    def on_run(self, run: RunInfo) -> None: ...

    def on_start(self, total_steps: int, start_step: int, description: str) -> None: ...

    def on_step(self, step: int, logs: dict[str, Any]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None: ...

    def on_message(self, message: str) -> None: ...

    def on_end(self, result: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Fan out every event to several callbacks."""

    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def on_run(self, run: RunInfo) -> None:
        for cb in self.callbacks:
            cb.on_run(run)

    def on_start(self, total_steps: int, start_step: int, description: str) -> None:
        for cb in self.callbacks:
            cb.on_start(total_steps, start_step, description)

    def on_step(self, step: int, logs: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_step(step, logs)

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_eval(step, metrics)

    def on_message(self, message: str) -> None:
        for cb in self.callbacks:
            cb.on_message(message)

    def on_end(self, result: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_end(result)
