"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.

For ``N`` images with two views each, the ``2N`` unit-normalised embeddings ``z`` give
``s_ij = z_i . z_j / tau``. Anchor ``i`` has one positive ``p(i)`` (the other view of its image)
and ``2N - 2`` negatives (every other embedding except itself)::

    l_i  = -s_{i,p(i)} + LSE_{k != i} s_ik
    loss = mean_i l_i                       (over the 2N anchors)

With ``gather=True`` under ``torch.distributed`` the keys are the embeddings of the global batch
(gathered with gradient) while the anchors stay local; the positive of local row ``i`` is global
row ``rank * N + i``. Each rank's value is then the mean over its own anchors, the mean over ranks
is the global-batch loss, and DDP gradient averaging reproduces single-process training.

Defaults: ``tau`` = 0.1 (:class:`NTXentLoss`, the ``global`` term of ``segcl pretrain``), no
gathering (``gather_distributed=False``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.losses.checks import check_temperature
from segcl.losses.distributed import gather_with_grad, is_distributed, rank
from segcl.losses.precision import autocast_off


def _check_pair(z1: Tensor, z2: Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent expects two (N, D) tensors of the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )


@autocast_off
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, gather: bool = False) -> Tensor:
    """NT-Xent loss of two views.

    Args:
        z1: ``(N, D)`` embeddings of view 1 (any dtype; L2-normalised here, in float32).
        z2: ``(N, D)`` embeddings of view 2; row ``i`` is the same image as row ``i`` of ``z1``.
        temperature: ``tau`` (> 0).
        gather: take negatives from all ranks (equal ``N`` on every rank).

    Returns:
        Scalar float32 loss. A global batch of one image has no negatives: the loss is 0 (graph
        kept, zero gradient) and a ``RuntimeWarning`` is issued.
    """
    tau = check_temperature(temperature)
    _check_pair(z1, z2)
    a1 = F.normalize(z1.float(), dim=1)
    a2 = F.normalize(z2.float(), dim=1)
    n = a1.shape[0]
    if gather and is_distributed():
        k1, k2, offset = gather_with_grad(a1), gather_with_grad(a2), rank() * n
    else:
        k1, k2, offset = a1, a2, 0
    n_global = k1.shape[0]
    if n_global < 2:
        warnings.warn(
            f"nt_xent: a global batch of {n_global} image(s) has no negatives; the loss is 0",
            RuntimeWarning,
            stacklevel=2,
        )
        return (a1.sum() + a2.sum()) * 0.0
    anchors = torch.cat([a1, a2])
    logits = anchors @ torch.cat([k1, k2]).T / tau  # (2n, 2 n_global)
    rows = torch.arange(2 * n, device=logits.device)
    own = torch.arange(n, device=logits.device) + offset
    self_col = torch.cat([own, own + n_global])
    pos_col = torch.cat([own + n_global, own])
    positive = logits[rows, pos_col]
    logits = logits.index_put((rows, self_col), logits.new_tensor(-math.inf))
    return (torch.logsumexp(logits, dim=1) - positive).mean()


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent` (SimCLR global contrast, Chen et al., ICML 2020).

    Inputs are the raw (unnormalised) projections ``z1, z2`` of shape ``(N, D)``; the loss
    normalises them. Default ``tau = 0.1``.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent(z1, z2, self.temperature, gather=self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
