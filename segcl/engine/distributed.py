"""Multi-process training under ``torchrun``: process group, device, DDP wrapping, reductions.

``torchrun --nproc_per_node N -m segcl pretrain ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` (and the rendezvous address) in every process. :func:`setup` turns that into an
initialised process group -- NCCL on CUDA, Gloo on CPU -- and one device per process. Without
those variables (or with ``WORLD_SIZE=1``) everything here is a no-op, so a training loop is
written once for one or many processes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from segcl.engine.runtime import resolve_device
from segcl.errors import ConfigError

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process stands: its rank, the number of processes and its device.

    ``owns_group`` is True when :func:`setup` created the process group (and
    :func:`teardown` should destroy it).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from err


def launched_distributed() -> bool:
    """True when this process was started by torchrun with more than one process."""
    return _env_int("WORLD_SIZE", 1) > 1


def setup(device_name: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Resolve the device and, under torchrun with ``WORLD_SIZE > 1``, join the process group.

    On CUDA each process uses ``cuda:LOCAL_RANK`` (a bare ``--device cuda`` is mapped there);
    the backend is NCCL on CUDA and Gloo on CPU. An already initialised group is reused (and
    left alone by :func:`teardown`).
    """
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if world > 1 and device.type == "cuda":
        if device.index is None or device_name in ("cuda", "auto"):
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                       device=device, owns_group=owns)


def run(device_name: str, body: Callable[[DistContext], T]) -> T:
    """``body(ctx)`` between :func:`setup` and :func:`teardown`: the entry point of a training
    loop that works in one process or under torchrun. On an error the process group is torn down
    without waiting (the other processes may be mid-collective) and the error propagates."""
    ctx = setup(device_name)
    try:
        result = body(ctx)
    except BaseException:
        teardown(ctx, wait=False)
        raise
    teardown(ctx)
    return result


def teardown(ctx: DistContext, wait: bool = True) -> None:
    """Wait for every process (when ``wait``), then destroy the process group if :func:`setup`
    created it. Pass ``wait=False`` on an error path: the other processes may never arrive."""
    if ctx.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        if ctx.owns_group:
            dist.destroy_process_group()


def wrap(
    module: nn.Module, ctx: DistContext, find_unused_parameters: bool = False,
    sync_buffers: bool = True,
) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` itself.

    ``find_unused_parameters``: some parameters may get no gradient in a step (DDP then scans
    the graph each step instead of waiting for them forever). ``sync_buffers``: copy rank 0's
    buffers (batch-norm statistics, ...) to every process before each forward; they are copied
    once at wrapping either way.
    """
    if not ctx.enabled:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.14 renamed broadcast_buffers (now deprecated) to forward_sync_buffers
    name = ("forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
            else "broadcast_buffers")
    return ddp(module, device_ids=ids, find_unused_parameters=find_unused_parameters,
               **{name: sync_buffers})


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def mean_over_ranks(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Average scalar tensors over all processes (one all-reduce) and return Python floats."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if ctx.enabled:
        stacked = stacked.to(ctx.device)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked = stacked / ctx.world
    return dict(zip(keys, stacked.tolist(), strict=True))


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all processes, in place (one all-reduce), when a process group is
    initialised; else ``tensor`` unchanged. For statistics that every process must share (each
    process must call it, in the same order); no :class:`DistContext` needed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op with one process)."""
    if ctx.enabled:
        dist.barrier()
