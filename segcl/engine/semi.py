"""Loss functions of online semi-supervised fine-tuning (weak-to-strong consistency).

The registered method that uses them is :mod:`segcl.methods.semi` (``--semi``; FixMatch, Sohn
et al., NeurIPS 2020, and UniMatch, Yang et al., CVPR 2023). For an unlabelled image, the
weak view's softmax ``p`` gives pseudo-labels ``y^ = argmax_c p_c`` with confidences
``q = max_c p_c`` (:func:`pseudo_labels`); each strong view gets a CutMix box pasted from the next
image of the batch, its targets mixed with the same box (:func:`mix_views`,
:meth:`PseudoLabels.mixed`); a prediction ``z`` is trained with the confidence-masked
cross-entropy averaged over the valid (non-padding) pixels ``V`` (:func:`consistency_loss`)::

    l(z) = 1/|V| * sum_{i in V} 1[q_i >= tau] * CE(z_i, y^_i)

and :func:`unlabeled_loss` combines the strong views and UniMatch's feature perturbation
(dropout 0.5 on the weak view's encoder features, decoded again)::

    L_u = 1/2 * mean_k l(f(x^s_k)) + 1/2 * l(x^fp)   (feature perturbation on)
    L_u = mean_k l(f(x^s_k))                           (off)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.config import SemiConfig
from segcl.models import SegmentationModel


@dataclass
class PseudoLabels:
    """Pseudo-labels of the weak views: class, confidence and validity per pixel (B, H, W)."""

    label: Tensor
    confidence: Tensor
    valid: Tensor

    def mixed(self, box: Tensor) -> PseudoLabels:
        """The targets of a view whose ``box`` region (B, H, W) comes from the next image."""
        return PseudoLabels(*(torch.where(box, t.roll(1, 0), t)
                              for t in (self.label, self.confidence, self.valid)))

    def kept(self, threshold: float) -> Tensor:
        """Where a pseudo-label counts: confident (``q >= threshold``) and valid."""
        return (self.confidence >= threshold) & self.valid

    def masked(self, threshold: float, ignore_index: int) -> Tensor:
        """Pseudo-labels with ``ignore_index`` where not confident or not valid."""
        return torch.where(self.kept(threshold), self.label,
                           torch.full_like(self.label, ignore_index))


def pseudo_labels(logits: Tensor, valid: Tensor) -> PseudoLabels:
    """Argmax and max-softmax of the weak-view ``logits`` (B, C, H, W), without gradient."""
    with torch.no_grad():
        confidence, label = logits.detach().float().softmax(1).max(1)
    return PseudoLabels(label, confidence, valid)


def consistency_loss(logits: Tensor, target: PseudoLabels, threshold: float) -> Tensor:
    """``l(z)`` above: confidence-masked cross-entropy averaged over the valid pixels."""
    ce = F.cross_entropy(logits.float(), target.label, reduction="none")
    return (ce * target.kept(threshold)).sum() / target.valid.sum().clamp(min=1)


def mix_views(strong: Tensor, box: Tensor) -> Tensor:
    """Paste the ``box`` (B, H, W) region of the next image of the batch into each image."""
    return torch.where(box[:, None], strong.roll(1, 0), strong)


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module, frozen: bool) -> Iterator[None]:
    """With ``frozen``, batch norms normalise with the batch's statistics but leave their
    running averages (what evaluation uses) as they are."""
    if not frozen:
        yield
        return
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in norms]
    counts = [m.num_batches_tracked.clone() for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in zip(norms, saved, counts, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def unlabeled_loss(
    model: SegmentationModel,
    feats_weak: list[Tensor] | None,
    logits_weak: Tensor,
    batch: dict[str, Tensor],
    cfg: SemiConfig,
) -> tuple[Tensor, dict[str, Tensor], PseudoLabels]:
    """``L_u`` of one step, from the weak view's encoder features (the student's; ``None`` only
    without feature perturbation) and the logits that give the pseudo-labels (the student's or
    a teacher's).

    ``batch`` holds the unlabelled views of :class:`segcl.data.WeakStrongTransform`
    (``image``, ``strong1..K``, ``box1..K``, ``valid``). Returns the loss, its logged terms and
    the (un-mixed) pseudo-labels.
    """
    size = logits_weak.shape[-2:]
    target = pseudo_labels(logits_weak, batch["valid"])
    views = range(1, cfg.strong_views + 1)
    strong = torch.cat([mix_views(batch[f"strong{k}"], batch[f"box{k}"]) for k in views])
    with running_stats_frozen(model, not cfg.shared_forward):
        logits_strong = model(strong).chunk(cfg.strong_views)
    loss_s = torch.stack([
        consistency_loss(z, target.mixed(batch[f"box{k}"]), cfg.threshold)
        for k, z in zip(views, logits_strong, strict=True)
    ]).mean()
    logs = {"loss_u_strong": loss_s.detach(),
            "confident": target.kept(cfg.threshold).float().sum()
            / target.valid.sum().clamp(min=1)}
    loss = loss_s
    if cfg.feature_perturbation:
        assert feats_weak is not None, "feature perturbation needs the weak view's features"
        dropped = [F.dropout2d(f, 0.5, training=True) for f in feats_weak]
        with running_stats_frozen(model, not cfg.shared_forward):
            logits_fp = model.classify(model.decoder(dropped), size)
        loss_fp = consistency_loss(logits_fp, target, cfg.threshold)
        loss = 0.5 * loss_s + 0.5 * loss_fp
        logs["loss_u_fp"] = loss_fp.detach()
    return loss, logs, target
