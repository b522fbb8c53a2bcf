"""Multi-process training under ``torchrun``: process group, device, DDP wrapping, reductions.

``torchrun --nproc_per_node N -m segcl pretrain ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` (and the rendezvous address) in every process. :func:`setup` turns that into an
initialised process group -- NCCL on CUDA, Gloo on CPU -- and one device per process. Without
those variables (or with ``WORLD_SIZE=1``) everything here is a no-op, so a training loop is
written once for one or many processes.

The process group lives as long as the process: the first job creates it, later jobs in the same
process (a benchmark, a sweep, pretraining then fine-tuning) reuse it, and it is destroyed at
exit. It is never destroyed and created again: under torchrun every group is rendezvoused through
the launcher's key-value store, and a default group created after ``destroy_process_group`` gets
the same store keys as the one before, so a process that reads them before its peer rewrites
them connects to the dead group's address (gloo: "Connection reset by peer" or a hang until the
timeout, depending on timing -- seen on CamVid, where the processes reach the new group seconds
apart).

A collective that waits longer than ``SEGCL_DIST_TIMEOUT`` seconds (default 1800) fails instead
of hanging: one process stuck or gone ends the run with an error in the others.
"""

from __future__ import annotations

import atexit
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

#: environment variable: seconds a collective may wait for the other processes
TIMEOUT_ENV = "SEGCL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800


@dataclass
class DistContext:
    """Where this process stands: its rank, the number of processes and its device.

    ``owns_group`` is True when segcl created the process group (:func:`setup`, in this job or
    an earlier one of this process); it is destroyed at exit, not by :func:`teardown`.
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


def dist_timeout_s() -> int:
    """Seconds a collective may wait: ``SEGCL_DIST_TIMEOUT`` (a positive integer), default
    :data:`DEFAULT_TIMEOUT_S`."""
    timeout = _env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    if timeout <= 0:
        raise ConfigError(f"environment variable {TIMEOUT_ENV}={timeout} must be > 0 (seconds)")
    return timeout


#: the process group segcl created in this process (destroyed at exit), None until then
_OWN_GROUP: object | None = None


def _destroy_own_group() -> None:
    """At exit: destroy the process group that :func:`setup` created, if it is still there."""
    global _OWN_GROUP
    if _OWN_GROUP is not None and dist.is_initialized() and dist.group.WORLD is _OWN_GROUP:
        dist.destroy_process_group()
    _OWN_GROUP = None


def setup(device_name: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Resolve the device and, under torchrun with ``WORLD_SIZE > 1``, join the process group.

    On CUDA each process uses ``cuda:LOCAL_RANK`` (a bare ``--device cuda`` is mapped there);
    the backend is NCCL on CUDA and Gloo on CPU. The group is created once per process (with
    ``timeout_s``, default :func:`dist_timeout_s`) and destroyed at exit; an already
    initialised group -- segcl's from an earlier job, or the caller's own -- is reused.
    """
    global _OWN_GROUP
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
    if not dist.is_initialized():
        timeout = dist_timeout_s() if timeout_s is None else timeout_s
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
        if _OWN_GROUP is None:
            atexit.register(_destroy_own_group)
        _OWN_GROUP = dist.group.WORLD
    owns = _OWN_GROUP is not None and _OWN_GROUP is dist.group.WORLD
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                       device=device, owns_group=owns)


def run(device_name: str, body: Callable[[DistContext], T]) -> T:
    """``body(ctx)`` between :func:`setup` and :func:`teardown`: the entry point of a training
    loop that works in one process or under torchrun. On an error the other processes are not
    waited for (they may be mid-collective) and the error propagates."""
    ctx = setup(device_name)
    try:
        result = body(ctx)
    except BaseException:
        teardown(ctx, wait=False)
        raise
    teardown(ctx)
    return result


def teardown(ctx: DistContext, wait: bool = True) -> None:
    """The end of a job: wait for every process (when ``wait``; pass ``wait=False`` on an error
    path, the other processes may never arrive). The process group stays for the next job of
    this process (see the module docstring for why it is not re-created); it is destroyed at
    exit."""
    if ctx.enabled and dist.is_initialized() and wait:
        dist.barrier()


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
