"""Exponential moving average of the model's weights (``finetune --ema DECAY``).

Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control
Optim. 1992; as a teacher for consistency training: Tarvainen & Valpola, "Mean teachers are
better role models", NeurIPS 2017 (arXiv:1703.01780).

After every optimiser step ``t`` (counted from 1) each floating-point tensor of the model's
state (weights and batch-norm running statistics) is averaged::

    theta_ema <- d_t * theta_ema + (1 - d_t) * theta,
    d_t = min(d, 1 - t^(-2/3))          (d_1 = 0: the average starts as a copy)

so that early, rapidly changing weights are forgotten quickly (d_t is 0.95 at step 100 and
0.99 at step 1000), and integer buffers are copied. With ``--ema`` the averaged model is the
one validated, kept in ``best/`` and exported in ``last/``; ``--semi-teacher ema`` makes it
the teacher whose weak-view predictions become the pseudo-labels (in evaluation mode, with its
running statistics: UniMatch's published default is the student itself, ``d`` = 0.99 in mean
teachers).

The averaging is timm's ``ModelEmaV3`` (timm is a dependency already; it keeps the average in
place with ``torch._foreach`` ops and handles the decay warm-up above).
"""

from __future__ import annotations

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

#: the decay warm-up's power (``d_t = 1 - t^-power``)
WARMUP_POWER = 2 / 3


class WeightAverage:
    """The moving average of ``model`` (a deep copy, kept in evaluation mode)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)
        self._ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (evaluation mode; no gradients flow into it)."""
        return self._ema.module

    def decay_at(self, step: int) -> float:
        """``d_t`` of the update after optimiser step ``step`` (1-based)."""
        return self._ema.get_decay(step)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average ``model`` in after optimiser step ``step`` (1-based)."""
        self._ema.update(model, step)
