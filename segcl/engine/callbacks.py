"""Callbacks: the engine never prints; it reports progress to these hooks."""

from __future__ import annotations

from typing import Any


class Callback:
    """No-op base. The CLI supplies a rich progress bar; tests may record events."""

    def on_start(self, total_steps: int, start_step: int, description: str) -> None: ...

    def on_step(self, step: int, logs: dict[str, Any]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, Any]) -> None: ...

    def on_message(self, message: str) -> None: ...

    def on_end(self, result: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Fan out every event to several callbacks."""

    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

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
