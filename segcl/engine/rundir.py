"""A run directory: effective config, metrics as JSON lines, plots, ``best/`` and ``last/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segcl.engine.checkpoint import STATE_META, recover
from segcl.errors import ConfigError


class RunDir:
    """Owns the files of one training run.

    Layout: ``config.yaml`` (effective configuration), ``metrics.jsonl`` (one JSON object per
    logged step / evaluation), ``curves.png``, ``best/`` (checkpoint with the best validation
    mIoU) and ``last/`` (latest checkpoint + optimiser state for ``--resume``).
    """

    def __init__(self, path: str | Path, resume: bool, write: bool = True):
        self.path = Path(path)
        self.write = write
        self.best = recover(self.path / "best")
        self.last = recover(self.path / "last")
        if resume and not (self.last / STATE_META).is_file():
            raise ConfigError(f"{self.path}: nothing to resume (no last/ checkpoint)")
        if not resume and (self.last.exists() or self.best.exists()):
            raise ConfigError(
                f"{self.path}: run directory already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    def truncate_metrics(self, step: int) -> None:
        """Drop records logged after ``step`` (the run resumes from there and logs them again)."""
        if not self.write or not self.metrics_path.exists():
            return
        kept = [
            line for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line."""
        if self.write:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """All JSON-lines records logged so far."""
        if not self.metrics_path.exists():
            return []
        return [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
