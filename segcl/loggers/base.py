"""What every logger shares: the optional package check, scalar names, preview strips and the
small JSON file a logger keeps in the run folder."""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from segcl.engine.callbacks import Callback, RunInfo
from segcl.errors import ConfigError

#: record keys that are not logged as scalars (they are the step / the record's kind)
NOT_SCALARS = ("step", "epoch", "split", "note")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")


def require(module: str, logger: str, package: str) -> ModuleType:
    """Import ``module`` or fail with one line naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--logger {logger} needs the {package} package: "
                          f"pip install 'segcl[{logger}]'") from None


def metric_name(*parts: str) -> str:
    """``train/loss``, ``val/iou/sign_symbol``: parts joined by ``/``, characters that some
    trackers refuse (MLflow) replaced by ``_``."""
    return "/".join(_UNSAFE.sub("_", str(p)) for p in parts)


def scalars(prefix: str, record: dict[str, Any], classes: list[str]) -> dict[str, float]:
    """The finite numbers of a metrics record as ``{prefix/key: value}``; a per-class list
    (``iou``) becomes ``prefix/iou/<class>``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in NOT_SCALARS:
            continue
        if isinstance(value, (list, tuple)) and len(value) == len(classes):
            for name, v in zip(classes, value, strict=True):
                if _finite(v):
                    out[metric_name(prefix, key, name)] = float(v)
        elif _finite(value):
            out[metric_name(prefix, key)] = float(value)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
        and math.isfinite(v)


def read_state(path: Path) -> dict[str, Any] | None:
    """A logger's JSON state file in the run folder, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Write a logger's state file atomically."""
    from segcl.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


class Logger(Callback):
    """Base of the loggers: turns the engine's events into ``log_scalars`` / ``log_images``.

    Subclasses implement :meth:`open` (on :meth:`on_run`: start or continue the run),
    :meth:`log_scalars`, :meth:`log_images` and :meth:`close`.
    """

    run: RunInfo | None = None

    def open(self, run: RunInfo) -> None:
        raise NotImplementedError

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---- the engine's events ------------------------------------------------------------------
    def on_run(self, run: RunInfo) -> None:
        self.run = run
        self.open(run)

    def on_step(self, step: int, logs: dict[str, Any]) -> None:
        if self.run is None or step < 0:  # (step -1: evaluation progress)
            return
        values = scalars("train", logs, self.run.classes)
        if values:
            self.log_scalars(step, values)

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        values = scalars("val", metrics, self.run.classes)
        if values:
            self.log_scalars(step, values)
        if self.run.previews is not None:
            from segcl.viz import prediction_panel

            images = {metric_name("val", "prediction", p.name):
                      prediction_panel(p.image, p.truth, p.prediction, self.run.palette)
                      for p in self.run.previews(step)}
            if images:
                self.log_images(step, images)

    def on_end(self, result: dict[str, Any]) -> None:
        if self.run is not None:
            self.close()
            self.run = None
