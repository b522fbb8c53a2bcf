"""MLflow: one MLflow run per segcl run, its id kept in ``RUN/mlflow.json``.

Needs the ``mlflow`` package (``pip install 'segcl[mlflow]'``). The tracking store is MLflow's
own choice: ``MLFLOW_TRACKING_URI`` (a server, ``sqlite:///mlflow.db``, ...) or MLflow's default;
the experiment is ``MLFLOW_EXPERIMENT_NAME`` or ``segcl``; the MLflow run is named after the run
folder. A fresh run logs the flattened configuration as parameters; every logged step logs the
scalars as metrics (at that step); every validation logs the preview strips as images
(``mlflow.log_image`` with a key and step).

Resume: the run continues the MLflow run recorded in ``mlflow.json`` (same tracking URI, same
run id, status set back to running). MLflow keeps every value ever logged, so steps the
interrupted run had already logged after its last checkpoint are not logged again (per metric,
steps up to the last one MLflow holds are skipped; images likewise, up to the last ``val/miou``
step): no step appears twice.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from segcl.engine.callbacks import RunInfo
from segcl.errors import ConfigError
from segcl.loggers.base import Logger, read_state, require, write_state

STATE_FILE = "mlflow.json"
DEFAULT_EXPERIMENT = "segcl"
_MAX_PARAM = 500  # characters of a parameter value (MLflow refuses very long values)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.01}}`` -> ``{"optim.lr": "0.01"}`` (values as text, shortened)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:_MAX_PARAM]
    return out


class MLflowLogger(Logger):
    """``--logger mlflow``."""

    def __init__(self) -> None:
        self._mlflow = require("mlflow", "mlflow", "mlflow")
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # metric -> last step MLflow already holds

    def open(self, run: RunInfo) -> None:
        from mlflow.exceptions import MlflowException

        state = read_state(run.path / STATE_FILE) if run.resume else None
        uri = state["tracking_uri"] if state else self._mlflow.get_tracking_uri()
        try:
            self.client = self._mlflow.MlflowClient(tracking_uri=uri)
            if state:
                self.run_id = state["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged = self._last_steps()
            else:
                self._start(run, uri)
        except MlflowException as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--logger mlflow: tracking store {uri}: {first}") from None

    def _start(self, run: RunInfo, uri: str) -> None:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name))
        created = self.client.create_run(
            experiment_id, run_name=run.path.name,
            tags={"segcl.kind": run.kind, "segcl.run_dir": str(run.path.resolve())})
        self.run_id = created.info.run_id
        params = [Param(k, v) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        write_state(run.path / STATE_FILE, {"tracking_uri": uri, "experiment_id": experiment_id,
                                            "run_id": self.run_id})

    def _last_steps(self) -> dict[str, int]:
        keys = self.client.get_run(self.run_id).data.metrics
        return {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)),
                       default=-1) for k in keys}

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()
                   if step > self.logged.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if step <= self.logged.get("val/miou", -1):
            return
        for key, image in images.items():
            self.client.log_image(self.run_id, image, key=key, step=step)

    def close(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
            self.run_id = None
