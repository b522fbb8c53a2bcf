"""Rich progress reporting for the engine's callbacks."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from segcl.engine.callbacks import Callback

#: progress, messages and problems go to stderr; results go to stdout (``results``).
console = Console(stderr=True)
results = Console()


class RichProgress(Callback):
    """A progress bar with loss, lr, images/s and ETA; evaluation results printed above it."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None

    def on_start(self, total_steps: int, start_step: int, description: str) -> None:
        if self.quiet:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=total_steps, completed=start_step,
                                           info="")

    def on_step(self, step: int, logs: dict[str, Any]) -> None:
        if self.progress is None or step < 0:
            return
        parts = [f"loss {logs['loss']:.4f}"] if "loss" in logs else []
        if "lr" in logs:
            parts.append(f"lr {logs['lr']:.2e}")
        if "images_per_s" in logs:
            parts.append(f"{logs['images_per_s']:.1f} img/s")
        self.progress.update(self.task, completed=step, info=" ".join(parts))

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None:
        if self.quiet:
            return
        miou = metrics.get("miou")
        text = f"step {step}: val mIoU {miou * 100:.2f}" if miou is not None else f"step {step}"
        if "pixel_accuracy" in metrics:
            text += f", pixel acc {metrics['pixel_accuracy'] * 100:.2f}"
        console.print(text)

    def on_message(self, message: str) -> None:
        if not self.quiet:
            console.print(message)

    def on_end(self, result: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
