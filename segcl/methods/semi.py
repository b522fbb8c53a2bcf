"""``semi``: online semi-supervised fine-tuning, weak-to-strong consistency on unlabelled images.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020 (arXiv:2001.07685); Yang et al., "Revisiting Weak-to-Strong Consistency in
Semi-Supervised Semantic Segmentation" (UniMatch), CVPR 2023 (arXiv:2208.09910).

Switched on by ``--semi`` (config ``semi.enabled``; its settings are the ``semi`` section,
:class:`~segcl.config.SemiConfig`). Data: the unlabelled images (the training images outside
the labelled subset, plus ``--unlabeled``; required), drawn as a second stream next to the
labelled batches (``semi.batch_size`` per step and process, the labelled batch size by default),
indexed by step so that a resumed run draws the batches the uninterrupted run would draw. Each
unlabelled image gives a weak view and ``K`` strong views
(:class:`~segcl.data.transforms.WeakStrongTransform`). With the default fixed threshold no
module is added and nothing is saved; with adaptive thresholds (below) the method's module is
the thresholds' statistics (buffers, no parameters), saved in ``last/`` for ``--resume``.

1. The weak view ``x^w`` (scale, crop and flip only) goes through the model together with the
   labelled batch. Its softmax ``p = softmax(f(x^w))`` gives the pseudo-label
   ``y^ = argmax_c p_c`` and the confidence ``q = max_c p_c`` at every pixel (no gradient).
2. Each strong view ``x^s_k`` is the same crop with colour jitter, grayscale and blur, and with a
   CutMix box ``B_k`` pasted from another unlabelled image of the batch (the next one,
   ``roll(., 1)``); the pseudo-labels and confidences are mixed with the same box, so the target
   of a pasted pixel is the pseudo-label of the image it came from.
3. UniMatch's feature perturbation: the weak view's encoder features go through dropout
   (p = 0.5) and the decoder again, ``x^fp``; it is trained to the un-mixed pseudo-labels.

With ``V`` the valid (non-padding) pixels of the unlabelled crops, the unlabelled loss of one
prediction ``z`` against targets ``(y^, q)`` is::

    l(z) = 1/|V| * sum_{i in V} 1[q_i >= tau] * CE(z_i, y^_i)

(the mean over all valid pixels, so that few confident pixels give a small loss), and the step
minimises::

    L = CE(f(x), y) + lambda * L_u,
    L_u = 1/2 * mean_k l(f(x^s_k)) + 1/2 * l(x^fp)   (feature perturbation on)
    L_u = mean_k l(f(x^s_k))                           (off)

Batch norm: by default the unlabelled views go through forwards of their own, normalised with
their own batch statistics, and never move the running averages (which evaluation uses): those
come from the labelled images alone, exactly as without ``--semi``. With
``semi.shared_forward`` (``--semi-shared-forward``) the weak views share the labelled images'
forward pass and every forward updates the running averages, as in UniMatch. On the few-label
generated data of ``segcl demo`` (8 labelled images, seed 0, 150 steps) the shared forward cost
9 points of val mIoU even with the unlabelled loss weighted 0; the separate forward did not.

Teacher: by default the pseudo-labels come from the student's own weak-view forward (training
mode), as in FixMatch and UniMatch. With ``--ema DECAY --semi-teacher ema`` they come from the
moving average of the student's weights instead (a mean teacher, Tarvainen & Valpola, NeurIPS
2017; :mod:`segcl.engine.ema`), run in evaluation mode: ``p = softmax(f_ema(x^w))``; the
student's weak view then only goes through the encoder, for the feature-perturbation branch.

Thresholds (``--semi-threshold-mode``): ``fixed`` (the default) keeps a pixel when
``q >= tau``. ``adaptive`` gives each class its own threshold ``tau_t(c)``, FreeMatch's
self-adaptive thresholds (Wang et al., "FreeMatch: Self-adaptive Thresholding for
Semi-supervised Learning", ICLR 2023, arXiv:2205.07246), and keeps a pixel when
``q >= tau_t(y^)``. With ``m`` = 0.999 (``--semi-threshold-momentum``), ``C`` classes and the
valid weak-view pixels ``V_t`` of step ``t``::

    tau_t    = m * tau_{t-1}  + (1 - m) * mean_{i in V_t} max_c p_ic       (tau_0 = 1/C)
    p~_t(c)  = m * p~_{t-1}(c) + (1 - m) * mean_{i in V_t} p_ic            (p~_0(c) = 1/C)
    tau_t(c) = min(tau, p~_t(c) / max_c' p~_t(c') * tau_t)

``tau_t`` tracks the model's mean confidence, so the threshold starts low (at ``1/C``: most
pseudo-labels count while the model is unsure) and rises as it learns (annealed); the classes
the model predicts less often (thin, rare classes) get lower thresholds (class-balanced). The
fixed ``--semi-threshold`` is the cap: adaptive mode never keeps fewer pixels than fixed mode
with the same value. The statistics are those of the pseudo-labels' logits (the teacher's with
``--semi-teacher ema``), updated before each step's mask, summed over the processes under
torchrun, and saved in ``last/`` (``heads.semi_thresholds.*``) so that ``--resume`` continues
them exactly (:class:`segcl.engine.semi.ClassThresholds`).

UniMatch's defaults: ``tau`` = 0.95 (``--semi-threshold``), ``K`` = 2 strong views
(``--semi-views``), CutMix probability 0.5 (``--semi-cutmix``), ``lambda`` = 1
(``--semi-weight``; UniMatch's ``(L_x + L_u) / 2`` is the same objective with half the learning
rate). During ``semi.warmup_steps`` (``--semi-warmup``) only the supervised term is trained and
no unlabelled batch is drawn.

Logged: ``loss_u`` (``L_u``), ``loss_u_strong`` (its strong-view part), ``loss_u_fp`` (its
feature-perturbation part) and ``confident`` (the share of valid pixels with ``q >= tau``);
in adaptive mode also ``threshold_mean`` (the mean of ``tau_t(c)`` over the classes) and
``threshold_global`` (``tau_t``).

The confident pseudo-labels (``y^`` where ``q >= tau``, ignored elsewhere) label the
unlabelled images for the methods composed after this one (the ``cross-image`` contrast): the
weak views' rows of the shared forward with ``--semi-shared-forward``, else the student's
CutMixed strong views (their pseudo-labels mixed with the same box), offered as
``FinetuneStep.views``: each of the ``K`` strong views of an image, through a forward of the
student with gradient. The loss functions are :mod:`segcl.engine.semi`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from segcl.methods import register
from segcl.methods.base import DenseView, FinetuneData, FinetuneMethod, FinetuneStep

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segcl.config import FinetuneConfig
    from segcl.data import DatasetInfo
    from segcl.engine.callbacks import Callback
    from segcl.models import SegmentationModel


@register
class Semi(FinetuneMethod):
    name = "semi"
    help = ("online semi-supervised training: confident weak-view pseudo-labels train CutMixed "
            "strong views of the unlabelled images (UniMatch / FixMatch)")
    flag = "--semi"
    config_keys = ("semi",)
    unlabelled = "required"
    metrics = ("loss_u", "loss_u_strong", "confident", "loss_u_fp", "threshold_mean",
               "threshold_global")

    def enabled(self, cfg: FinetuneConfig) -> bool:
        return bool(cfg.semi.enabled)

    def module(self, cfg: FinetuneConfig, model: SegmentationModel, info: DatasetInfo
               ) -> nn.Module | None:
        if cfg.semi.threshold_mode != "adaptive":
            return None
        from segcl.engine.semi import ClassThresholds

        return ClassThresholds(info.num_classes, cfg.semi.threshold_momentum, cfg.semi.threshold)

    def stream(
        self, cfg: FinetuneConfig, data: FinetuneData, batch_size: int, step: int,
        callback: Callback,
    ) -> Iterator[dict]:
        from segcl.data import SegmentationDataset
        from segcl.data.transforms import WeakStrongTransform
        from segcl.engine.data_setup import stream_loader

        semi = cfg.semi
        dataset = SegmentationDataset(
            data.unlabeled, data.info,
            WeakStrongTransform(data.size, tuple(cfg.scale), semi.strong_views, semi.cutmix,
                                mean=data.mean, std=data.std),
            seed=cfg.seed, cache=cfg.data.cache)
        # indexed by step: a resumed run draws the batches the uninterrupted run would draw
        stream = stream_loader(
            dataset, semi.batch_size or batch_size, cfg.seed, cfg.data.workers, data.device,
            start_step=max(step, semi.warmup_steps), rank=data.rank, world=data.world)
        callback.on_message(f"semi-supervised: {len(data.labeled)} labelled, "
                            f"{len(data.unlabeled)} unlabelled images")
        return stream

    def draws(self, cfg: FinetuneConfig, step: int) -> bool:
        return step >= cfg.semi.warmup_steps

    def inputs(self, cfg: FinetuneConfig, batch: dict[str, Tensor]) -> Tensor | None:
        # shared: the weak views join the labelled images' forward pass (UniMatch)
        return batch["image"] if cfg.semi.shared_forward else None

    def loss(
        self, module: nn.Module | None, step: FinetuneStep
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        batch = step.batches.get(self.name)
        if batch is None:  # warm-up: supervised only
            return None
        from segcl.engine.semi import ClassThresholds, running_stats_frozen, unlabeled_loss

        semi = step.cfg.semi
        feats: list[Tensor] | None = None
        logits: Tensor | None = None
        if semi.shared_forward:
            rows = step.segments[self.name]
            feats, logits = [f[rows] for f in step.feats], step.logits[rows]
        elif step.teacher is None:  # a forward of its own, leaving the running statistics alone
            with running_stats_frozen(step.model, True):
                feats, dense = step.model.forward_dense(batch["image"])
                logits = step.model.classify(dense, batch["image"].shape[-2:])
        elif semi.feature_perturbation:  # the teacher labels; the student's features feed FP
            with running_stats_frozen(step.model, True):
                feats = step.model.encoder(batch["image"])
        if step.teacher is not None:  # mean teacher: the average labels the weak views
            import torch

            with torch.no_grad():
                logits = step.teacher(batch["image"])
        assert logits is not None
        threshold: float | Tensor = semi.threshold
        logs: dict[str, Tensor] = {}
        if module is not None:  # adaptive: this step's weak views move the class thresholds
            assert isinstance(module, ClassThresholds)
            module.update(logits, batch["valid"])
            threshold = module.thresholds()
            logs = module.logs(threshold)
        loss_u, terms, target, strong = unlabeled_loss(step.model, feats, logits, batch, semi,
                                                       threshold)
        # later methods (the contrast) see the unlabelled images with their confident
        # pseudo-labels: the weak views' rows of the shared pass, else the strong views
        if semi.shared_forward:
            step.targets[self.name] = target.masked(threshold, step.ignore_index)
        else:
            step.views[self.name] = DenseView(
                strong.dense, strong.target.masked(threshold, step.ignore_index), strong.logits)
        return semi.weight * loss_u, {"loss_u": loss_u.detach(), **terms, **logs}

    def state_for_checkpoint(self, module: nn.Module | None) -> dict[str, Tensor]:
        if module is None:
            return {}
        from segcl.engine.semi import ClassThresholds

        assert isinstance(module, ClassThresholds)
        return module.state_for_checkpoint()

    def load_state(self, module: nn.Module | None, folder: str | Path) -> None:
        if module is None:
            return
        from segcl.engine.semi import ClassThresholds

        assert isinstance(module, ClassThresholds)
        module.load_state(folder)
