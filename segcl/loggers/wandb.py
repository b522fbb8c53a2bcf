"""Weights & Biases: one W&B run per segcl run, offline unless ``WANDB_MODE`` says otherwise.

Needs the ``wandb`` package (``pip install 'segcl[wandb]'``). The run lives in ``RUN/wandb/``
(``wandb sync RUN/wandb/offline-run-*`` uploads an offline run later; ``WANDB_MODE=online``
streams it), in the project ``WANDB_PROJECT`` (default ``segcl``), named after the run folder,
with the configuration as its config. Scalars and preview strips are logged at their step.

Resume: the W&B run id is kept in ``RUN/wandb.json`` and the resumed run joins the same id
(``resume="allow"``); W&B ignores values logged at a step below the run's current step, so no
step appears twice once the parts are synced.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np

from segcl.engine.callbacks import RunInfo
from segcl.errors import ConfigError
from segcl.loggers.base import Logger, read_state, require, write_state

STATE_FILE = "wandb.json"
DEFAULT_PROJECT = "segcl"


class WandbLogger(Logger):
    """``--logger wandb``."""

    def __init__(self) -> None:
        self._wandb = require("wandb", "wandb", "wandb")
        self.wb: Any = None

    def open(self, run: RunInfo) -> None:
        state = read_state(run.path / STATE_FILE) if run.resume else None
        run_id = state["id"] if state else uuid.uuid4().hex[:12]
        try:
            self.wb = self._wandb.init(
                dir=str(run.path), id=run_id, resume="allow", name=run.path.name,
                project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, config=run.config,
                mode=None if os.environ.get("WANDB_MODE") else "offline",
                settings=self._wandb.Settings(silent=True, console="off"))
        except self._wandb.errors.Error as err:
            raise ConfigError(f"--logger wandb: {' '.join(str(err).split())}") from None
        write_state(run.path / STATE_FILE, {"id": run_id})

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self.wb.log(values, step=step)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        self.wb.log({k: self._wandb.Image(v) for k, v in images.items()}, step=step)

    def close(self) -> None:
        if self.wb is not None:
            self.wb.finish()
            self.wb = None
