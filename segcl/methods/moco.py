"""``moco``: momentum contrast with a queue of negatives; trains the encoder, no labels.

He, Fan, Wu, Xie and Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (arXiv:1911.05722), with the MoCo v2 changes (Chen, Fan, Girshick and He,
arXiv:2003.04297): an MLP projection head, SimCLR's augmentations and ``tau`` = 0.2.

Why next to SimCLR: SimCLR's negatives are the other images of the batch, 14 of them at batch 8,
which is what a small machine affords. MoCo takes its negatives from a queue of the keys of
earlier batches, so the number of negatives (``--queue-size``) no longer depends on the batch.

Data and views: as ``simclr`` (every training image, two views each:
:class:`~segcl.data.TwoViewTransform`, masks unused).

Network: the query branch is the encoder being trained and a global head ``g`` (average pool +
2-layer MLP, ``proj_dim`` outputs); the key branch is a copy of both, ``f_k`` and ``g_k``, that is
not trained by gradient but follows the query branch as a moving average of its weights,
updated at the start of every step with momentum ``m`` (``--key-momentum``)::

    theta_k <- m * theta_k + (1 - m) * theta_q

Keys are computed in training mode, as the queries are, but with shuffled batch
normalisation: the ``2N`` key views are put in a random order and split into
:data:`KEY_BN_SPLITS` groups that are normalised separately, so a key's batch statistics come
from a different set of views than its query's (all ``2N``). That is MoCo's shuffling BN across
GPUs, done on one device. Without it the network can tell a positive from the queue by the
current batch's statistics alone (MoCo's "cheating"); with keys in evaluation mode instead
(running statistics), queries and keys come from two different normalisations and the loss
stayed at chance (ln 257 = 5.55 after 1500 steps on CamVid at 96x128).

Loss (symmetric InfoNCE against the queue, :func:`~segcl.losses.queue_info_nce`): for the views
``x1, x2`` of ``N`` images, queries ``q = g(f(x))`` and keys ``k = g_k(f_k(x))``, unit-normalised,
and the queue ``Q`` of the ``K`` most recent keys::

    l(q, k)  = -log( exp(q . k / tau) / (exp(q . k / tau) + sum_j exp(q . Q_j / tau)) )
    loss     = 1/(2N) sum_i [ l(q1_i, k2_i) + l(q2_i, k1_i) ]

after which the ``2N`` keys of the step enter the queue and the oldest leave it
(:class:`~segcl.losses.KeyQueue`; under torchrun, the keys of every process).

Cost: one forward and backward of the ``2N`` views (as SimCLR) plus one forward of the ``2N``
views through the key branch, without gradient.

Checkpoint: ``encoder.*`` and ``heads.global.*`` (query head, key branch and queue, so that
``--resume`` continues exactly); ``segcl finetune --init`` takes the encoder.

Defaults: ``tau`` = 0.2, ``--queue-size`` 256 (keep it below the number of training images),
``--key-momentum`` 0.99 (MoCo uses 0.999 over ~10^6 steps; at 0.99 a key branch follows about
the last 100 steps, which suits runs of a few thousand steps), ``proj_dim`` = 128.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from segcl.methods import register
from segcl.methods.simclr import SimCLR

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segcl.config import PretrainConfig
    from segcl.models import SegmentationModel

#: MoCo v2's temperature, used unless ``--temperature`` is given
DEFAULT_TEMPERATURE = 0.2
#: groups of the shuffled batch normalisation of the keys (MoCo: one per GPU)
KEY_BN_SPLITS = 2


def _momentum_head(encoder: nn.Module, in_ch: int, proj_dim: int, queue_size: int,
                   momentum: float) -> nn.Module:
    """The ``heads.global`` module of :class:`MoCo` (built here so that the module stays free
    of torch at import time)."""
    import torch
    from torch import nn

    from segcl.losses import KeyQueue
    from segcl.models.heads import GlobalHead

    class MomentumHead(nn.Module):
        """Query head, key branch (encoder + head, moving average) and the queue of keys."""

        def __init__(self) -> None:
            super().__init__()
            self.momentum = momentum
            self.query = GlobalHead(in_ch, out_dim=proj_dim)
            self.key_encoder = copy.deepcopy(encoder)
            self.key_head = copy.deepcopy(self.query)
            for p in (*self.key_encoder.parameters(), *self.key_head.parameters()):
                p.requires_grad_(False)
            self.queue = KeyQueue(queue_size, proj_dim)

        @torch.no_grad()
        def follow(self, query_encoder: nn.Module) -> None:
            """``theta_k <- m theta_k + (1 - m) theta_q`` (keys use batch statistics, so the
            key branch's running statistics are never read)."""
            for key, query in ((self.key_encoder, query_encoder), (self.key_head, self.query)):
                for pk, pq in zip(key.parameters(), query.parameters(), strict=True):
                    pk.lerp_(pq.detach(), 1.0 - self.momentum)

        @torch.no_grad()
        def keys(self, x: Tensor) -> Tensor:
            """Key projections of ``x`` (no gradient), with shuffled batch normalisation: the
            rows in a random order (the global torch generator, which checkpoints keep), in
            :data:`KEY_BN_SPLITS` groups normalised separately, returned in the input order."""
            self.key_encoder.train()
            self.key_head.train()
            order = torch.randperm(x.shape[0]).to(x.device)
            groups = [self.key_head(self.key_encoder(part)[-1])
                      for part in x[order].chunk(max(1, min(KEY_BN_SPLITS, x.shape[0] // 2)))]
            return torch.cat(groups).index_select(0, torch.argsort(order))

    return MomentumHead()


@register
class MoCo(SimCLR):
    name = "moco"
    help = ("momentum contrast (MoCo v2): InfoNCE against a queue of keys from a moving-average "
            "encoder, no labels; trains the encoder")

    def heads(
        self, cfg: PretrainConfig, model: SegmentationModel, terms: list[str],
        ignore_index: int, gather: bool,
    ) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
        from segcl.losses import QueueInfoNCELoss

        tau = DEFAULT_TEMPERATURE if cfg.temperature is None else cfg.temperature
        head = _momentum_head(model.encoder, model.encoder.channels[-1], cfg.proj_dim,
                              cfg.queue_size, cfg.key_momentum)
        return {"global": head}, {"global": QueueInfoNCELoss(tau)}

    def loss(self, net: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        import torch

        head, criterion = net.heads["global"], net.criteria["global"]
        x1, x2 = batch["view1"], batch["view2"]
        head.follow(net.encoder)
        q = head.query(net.encoder(torch.cat([x1, x2]))[-1])
        k = head.keys(torch.cat([x2, x1]))  # row i: the other view of q's image
        loss = criterion(q, k, head.queue.negatives())  # float32, autocast off: the loss's own
        head.queue.push(k)
        return loss, {"global": loss}
