"""``multiscale``: global + local (region) + pixel contrast on an image and its distorted copy.

"Pre-Training Study on Image Segmentation based on Multi-Scale Contrast Learning" (NARI Group):
the sum of an image-level, a region-level and a pixel-level contrastive term, any subset of which
is selected with ``losses`` (``--losses global,local,pixel``)::

    loss = L_g + L_l + L_p

Data: every training image. Each gives the image and a colour-distorted copy with the SAME
random scale / crop / flip (:class:`~segcl.data.PairTransform`), so pixel ``p`` and region ``u``
correspond in both. Labelled images keep their masks (pseudo-masks with ``--pseudo-labels``),
the others get all-ignore masks; masks are read only when the pixel term runs, and without any
labelled image the pixel term is dropped (with a message and a note in the run).

Terms (``z`` unit-normalised projections, ``s_ij = z_i . z_j / tau``):

- ``L_g`` (global, tau 0.1): NT-Xent over the ``2N`` global projections (global average pool of
  the deepest encoder feature map + MLP); the positive of image ``i`` is its copy::

      l_i = -log( exp(s_{i,i'}) / sum_{k != i} exp(s_ik) ),   L_g = mean_i l_i

- ``L_l`` (local, tau 0.1): the deepest feature map pooled to an ``S x S`` grid
  (``local_grid``, default 4) and projected by 1x1 convolutions; region ``u`` of image ``i`` and
  region ``u`` of its copy are positives, the other ``2 N S^2 - 2`` regions negatives; NT-Xent
  averaged over all regions of both views.
- ``L_p`` (pixel, tau 0.07): label-based pixel contrast (Zhao et al., ICCV 2021) on the decoder's
  features (1x1-conv pixel head), pixels of image and copy together, ignored pixels excluded::

      P_i = {j: y_j = y_i},  N_i = {k: y_k != y_i}
      l_i = -mean_{j in P_i} log( exp(s_ij) / (exp(s_ij) + sum_{k in N_i} exp(s_ik)) )

  per image (``variant="single"``) or over the batch (``"batch"``).

The decoder is trained (and saved) only when the pixel term runs.

Defaults: all three terms (``losses`` = global, local, pixel), ``tau`` 0.1 / 0.1 / 0.07,
``local_grid`` = 4, ``proj_dim`` = 128, ``pixel_dim`` = 256, ``strength`` = 0.5,
``variant="single"`` (:class:`~segcl.config.PretrainConfig`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segcl.methods import register, terms

if TYPE_CHECKING:
    from segcl.config import PretrainConfig


@register
class MultiScale(terms.PairViewsMethod):
    name = "multiscale"
    help = ("global + local + pixel terms on an image and its distorted copy, see --losses; "
            "the pixel term also trains the decoder")
    labels = "optional"
    unlabelled = True

    def check(self, cfg: PretrainConfig) -> None:
        from segcl.errors import ConfigError

        if not cfg.losses:
            raise ConfigError("--losses is empty; give a subset of global, local, pixel")
        if cfg.pseudo_labels and not any(t in terms.LABEL_TERMS for t in cfg.losses):
            raise ConfigError("--pseudo-labels needs the pixel term (--losses ...,pixel)")

    def terms(self, cfg: PretrainConfig) -> list[str]:
        from segcl.config import PRETRAIN_LOSSES

        return [t for t in PRETRAIN_LOSSES if t in cfg.losses]

    def trains_decoder(self, terms_: list[str]) -> bool:
        return any(t in terms.LABEL_TERMS for t in terms_)
