"""InfoNCE against a queue of keys: the loss of momentum contrast (MoCo).

He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722); Chen, Fan, Girshick and He, "Improved Baselines with
Momentum Contrastive Learning" (MoCo v2), arXiv:2003.04297.

For ``N`` queries ``q_i`` (one view of image ``i`` through the trained encoder), their positive
keys ``k_i`` (another view of image ``i`` through the momentum encoder; no gradient) and the
``K`` keys of earlier batches ``Q_1 .. Q_K`` (:class:`KeyQueue`; negatives), all unit-normalised,
with temperature ``tau``::

    l_i  = -log( exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_j exp(q_i . Q_j / tau)) )
    loss = mean_i l_i

The number of negatives is the queue's length, not the batch size: a batch of 8 images is
contrasted with hundreds of keys. With an empty queue (the first step) every ``l_i`` is
``-log 1 = 0``.

Defaults (MoCo v2): ``tau`` = 0.2. The queue should hold fewer keys than there are training
images, so that a query's own image is rarely among its negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.losses.checks import check_int, check_temperature
from segcl.losses.distributed import all_gather_variable
from segcl.losses.precision import autocast_off


@autocast_off
def queue_info_nce(q: Tensor, k: Tensor, negatives: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE of queries ``q`` ``(N, D)`` with positive keys ``k`` ``(N, D)`` (detached here)
    and ``negatives`` ``(K, D)`` (``K`` may be 0); inputs are L2-normalised in float32.
    Returns the scalar mean over the ``N`` queries."""
    tau = check_temperature(temperature)
    if q.ndim != 2 or q.shape != k.shape or negatives.ndim != 2 \
            or negatives.shape[1] != q.shape[1]:
        raise ValueError(f"queue_info_nce expects q, k (N, D) and negatives (K, D), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(negatives.shape)}")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    positive = (q * k).sum(1, keepdim=True)
    logits = torch.cat([positive, q @ F.normalize(negatives.float(), dim=1).T], dim=1) / tau
    return F.cross_entropy(logits, logits.new_zeros(q.shape[0], dtype=torch.long))


class QueueInfoNCELoss(nn.Module):
    """Module form of :func:`queue_info_nce`. Default ``tau`` = 0.2 (MoCo v2)."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, q: Tensor, k: Tensor, negatives: Tensor) -> Tensor:
        return queue_info_nce(q, k, negatives, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class KeyQueue(nn.Module):
    """A first-in first-out queue of ``size`` unit-normalised ``dim``-dimensional keys.

    State (buffers, so checkpoints keep it and ``--resume`` continues with the same negatives):
    ``keys`` ``(size, dim)``, the write position ``ptr`` and the number of keys written so far
    ``filled`` (at most ``size``). :meth:`negatives` returns the written keys only, so the first
    steps contrast with fewer negatives instead of random vectors. Under ``torch.distributed``
    :meth:`push` adds the keys of every process (rank 0's first), so all queues stay equal.
    """

    keys: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        check_int(size, "queue size", 1)
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def negatives(self) -> Tensor:
        """The keys written so far, ``(filled, dim)``: a copy, safe from later pushes."""
        return self.keys[: int(self.filled)].clone()

    @torch.no_grad()
    def push(self, k: Tensor) -> None:
        """Append ``k`` ``(n, dim)`` (normalised here), overwriting the oldest keys; when more
        than ``size`` keys arrive at once, the last ``size`` are kept."""
        k = F.normalize(all_gather_variable(k.detach().float()), dim=1)[-self.size :]
        n, ptr = k.shape[0], int(self.ptr)
        idx = (torch.arange(n, device=k.device) + ptr) % self.size
        self.keys[idx] = k.to(self.keys.dtype)
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}"
