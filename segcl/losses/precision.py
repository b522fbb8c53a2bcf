"""Float32 similarities under mixed precision: the contrastive losses run with autocast off."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F_ = TypeVar("F_", bound=Callable)


def autocast_off(fn: F_) -> F_:
    """Run ``fn`` with CUDA and CPU autocast disabled, so similarities stay float32 even when the
    training step runs under mixed precision (``exp(1/0.07)`` overflows fp16)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
