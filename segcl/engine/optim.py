"""Optimiser (SGD / AdamW, no weight decay on norms and biases) and warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from segcl.config import OptimConfig
from segcl.errors import ConfigError


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Split parameters into decayed (weights of convs/linears) and non-decayed (norms, biases)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(modules: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over ``modules``."""
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ConfigError(f"unknown optimizer '{cfg.name}'; choose sgd or adamw")


def lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's learning rate to ``base_lr * factor`` and return it."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
