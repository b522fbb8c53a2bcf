"""``cross-image``: cross-image pixel contrast as an auxiliary fine-tuning loss.

Wang, Zhou, Yu, Dai, Konukoglu and Van Gool, "Exploring Cross-Image Pixel Contrast for Semantic
Segmentation", ICCV 2021 (arXiv:2101.11939).

Switched on by ``--contrast cross-image`` (config ``contrast.enabled``; its settings are the
``contrast`` section, :class:`~segcl.config.ContrastConfig`). Data: the labelled batch; with
``semi`` also on, the unlabelled images too (their weak views in the shared forward, else their
strong views: :meth:`~segcl.methods.base.FinetuneStep.dense_views`), labelled with their
confident pseudo-labels (unconfident pixels are ignored).

Module: a projection head parallel to the classifier on the decoder's dense features (1x1 conv -
BN - ReLU - 1x1 conv, ``contrast.dim`` = 256 outputs,
:class:`~segcl.models.heads.ContrastHead`), and with ``--memory-bank`` a per-class pixel queue
and region queue (class-mean embeddings of each image) of ``contrast.memory_size`` entries
each (:class:`~segcl.losses.MemoryBank`), filled after each loss. Both are training-only: saved
in ``last/`` under ``heads.contrast.*`` and ``heads.memory.*`` for ``--resume``, left out of the
exported model.

Sampling, per image and class ``c`` on the embedding grid (labels and predicted classes taken at
the same pixel centres): a class with more than ``max_views`` pixels is eligible; with ``E``
eligible (image, class) pairs, ``min(max_samples // E, max_views)`` anchors per pair, half hard
(label ``c``, predicted another class) and half easy (predicted ``c``).

Loss over the ``A`` anchors (unit-normalised embeddings, ``s_ij = z_i . z_j / tau``), contrasted
with the other anchors and, with the memory bank, with the queued entries::

    P_i = {keys with label y_i, except i}      N_i = {keys with another label}
    l_i = -(tau / base_tau) mean_{p in P_i} log( e^{s_ip} / (e^{s_ip} + sum_{n in N_i} e^{s_in}) )
    L_contrast = mean of l_i over the anchors with |P_i| >= 1

    L = CE(f(x), y) + lambda * L_contrast

``lambda`` = 0.1 (``--contrast-weight``), ``tau`` = 0.1, ``base_tau`` = 0.07; ``lambda`` is 0
during ``contrast.warmup_steps`` (``--contrast-warmup``: the head gets no gradient then, the
memory bank is still filled). The loss computes in float32. Logged: ``contrast``
(``lambda * L_contrast``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from segcl.methods import register
from segcl.methods.base import FinetuneMethod, FinetuneStep

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segcl.config import FinetuneConfig
    from segcl.data import DatasetInfo
    from segcl.models import SegmentationModel


@register
class CrossImage(FinetuneMethod):
    name = "cross-image"
    help = ("auxiliary cross-image pixel contrast on the decoder features, optional memory bank "
            "(Wang et al. 2021)")
    flag = "--contrast cross-image"
    config_keys = ("contrast",)
    metrics = ("contrast",)

    def enabled(self, cfg: FinetuneConfig) -> bool:
        return bool(cfg.contrast.enabled)

    def module(self, cfg: FinetuneConfig, model: SegmentationModel, info: DatasetInfo) -> nn.Module:
        from segcl.engine.contrast_aux import CrossImageAux

        return CrossImageAux(cfg.contrast, model.decoder.out_channels, info)

    def unused_parameters(self, cfg: FinetuneConfig) -> bool:
        return cfg.contrast.warmup_steps > 0  # the head gets no gradient during the warm-up

    def loss(self, module: nn.Module | None, step: FinetuneStep
             ) -> tuple[Tensor, dict[str, Tensor]]:
        assert module is not None
        contrast = module(*step.dense_views(), step.step)
        return contrast, {"contrast": contrast.detach()}

    def state_for_checkpoint(self, module: nn.Module | None) -> dict[str, Tensor]:
        assert module is not None
        return module.state_for_checkpoint()

    def load_state(self, module: nn.Module | None, folder: str | Path) -> None:
        assert module is not None
        module.load_state(folder)
