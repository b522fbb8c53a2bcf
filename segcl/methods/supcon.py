"""``supcon``: label-based (supervised) pixel contrast; trains the encoder and the decoder.

Zhao, Vemulapalli, Mansfield, Gong, Green, Shapira and Wu, "Contrastive Learning for
Label-Efficient Semantic Segmentation", ICCV 2021 (arXiv:2012.06985).

Data: the labelled training images only (plus the pseudo-labelled ones with
``--pseudo-labels``); it fails when no image has a mask. Each image gives the image and a
colour-distorted copy with the same random scale / crop / flip
(:class:`~segcl.data.PairTransform`), sharing one mask.

Network: encoder -> decoder -> pixel head (three 1x1 convolutions, ``pixel_dim`` = 256
outputs, ReLU between them); the embeddings may be resized to ``grid`` (paper: 65 x 65).

Loss (:class:`~segcl.losses.PixelContrastLoss`, temperature ``tau`` = 0.07 by default): for
unit-normalised pixel embeddings ``z`` with labels ``y`` and ``s_ij = z_i . z_j / tau``, over the
valid (not ignored) pixels of the image and its copy::

    P_i = {j: y_j = y_i}   (same class, self included)      N_i = {k: y_k != y_i}
    l_i = -mean_{j in P_i} log( exp(s_ij) / (exp(s_ij) + sum_{k in N_i} exp(s_ik)) )

averaged over the anchors of each image, then over the images (``variant="single"``, the
paper's best), or over all pixels of the batch, optionally ``max_pixels`` of them sampled at
random (``variant="batch"``).

Defaults: ``tau`` = 0.07, ``variant="single"``, ``grid`` = the decoder's native resolution,
``pixel_dim`` = 256, ``strength`` = 0.5 (:class:`~segcl.config.PretrainConfig`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segcl.methods import register, terms

if TYPE_CHECKING:
    from segcl.config import PretrainConfig


@register
class SupCon(terms.PairViewsMethod):
    name = "supcon"
    help = "label-based pixel contrast on the labelled images; trains encoder + decoder"
    labels = "required"
    unlabelled = False

    def terms(self, cfg: PretrainConfig) -> list[str]:
        return ["pixel"]

    def trains_decoder(self, terms_: list[str]) -> bool:
        return True
