"""The interface a training method implements, so that the engines never switch on its name.

:class:`Method` is what the registry (:mod:`segcl.methods`) stores: a ``name`` (the ``--method``
value), a ``kind`` (which engine runs it) and a one-line ``help`` (the CLI's ``--method`` list).
Each kind adds the hooks its engine calls:

- ``kind = "pretrain"``: :class:`PretrainMethod`, run by :mod:`segcl.engine.pretrain`.
- ``kind = "finetune"``: :class:`FinetuneMethod`, an addition to the cross-entropy training of
  :mod:`segcl.engine.finetune` (online semi-supervised training, an auxiliary loss, offline
  pseudo-labels). Any number of them can be active in one run; the config decides which
  (:meth:`FinetuneMethod.enabled`, :func:`segcl.methods.active`).

Method modules stay free of torch at import time (heavy imports live inside the hooks): the CLI
imports the registry to list the methods in ``--help``, and ``segcl --help`` must stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn

    from segcl.config import FinetuneConfig, PretrainConfig
    from segcl.data import DatasetInfo, Sample
    from segcl.engine.callbacks import Callback
    from segcl.models import SegmentationModel

#: the engines a method can belong to
KINDS = ("pretrain", "finetune")

#: how a pre-training method uses masks: never / when it has some / it cannot run without
LABEL_USE = ("none", "optional", "required")


class Method:
    """A registered training method: its name, kind and one-line help."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"<{self.kind} method {self.name!r}>"


class PretrainMethod(Method, ABC):
    """A contrastive pre-training method run by :func:`segcl.engine.pretrain.pretrain`.

    Declares, in one place:

    - ``labels`` / ``unlabelled``: the data it needs. ``labels`` is one of :data:`LABEL_USE`
      (masks are read only when a term that needs labels runs; ``"required"`` fails without
      any labelled image); ``unlabelled``: images without a (pseudo-)mask join the training set
      (their masks are all ``ignore_index``).
    - :meth:`transform`: the views each image gives (two views, or image + distorted copy).
    - :meth:`terms`: the loss terms (``global``, ``local``, ``pixel``) it trains; each term is
      one projection head ``heads.<term>`` in the checkpoint (:meth:`heads`).
    - :meth:`trains_decoder`: encoder only, or encoder + decoder.
    - :meth:`loss`: one batch -> total loss and the logged terms.
    """

    kind = "pretrain"
    labels: ClassVar[str] = "none"
    unlabelled: ClassVar[bool] = True

    def check(self, cfg: PretrainConfig) -> None:
        """Reject option combinations that make no sense for this method (one-line
        :class:`~segcl.errors.ConfigError`). :class:`~segcl.config.PretrainConfig` calls it
        when it is built, so it must not import torch: a refused flag fails before any import
        of torch or any file (an ``--overwrite`` run included) is touched."""
        if cfg.pseudo_labels and self.labels == "none":
            from segcl.errors import ConfigError

            raise ConfigError(f"--pseudo-labels has no effect with --method {self.name} "
                              "(it uses no labels)")

    @abstractmethod
    def terms(self, cfg: PretrainConfig) -> list[str]:
        """The loss terms asked for, in canonical order (``PRETRAIN_LOSSES``). Terms that need
        labels are dropped by the engine when there are none (unless ``labels="required"``)."""

    @abstractmethod
    def trains_decoder(self, terms: list[str]) -> bool:
        """Whether the decoder is part of the network (trained and saved) for ``terms``."""

    @abstractmethod
    def transform(
        self, cfg: PretrainConfig, size: tuple[int, int], mean: tuple[float, ...],
        std: tuple[float, ...], ignore_index: int,
    ) -> Any:
        """The dataset transform (``image, mask, rng -> tensors``, named by its ``keys``)."""

    def heads(
        self, cfg: PretrainConfig, model: SegmentationModel, terms: list[str],
        ignore_index: int, gather: bool,
    ) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
        """Projection heads and loss modules by term, created in ``terms`` order (the order
        consumes the random generator: keep it stable). ``model`` gives the encoder / decoder
        channels; ``gather``: the losses take negatives from every process.

        Default: the standard head and loss of each term (:func:`segcl.methods.terms.build_terms`).
        """
        from segcl.methods.terms import build_terms

        return build_terms(cfg, model, terms, ignore_index, gather)

    @abstractmethod
    def loss(self, net: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total loss, {term: value})`` for one batch of the transform's ``keys``.

        ``net`` is the :class:`~segcl.engine.pretrain.PretrainNet` (``encoder``, ``decoder`` or
        None, ``heads``, ``criteria``); this runs inside its ``forward`` (DDP-safe), under
        autocast; the losses compute in float32.
        """


@dataclass
class FinetuneData:
    """The images of a fine-tuning run, as the data hooks of :class:`FinetuneMethod` see them.

    ``labeled``: the labelled training subset; ``unlabeled``: the other training images (plus
    ``--unlabeled``), their mask files unread; ``size``, ``mean``, ``std``: the training crop and
    the normalisation; ``rank`` / ``world``: this process under torchrun.
    """

    info: DatasetInfo
    labeled: list[Sample]
    unlabeled: list[Sample]
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    rank: int = 0
    world: int = 1


class DenseView(NamedTuple):
    """Images of one training step as a dense loss sees them: the decoder features ``dense``
    ``(B, C, h, w)`` (with gradient), their ``labels`` ``(B, H, W)`` (``ignore_index`` where
    unknown) and the class scores ``logits`` ``(B, K, H, W)``."""

    dense: Tensor
    labels: Tensor
    logits: Tensor


@dataclass
class FinetuneStep:
    """One training step as the loss hooks of :class:`FinetuneMethod` see it.

    The model ran once on ``B = n + sum of the added images``: first the ``n`` labelled images
    (labels ``mask``, ``(n, H, W)``), then the images each method added
    (:meth:`FinetuneMethod.inputs`), method ``name``'s at rows ``segments[name]``. ``feats``
    are the encoder features, ``dense`` the decoder features and ``logits`` the class scores at
    the crop size ``(B, K, H, W)`` of that batch; ``batches[name]`` is the batch a method drew
    from its stream. A method may give labels to its images in ``targets[name]``
    (``(rows, H, W)``, ``ignore_index`` where unknown) for the methods composed after it.
    ``teacher`` is the moving average of the model's weights when a method should take its
    targets from it (``--semi-teacher ema``; evaluation mode, no gradient), else ``None``.
    A method that forwards images of its own, outside that shared pass, may offer them with
    their labels in ``views[name]`` (a :class:`DenseView`) to the methods composed after it;
    :meth:`dense_views` joins them to the shared pass.
    """

    cfg: FinetuneConfig
    model: SegmentationModel
    step: int
    n: int
    mask: Tensor
    ignore_index: int
    feats: list[Tensor]
    dense: Tensor
    logits: Tensor
    batches: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    segments: dict[str, slice] = field(default_factory=dict)
    targets: dict[str, Tensor] = field(default_factory=dict)
    teacher: nn.Module | None = None
    views: dict[str, DenseView] = field(default_factory=dict)

    def labels(self) -> Tensor:
        """``(B, H, W)`` labels of the whole forward batch: ``mask`` on the labelled images,
        ``targets[name]`` on the images of method ``name``, ``ignore_index`` where a method set
        none. Just ``mask`` when no method added images."""
        if not self.segments:
            return self.mask
        import torch

        parts = [self.mask]
        for name, rows in self.segments.items():
            target = self.targets.get(name)
            if target is None:
                shape = (rows.stop - rows.start, *self.mask.shape[1:])
                target = self.mask.new_full(shape, self.ignore_index)
            parts.append(target)
        return torch.cat(parts)

    def dense_views(self) -> DenseView:
        """Every image of this step that the model forwarded with gradient and has labels for:
        the shared pass (``dense``, :meth:`labels`, ``logits``) followed by each method's own
        ``views``, concatenated along the batch. Just the shared pass when no method added
        views."""
        shared = DenseView(self.dense, self.labels(), self.logits)
        if not self.views:
            return shared
        import torch

        parts = [shared, *self.views.values()]
        for view in parts[1:]:
            if view.dense.shape[1:] != shared.dense.shape[1:] or (
                    view.logits.shape[1:] != shared.logits.shape[1:]):
                raise ValueError("a method's views must match the shared pass's feature and "
                                 f"logit shapes: {tuple(view.dense.shape)} and "
                                 f"{tuple(view.logits.shape)} against "
                                 f"{tuple(shared.dense.shape)} and {tuple(shared.logits.shape)}")
        return DenseView(*(torch.cat(t) for t in zip(*parts, strict=True)))


class FinetuneMethod(Method, ABC):
    """An addition to the supervised fine-tuning of :func:`segcl.engine.finetune.finetune`.

    Fine-tuning minimises ``L = CE(f(x), y) + sum_m L_m`` over the labelled batch ``(x, y)``;
    each active method ``m`` (any number at once, composed in registration order) may change the
    training data, add images to the forward pass, add modules and add a term ``L_m``.

    Declares, in one place:

    - ``flag`` (the command-line switch, for messages), ``config_keys`` (the
      :class:`~segcl.config.FinetuneConfig` fields, i.e. ``config.yaml`` keys, it reads; see
      :meth:`options`) and :meth:`enabled` (whether a config switches it on).
    - ``unlabelled`` (one of :data:`LABEL_USE`: its use of the unlabelled images; ``"required"``
      fails without any) and ``teacher`` (it needs a trained model): the data it needs.
      :meth:`train_samples` adds (pseudo-)labelled images to the supervised training set;
      :meth:`stream`, :meth:`draws` and :meth:`inputs` give it a second stream of batches whose
      images share the model's forward pass.
    - :meth:`module`: the modules / heads it trains next to the model (optimised with it,
      synchronised by DDP, never exported); :meth:`unused_parameters` when they can miss a
      gradient.
    - :meth:`loss`: its term ``L_m`` of a step and the values it logs (keys in ``metrics``).
    - :meth:`state_for_checkpoint` / :meth:`load_state`: its training-only state in ``last/``
      (for ``--resume``).

    Every hook has a do-nothing default; a method overrides the ones it needs.
    """

    kind = "finetune"
    flag: ClassVar[str] = ""
    config_keys: ClassVar[tuple[str, ...]] = ()
    unlabelled: ClassVar[str] = "none"
    teacher: ClassVar[bool] = False
    metrics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def enabled(self, cfg: FinetuneConfig) -> bool:
        """Whether ``cfg`` switches this method on."""

    def options(self, cfg: FinetuneConfig) -> Any:
        """This method's settings: the config section ``cfg.<key>`` for a single key, else a
        ``{key: value}`` dictionary of its ``config_keys``."""
        if len(self.config_keys) == 1:
            return getattr(cfg, self.config_keys[0])
        return {key: getattr(cfg, key) for key in self.config_keys}

    def check(self, cfg: FinetuneConfig, data: FinetuneData) -> None:
        """Reject a run this method cannot do (one-line :class:`~segcl.errors.ConfigError`),
        before any training; by default, a missing ``unlabelled="required"`` set."""
        if self.unlabelled == "required" and not data.unlabeled:
            from segcl.errors import ConfigError

            raise ConfigError(f"{self.flag} needs unlabelled images: train on a labelled fraction "
                              "or add --unlabeled DIR")

    def train_samples(
        self, cfg: FinetuneConfig, data: FinetuneData, callback: Callback
    ) -> tuple[list[Sample], list[np.ndarray]]:
        """Images (and their masks, at the image's size) to add to the supervised training set;
        runs before the model is built."""
        return [], []

    def module(
        self, cfg: FinetuneConfig, model: SegmentationModel, info: DatasetInfo
    ) -> nn.Module | None:
        """A module trained with ``model`` (a head, a memory bank), created right after the
        model, in registration order (the order consumes the random generator: keep it);
        :meth:`loss` receives it."""
        return None

    def unused_parameters(self, cfg: FinetuneConfig) -> bool:
        """Whether the parameters of :meth:`module` may get no gradient in some steps."""
        return False

    def stream(
        self, cfg: FinetuneConfig, data: FinetuneData, batch_size: int, step: int,
        callback: Callback,
    ) -> Iterator[dict] | None:
        """An endless iterator of extra batches, to resume at ``step``, or None; ``batch_size``
        is the labelled batch per process."""
        return None

    def draws(self, cfg: FinetuneConfig, step: int) -> bool:
        """Whether the step ``step`` takes a batch from :meth:`stream`."""
        return True

    def inputs(self, cfg: FinetuneConfig, batch: dict[str, Tensor]) -> Tensor | None:
        """Images of a stream batch that join the labelled images' forward pass, or None."""
        return None

    def loss(
        self, module: nn.Module | None, step: FinetuneStep
    ) -> tuple[Tensor, dict[str, Tensor]] | None:
        """``(L_m, {metric: value})`` of one step (added to the loss as is, so weighted), or
        None when the method adds no term. Runs inside the DDP-wrapped forward, under autocast."""
        return None

    def state_for_checkpoint(self, module: nn.Module | None) -> dict[str, Tensor]:
        """Tensors saved in ``last/`` next to the model weights (under ``heads.``)."""
        return {}

    def load_state(self, module: nn.Module | None, folder: str | Path) -> None:
        """Restore :meth:`state_for_checkpoint` from the checkpoint ``folder`` (on resume)."""
