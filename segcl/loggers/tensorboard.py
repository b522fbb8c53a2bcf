"""TensorBoard: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``).

Written with :class:`torch.utils.tensorboard.SummaryWriter` (needs the ``tensorboard`` package:
``pip install 'segcl[tensorboard]'``). Scalars, the configuration (as text, on a fresh run) and
the validation strips (``val/prediction/<image>``, one image per validation step).

Resume: the writer continues in the same folder with ``purge_step = start_step + 1``, so
TensorBoard hides whatever the interrupted run logged after its last checkpoint and shows the
resumed run's steps once. A fresh run (after ``--overwrite``) removes the folder's old event
files first.
"""

from __future__ import annotations

import numpy as np
import yaml

from segcl.engine.callbacks import RunInfo
from segcl.loggers.base import Logger, require

FOLDER = "tensorboard"


class TensorBoardLogger(Logger):
    """``--logger tensorboard``."""

    def __init__(self) -> None:
        self._writer_class = require("torch.utils.tensorboard", "tensorboard",
                                     "tensorboard").SummaryWriter
        self.writer = None

    def open(self, run: RunInfo) -> None:
        folder = run.path / FOLDER
        if not run.resume and folder.is_dir():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = self._writer_class(
            str(folder), purge_step=run.start_step + 1 if run.resume else None)
        if not run.resume:
            text = yaml.safe_dump(run.config, sort_keys=False)
            self.writer.add_text("config", "```\n" + text + "```", 0)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        for key, image in images.items():
            self.writer.add_image(key, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
