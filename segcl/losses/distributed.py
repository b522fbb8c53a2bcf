"""Small ``torch.distributed`` helpers used by the contrastive losses.

Every helper is the identity (or returns the single-process answer) when no process group is
initialised, so the losses run unchanged on one device.

Gradient convention of :func:`gather_with_grad`: the backward pass sums the gradients that all
ranks computed for a shard (all-reduce, then keep the local slice). With DDP, which *averages*
parameter gradients over ranks, a loss whose per-rank value is the rank's share of the global loss
(its local anchors against the gathered keys) then trains exactly like one process on the global
batch. Equivalently: the gradient that rank ``r`` sees on its shard is ``world_size`` times the
single-process gradient of the global-mean loss on that shard.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward all-reduces (sums) the gradient and keeps the slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.n = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        # all_reduce works on every backend (gloo has no reduce_scatter); the gathered tensors
        # are small (embeddings), so the extra traffic is irrelevant next to the model's.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.n
        return grad[start : start + ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the autograd graph.

    Args:
        x: ``(n, ...)`` tensor; every rank must pass the same shape (unequal batch sizes are not
            supported -- drop the last incomplete batch under DDP).

    Returns:
        ``(world_size * n, ...)``: rank 0's rows first, then rank 1's, ...; ``x`` itself when not
        distributed. Gradients flowing back are summed over ranks (see the module docstring).
    """
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_variable(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 without gradient; sizes may differ per rank.

    Every rank receives the same tensor (rank 0's rows first). Identity when not distributed.
    """
    if not is_distributed() or world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)], dim=0)
