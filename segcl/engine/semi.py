"""Loss functions and pseudo-label thresholds of online semi-supervised fine-tuning
(weak-to-strong consistency).

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

The threshold ``tau`` is one number (``--semi-threshold-mode fixed``, the default:
``--semi-threshold``, 0.95) or one per class, ``1[q_i >= tau(y^_i)]`` (``adaptive``:
:class:`ClassThresholds`, the self-adaptive thresholds of FreeMatch, Wang et al., ICLR 2023,
arXiv:2205.07246). With ``V_t`` the valid weak-view pixels of step ``t`` (of every process under
torchrun), ``m`` the momentum (``--semi-threshold-momentum``, 0.999) and ``C`` classes::

    tau_t    = m * tau_{t-1}  + (1 - m) * 1/|V_t| * sum_{i in V_t} max_c p_ic    tau_0    = 1/C
    p~_t(c)  = m * p~_{t-1}(c) + (1 - m) * 1/|V_t| * sum_{i in V_t} p_ic         p~_0(c)  = 1/C
    tau_t(c) = min(tau_max, p~_t(c) / max_c' p~_t(c') * tau_t)

The global ``tau_t`` follows the model's mean confidence (low while it is unsure, so that many
pseudo-labels train it early; rising as it learns: annealed); the class factor lowers the
threshold of the classes the model predicts less (class-balanced). The cap ``tau_max`` is
``--semi-threshold`` (0.95), so adaptive mode never keeps fewer pixels than fixed mode. The
statistics are updated with each step's weak views before its mask is taken (as in FreeMatch);
a step without valid pixels leaves them as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.checkpoint import load_prefixed_state
from segcl.config import SemiConfig
from segcl.engine.distributed import sum_over_processes
from segcl.models import SegmentationModel

#: a confidence threshold: one for every pixel, or one per class ``(C,)`` (the pixel's
#: pseudo-class's applies)
Threshold = float | Tensor

#: where :class:`ClassThresholds` is saved in ``last/`` (training-only state, never exported)
THRESHOLDS_PREFIX = "heads.semi_thresholds."


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

    def kept(self, threshold: Threshold) -> Tensor:
        """Where a pseudo-label counts: confident (``q >= threshold``, or ``q >= threshold[y^]``
        for class thresholds) and valid."""
        if isinstance(threshold, Tensor):
            threshold = threshold[self.label]
        return (self.confidence >= threshold) & self.valid

    def masked(self, threshold: Threshold, ignore_index: int) -> Tensor:
        """Pseudo-labels with ``ignore_index`` where not confident or not valid."""
        return torch.where(self.kept(threshold), self.label,
                           torch.full_like(self.label, ignore_index))


def pseudo_labels(logits: Tensor, valid: Tensor) -> PseudoLabels:
    """Argmax and max-softmax of the weak-view ``logits`` (B, C, H, W), without gradient."""
    with torch.no_grad():
        confidence, label = logits.detach().float().softmax(1).max(1)
    return PseudoLabels(label, confidence, valid)


def consistency_loss(logits: Tensor, target: PseudoLabels, threshold: Threshold) -> Tensor:
    """``l(z)`` above: confidence-masked cross-entropy averaged over the valid pixels."""
    ce = F.cross_entropy(logits.float(), target.label, reduction="none")
    return (ce * target.kept(threshold)).sum() / target.valid.sum().clamp(min=1)


class ClassThresholds(nn.Module):
    """FreeMatch's self-adaptive class-wise thresholds (``--semi-threshold-mode adaptive``).

    Holds the moving averages of the module docstring as buffers: ``global_confidence``
    (``tau_t``, a scalar) and ``class_probability`` (``p~_t``, ``(C,)``), both starting at
    ``1/C``. Under torchrun each step's sums are added up over the processes before the
    averages move (one all-reduce), so every process keeps the same thresholds: those of one
    process that saw all the weak views. Training-only state: saved in ``last/`` under
    :data:`THRESHOLDS_PREFIX` for ``--resume``, left out of the exported model.

    Args:
        num_classes: ``C``.
        momentum: ``m`` (FreeMatch: 0.999).
        cap: ``tau_max``, the largest threshold a class gets (``--semi-threshold``).
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, cap: float = 0.95) -> None:
        super().__init__()
        self.momentum, self.cap = momentum, cap
        self.register_buffer("global_confidence", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_probability", torch.full((num_classes,), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, logits: Tensor, valid: Tensor) -> None:
        """Move the averages with the weak views' ``logits`` (B, C, H, W) on their ``valid``
        pixels (B, H, W); no change when no process has a valid pixel."""
        prob = logits.detach().float().softmax(1)
        weight = valid.to(prob.dtype)
        sums = torch.cat([(prob.amax(1) * weight).sum().reshape(1),
                          (prob * weight[:, None]).sum((0, 2, 3)),
                          weight.sum().reshape(1)])
        sums = sum_over_processes(sums)
        count = sums[-1]
        means = sums[:-1] / count.clamp(min=1)
        rate = (1 - self.momentum) * (count > 0).to(sums.dtype)  # 0: nothing to learn from
        self.global_confidence.lerp_(means[0], rate)
        self.class_probability.lerp_(means[1:], rate)

    def thresholds(self) -> Tensor:
        """``tau_t(c) = min(tau_max, p~_t(c) / max_c' p~_t(c') * tau_t)``, ``(C,)``."""
        p = self.class_probability
        return (p / p.max() * self.global_confidence).clamp(max=self.cap)

    def logs(self, thresholds: Tensor) -> dict[str, Tensor]:
        """The logged values: ``threshold_mean`` (the mean of ``thresholds`` over the classes)
        and ``threshold_global`` (``tau_t``, uncapped)."""
        return {"threshold_mean": thresholds.mean().detach(),
                "threshold_global": self.global_confidence.detach().clone()}

    def state_for_checkpoint(self) -> dict[str, Tensor]:
        """The averages, under :data:`THRESHOLDS_PREFIX`."""
        return {THRESHOLDS_PREFIX + k: v for k, v in self.state_dict().items()}

    def load_state(self, folder: str | Path) -> None:
        """Restore :meth:`state_for_checkpoint` from the checkpoint ``folder``."""
        load_prefixed_state(self, folder, THRESHOLDS_PREFIX,
                            "this run was not saved with --semi-threshold-mode adaptive")


@dataclass
class StrongViews:
    """The student's forward of the (CutMixed) strong views, ``K`` views of ``B`` images
    stacked view by view: decoder features ``dense`` ``(K*B, C, h, w)``, ``logits``
    ``(K*B, C', H, W)`` and their ``target``, the weak view's pseudo-labels mixed with each
    view's box."""

    dense: Tensor
    logits: Tensor
    target: PseudoLabels


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
    threshold: Threshold | None = None,
) -> tuple[Tensor, dict[str, Tensor], PseudoLabels, StrongViews]:
    """``L_u`` of one step, from the weak view's encoder features (the student's; ``None`` only
    without feature perturbation) and the logits that give the pseudo-labels (the student's or
    a teacher's); ``threshold``: ``tau`` (``None``: ``cfg.threshold``, fixed mode).

    ``batch`` holds the unlabelled views of :class:`segcl.data.WeakStrongTransform`
    (``image``, ``strong1..K``, ``box1..K``, ``valid``). Returns the loss, its logged terms,
    the (un-mixed) pseudo-labels and the strong views' forward (:class:`StrongViews`).
    """
    threshold = cfg.threshold if threshold is None else threshold
    size = logits_weak.shape[-2:]
    target = pseudo_labels(logits_weak, batch["valid"])
    views = range(1, cfg.strong_views + 1)
    strong = torch.cat([mix_views(batch[f"strong{k}"], batch[f"box{k}"]) for k in views])
    with running_stats_frozen(model, not cfg.shared_forward):
        _, dense_strong = model.forward_dense(strong)
        logits = model.classify(dense_strong, strong.shape[-2:])
    targets = [target.mixed(batch[f"box{k}"]) for k in views]
    loss_s = torch.stack([
        consistency_loss(z, t, threshold)
        for z, t in zip(logits.chunk(cfg.strong_views), targets, strict=True)
    ]).mean()
    mixed = PseudoLabels(*(torch.cat(parts) for parts in zip(
        *((t.label, t.confidence, t.valid) for t in targets), strict=True)))
    logs = {"loss_u_strong": loss_s.detach(),
            "confident": target.kept(threshold).float().sum()
            / target.valid.sum().clamp(min=1)}
    loss = loss_s
    if cfg.feature_perturbation:
        assert feats_weak is not None, "feature perturbation needs the weak view's features"
        dropped = [F.dropout2d(f, 0.5, training=True) for f in feats_weak]
        with running_stats_frozen(model, not cfg.shared_forward):
            logits_fp = model.classify(model.decoder(dropped), size)
        loss_fp = consistency_loss(logits_fp, target, threshold)
        loss = 0.5 * loss_s + 0.5 * loss_fp
        logs["loss_u_fp"] = loss_fp.detach()
    return loss, logs, target, StrongViews(dense_strong, logits, mixed)
