"""Two CPU processes (gloo), each holding half of the global batch, against one process.

With ``gather_distributed=True`` each rank returns its share of the global loss: the mean over
ranks equals the single-process loss on the whole batch, and the gradient a rank gets on its
shard is ``world_size`` times the single-process gradient there (DDP's gradient averaging
divides by ``world_size`` again, so training matches one process).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segcl.losses import (
    KeyQueue,
    LocalContrastLoss,
    MemoryBank,
    NTXentLoss,
    PixelContrastLoss,
)
from segcl.losses.distributed import gather_with_grad, is_distributed, rank, world_size

WORLD = 2
IGNORE = 255


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(name: str, loss_fn, inputs: list[torch.Tensor], batch_dim_sizes: list[int]) -> None:
    """Compare the sharded run of ``loss_fn`` with one process over the full ``inputs``."""
    r, w = dist.get_rank(), dist.get_world_size()
    full = [x.clone().requires_grad_() for x in inputs]
    ref = loss_fn(gather=False)(*full)
    ref_grads = torch.autograd.grad(ref, full)
    shards = []
    for x, n in zip(inputs, batch_dim_sizes, strict=True):
        per = n // w
        shards.append(x[r * per : (r + 1) * per].clone().requires_grad_())
    loss = loss_fn(gather=True)(*shards)
    grads = torch.autograd.grad(loss, shards)
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    mean /= w
    torch.testing.assert_close(mean, ref.detach(), rtol=1e-5, atol=1e-6, msg=name)
    for g, rg, n in zip(grads, ref_grads, batch_dim_sizes, strict=True):
        per = n // w
        torch.testing.assert_close(
            g / w, rg[r * per : (r + 1) * per], rtol=1e-4, atol=1e-6, msg=f"{name} grad"
        )


def _worker(rank_: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank_, world_size=WORLD)
    try:
        assert is_distributed() and rank() == rank_ and world_size() == WORLD
        x = torch.full((2, 3), float(rank_), requires_grad=True)
        gathered = gather_with_grad(x)
        assert gathered[:, 0].tolist() == [0, 0, 1, 1]
        (g,) = torch.autograd.grad((gathered * torch.arange(4.0)[:, None]).sum(), x)
        # each rank's upstream gradient is summed over the ranks for its own slice
        expected = torch.arange(4.0)[2 * rank_ : 2 * rank_ + 2, None].expand(2, 3) * WORLD
        torch.testing.assert_close(g, expected)

        gen = torch.Generator().manual_seed(0)  # same global data on both ranks
        z1, z2 = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
        _check(
            "nt_xent",
            lambda gather: NTXentLoss(0.2, gather_distributed=gather),
            [z1, z2],
            [6, 6],
        )
        q1, q2 = torch.randn(4, 8, 2, 2, generator=gen), torch.randn(4, 8, 2, 2, generator=gen)
        _check(
            "local",
            lambda gather: LocalContrastLoss(0.1, gather_distributed=gather),
            [q1, q2],
            [4, 4],
        )
        e1, e2 = torch.randn(4, 8, 3, 4, generator=gen), torch.randn(4, 8, 3, 4, generator=gen)
        labels = torch.randint(0, 3, (4, 6, 8), generator=gen)
        labels[1] = IGNORE  # rank 0 has fewer valid pixels than rank 1
        labels[3, :3] = 2

        def pixel(gather: bool):
            module = PixelContrastLoss(
                0.1, ignore_index=IGNORE, variant="batch", block_size=16, gather_distributed=gather
            )
            return lambda a, b, y: module((a, b), y)

        _check_pixel(pixel, e1, e2, labels)

        bank = MemoryBank(3, dim=8, pixel_size=11, region_size=5, pixels_per_class=2)
        torch.manual_seed(rank_)  # different random pixel choices on each rank
        bank.update(
            e1[2 * rank_ : 2 * rank_ + 2], labels[2 * rank_ : 2 * rank_ + 2, ::2, ::2], IGNORE
        )
        state = torch.cat([bank.pixel_queue.flatten(), bank.region_queue.flatten()])
        other = [torch.empty_like(state) for _ in range(WORLD)]
        dist.all_gather(other, state)
        assert torch.equal(other[0], other[1]), "memory banks diverged across ranks"
        assert int(bank.region_count.sum()) > 0

        queue = KeyQueue(5, 8)  # MoCo's queue: both ranks' keys, rank 0's first, same queue
        mine = torch.randn(2, 8, generator=torch.Generator().manual_seed(rank_))
        queue.push(mine)
        both = [torch.empty_like(mine) for _ in range(WORLD)]
        dist.all_gather(both, mine)
        torch.testing.assert_close(queue.negatives(),
                                   torch.nn.functional.normalize(torch.cat(both), dim=1))
    finally:
        dist.destroy_process_group()


def _check_pixel(pixel, e1: torch.Tensor, e2: torch.Tensor, labels: torch.Tensor) -> None:
    """``_check`` for a loss whose third input (labels) is integer-valued."""
    r, w = dist.get_rank(), dist.get_world_size()
    full = [e1.clone().requires_grad_(), e2.clone().requires_grad_()]
    ref = pixel(False)(*full, labels)
    ref_grads = torch.autograd.grad(ref, full)
    per = labels.shape[0] // w
    part = slice(r * per, (r + 1) * per)
    shards = [e1[part].clone().requires_grad_(), e2[part].clone().requires_grad_()]
    loss = pixel(True)(*shards, labels[part])
    grads = torch.autograd.grad(loss, shards)
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    torch.testing.assert_close(mean / w, ref.detach(), rtol=1e-5, atol=1e-6, msg="pixel batch")
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g / w, rg[part], rtol=1e-4, atol=1e-6, msg="pixel grad")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_process_gather_matches_single_process() -> None:
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)
