"""``pseudo-labels``: offline pseudo-labels from a teacher; the unlabelled images join training.

Self-training after Zhao et al., "Contrastive Learning for Label Efficient Semantic
Segmentation", ICCV 2021 (arXiv:2012.06985): its semi-supervised setting trains on the
confident predictions of a model fine-tuned on the labelled images.

Switched on by ``--pseudo-labels TEACHER`` (config ``pseudo_labels``, with
``pseudo_threshold``, ``pseudo_background_threshold`` and ``background_class``). Data: a
teacher (a run directory, checkpoint folder, ``hf://`` reference or registry name of a model
fine-tuned on the labelled subset, predicting the same classes) and the unlabelled images (the
training images outside the labelled subset, plus ``--unlabeled``; with none, nothing is
added). Before training, the teacher predicts class probabilities ``p`` for every unlabelled
image at the image's own resolution, and each pixel gets the hard label::

    y~_i = argmax_c p_ic    if max_c p_ic >= t(argmax_c p_ic)
         = ignore           otherwise
    t(c) = background_threshold (0.97) for c = background_class, threshold (0.8) otherwise

The pseudo-labelled images join the labelled ones in the supervised set, so the objective stays
``L = mean CE`` over all labelled and confidently pseudo-labelled pixels. No module, no loss
term, no checkpoint state, no logged value. The labelling is :mod:`segcl.engine.pseudo`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segcl.methods import register
from segcl.methods.base import FinetuneData, FinetuneMethod

if TYPE_CHECKING:
    import numpy as np

    from segcl.config import FinetuneConfig
    from segcl.data import Sample
    from segcl.engine.callbacks import Callback


@register
class PseudoLabels(FinetuneMethod):
    name = "pseudo-labels"
    help = ("offline pseudo-labels: a teacher labels the unlabelled images (confident pixels "
            "only), which join the labelled set")
    flag = "--pseudo-labels"
    config_keys = ("pseudo_labels", "pseudo_threshold", "pseudo_background_threshold",
                   "background_class")
    unlabelled = "optional"
    teacher = True

    def enabled(self, cfg: FinetuneConfig) -> bool:
        return bool(cfg.pseudo_labels)

    def train_samples(
        self, cfg: FinetuneConfig, data: FinetuneData, callback: Callback
    ) -> tuple[list[Sample], list[np.ndarray]]:
        from segcl.engine.pseudo import pseudo_label

        masks, samples = pseudo_label(cfg.pseudo_labels, data.unlabeled, data.info, cfg,
                                      data.device, callback)
        return samples, masks
