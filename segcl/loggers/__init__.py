"""Experiment loggers: callbacks that send a run's scalars, learning rate and validation
previews to TensorBoard, MLflow or Weights & Biases.

``--logger jsonl,tensorboard,mlflow`` (several at once) picks them; ``jsonl``, the run's
``metrics.jsonl``, is always written by the run itself because ``--resume`` and the plots read
it. Every other logger is an optional extra (``pip install 'segcl[tensorboard]'``, ``[mlflow]``,
``[wandb]``) imported only when asked for; a missing package is a one-line error before any
work. The engine does not know them: it hands the configured names to :func:`attach` and
reports to the returned callback (:class:`~segcl.engine.callbacks.Callback`).

What each logger receives (names shared by all of them):

- ``train/<key>`` at every logged step: ``loss``, its terms (``ce``, ``dice``, ...), ``lr`` and
  ``images_per_s``, exactly the numbers of ``metrics.jsonl``;
- ``val/<key>`` at every validation (fine-tuning): ``miou``, ``pixel_accuracy``, ... and
  ``val/iou/<class>``;
- ``val/prediction/<image>``: a few fixed validation images (``--log-images``, spread over the
  split) as a strip of image | true mask | predicted mask in the dataset's palette.

On ``--resume`` a logger continues what it started (its state lives in the run folder) and
avoids duplicate steps; see each module.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from segcl.engine.callbacks import Callback, CallbackList

#: logger name -> (module, class); ``jsonl`` is the run's own metrics.jsonl
LOGGERS: dict[str, tuple[str, str] | None] = {
    "jsonl": None,
    "tensorboard": ("segcl.loggers.tensorboard", "TensorBoardLogger"),
    "mlflow": ("segcl.loggers.mlflow", "MLflowLogger"),
    "wandb": ("segcl.loggers.wandb", "WandbLogger"),
}


def build_loggers(names: Sequence[str]) -> list[Callback]:
    """The logger callbacks of ``names`` (``jsonl`` needs none); ConfigError naming the extra
    to install when a logger's package is missing."""
    from segcl.errors import ConfigError

    loggers: list[Callback] = []
    for name in dict.fromkeys(names):
        if name not in LOGGERS:
            raise ConfigError(f"--logger must be one of {', '.join(LOGGERS)}, got {name!r}")
        target = LOGGERS[name]
        if target is not None:
            module, cls = target
            loggers.append(getattr(importlib.import_module(module), cls)())
    return loggers


def attach(callback: Callback, names: Sequence[str]) -> Callback:
    """``callback`` followed by the loggers of ``names`` (just ``callback`` when there are
    none)."""
    loggers = build_loggers(names)
    return CallbackList([callback, *loggers]) if loggers else callback


__all__ = ["LOGGERS", "attach", "build_loggers"]
