"""The one training loop of ``segcl pretrain`` and ``segcl finetune``.

A job builds its data, model and optimiser, then hands :func:`train_loop` a :class:`Job`: the
parts that differ between jobs (``forward``: batch -> loss; what happens at the end of an epoch;
how to save the resumable checkpoint). The loop owns everything they share, in plain view:
learning-rate schedule, mixed precision, gradient scaling and clipping, logging, mid-epoch
checkpoints (``--checkpoint-every``) and resuming mid-epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from segcl.config import OptimConfig
from segcl.engine import distributed
from segcl.engine.callbacks import Callback
from segcl.engine.data_setup import EpochSampler
from segcl.engine.optim import lr_factor, set_lr
from segcl.engine.rundir import RunDir
from segcl.engine.runtime import autocast, to_device
from segcl.engine.state import CheckpointEvery, TrainState
from segcl.errors import ConfigError


@dataclass
class Job:
    """What one training job gives the loop.

    Attributes:
        name: for messages (``finetune``, ``pretrain simclr``).
        loader / sampler: the training batches; the sampler is told the epoch (and how many
            batches of it a resumed run already trained on).
        forward: ``(batch on the device, step) -> (loss, {term: value})``.
        params: the parameters whose gradient norm ``optim.grad_clip`` bounds.
        save_last: write the resumable ``last/`` checkpoint.
        end_epoch: called after every epoch (validation, checkpoints); returns True to stop
            training early.
        last_logs: the values of the latest logged step, updated in place (checkpoints record
            them).
        after_step: called with the new step count after every optimiser step (the moving
            average of the weights, ``--ema``).
    """

    name: str
    loader: Iterable[dict[str, Any]]
    sampler: EpochSampler
    batch_size: int
    total_steps: int
    forward: Callable[[dict[str, Any], int], tuple[Tensor, dict[str, Tensor]]]
    params: Callable[[], Iterable[Tensor]]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    optim: OptimConfig
    amp: torch.dtype | None
    device: torch.device
    channels_last: bool
    log_every: int
    checkpoint_every: str | None
    save_last: Callable[[], None]
    end_epoch: Callable[[], bool]
    last_logs: dict[str, float] = field(default_factory=dict)
    after_step: Callable[[int], None] | None = None


def train_loop(job: Job, st: TrainState, run: RunDir, ctx: distributed.DistContext,
               cb: Callback) -> None:
    """Train ``job`` from ``st`` (updated in place) to ``job.total_steps``, or until
    ``job.end_epoch`` says stop. A non-finite loss stops the run with a ConfigError."""
    every = CheckpointEvery(job.checkpoint_every)
    steps_per_epoch = len(job.loader)  # type: ignore[arg-type]
    while st.step < job.total_steps:
        job.sampler.set_epoch(st.epoch, skip=st.epoch_step * job.batch_size)
        t0, seen = time.perf_counter(), 0
        for batch in job.loader:
            batch = to_device(batch, job.device, job.channels_last)
            lr = set_lr(job.optimizer, job.optim.lr,
                        lr_factor(st.step, job.total_steps, job.optim.warmup_steps,
                                  job.optim.min_lr_ratio))
            with autocast(job.device, job.amp):
                loss, terms = job.forward(batch, st.step)
            job.optimizer.zero_grad(set_to_none=True)
            job.scaler.scale(loss).backward()
            if job.optim.grad_clip:
                job.scaler.unscale_(job.optimizer)
                torch.nn.utils.clip_grad_norm_(job.params(), job.optim.grad_clip)
            job.scaler.step(job.optimizer)
            job.scaler.update()
            st.step += 1
            st.epoch_step += 1
            if job.after_step is not None:
                job.after_step(st.step)
            seen += job.batch_size * ctx.world  # (the loaders drop incomplete batches)
            if st.step % job.log_every == 0 or st.step == job.total_steps:
                values = distributed.mean_over_ranks({"loss": loss, **terms}, ctx)
                if not math.isfinite(values["loss"]):
                    raise ConfigError(f"the {job.name} loss became {values['loss']} at step "
                                      f"{st.step}; lower --lr or set a gradient clip")
                job.last_logs.clear()
                job.last_logs.update({k: round(v, 5) for k, v in values.items()})
                ips = seen / max(1e-9, time.perf_counter() - t0)
                record = {"step": st.step, "epoch": st.epoch + 1, "lr": lr,
                          "images_per_s": round(ips, 2), **job.last_logs}
                run.log(record)
                cb.on_step(st.step, record)
            if st.step >= job.total_steps:
                break
            if ctx.is_main and every.due(st.step) and st.epoch_step < steps_per_epoch:
                job.save_last()  # mid-epoch: --checkpoint-every
        st.epoch += 1
        st.epoch_step = 0
        if job.end_epoch():
            break
