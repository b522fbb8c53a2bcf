"""``simclr``: global contrast between two augmented views of every image; trains the encoder.

Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709).

Data: every training image, masks unused (labelled or not). Each image gives two independent
views (:class:`~segcl.data.TwoViewTransform`): a random resized crop (area share in
``crop_scale``), a horizontal flip with probability 0.5 and a colour distortion of strength
``strength``.

Network: encoder -> global head (global average pool of the deepest feature map, then a
2-layer MLP with BatchNorm, ``proj_dim`` outputs). The decoder is neither trained nor saved.

Loss (NT-Xent, :class:`~segcl.losses.NTXentLoss`, temperature ``tau`` = 0.1 by default): for
``N`` images the ``2N`` unit-normalised projections ``z`` give ``s_ij = z_i . z_j / tau``; the
positive ``p(i)`` of anchor ``i`` is the other view of its image, every other projection is a
negative::

    l_i  = -log( exp(s_{i,p(i)}) / sum_{k != i} exp(s_ik) )
    loss = (1 / 2N) sum_i l_i

Under torchrun the negatives come from the whole global batch.

Defaults: ``tau`` = 0.1, ``strength`` = 0.5, ``crop_scale`` = (0.2, 1.0), ``proj_dim`` = 128
(:class:`~segcl.config.PretrainConfig`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segcl.methods import register, terms
from segcl.methods.base import PretrainMethod

if TYPE_CHECKING:
    from torch import Tensor

    from segcl.config import PretrainConfig


@register
class SimCLR(PretrainMethod):
    name = "simclr"
    help = "global NT-Xent on two augmented views of every image, no labels; trains the encoder"
    labels = "none"
    unlabelled = True

    def terms(self, cfg: PretrainConfig) -> list[str]:
        return ["global"]

    def trains_decoder(self, terms: list[str]) -> bool:
        return False

    def transform(
        self, cfg: PretrainConfig, size: tuple[int, int], mean: tuple[float, ...],
        std: tuple[float, ...], ignore_index: int,
    ) -> Any:
        from segcl.data import TwoViewTransform

        return TwoViewTransform(size, crop_scale=tuple(cfg.crop_scale), strength=cfg.strength,
                                mean=mean, std=std)

    def loss(self, net: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return terms.total(terms.pair_losses(net, batch["view1"], batch["view2"]))
