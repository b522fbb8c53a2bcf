"""The interface a training method implements, so that the engines never switch on its name.

:class:`Method` is what the registry (:mod:`segcl.methods`) stores: a ``name`` (the ``--method``
value), a ``kind`` (which engine runs it) and a one-line ``help`` (the CLI's ``--method`` list).
Each kind adds the hooks its engine calls:

- ``kind = "pretrain"``: :class:`PretrainMethod`, run by :mod:`segcl.engine.pretrain`.
- ``kind = "finetune"``: reserved for methods that add a loss to fine-tuning (online
  semi-supervised, cross-image contrast); a ``FinetuneMethod(Method)`` with the hooks
  :mod:`segcl.engine.finetune` needs can be registered the same way.

Method modules stay free of torch at import time (heavy imports live inside the hooks): the CLI
imports the registry to list the methods in ``--help``, and ``segcl --help`` must stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segcl.config import PretrainConfig
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
        :class:`~segcl.errors.ConfigError`); run before any file is written."""
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

    @abstractmethod
    def heads(
        self, cfg: PretrainConfig, model: SegmentationModel, terms: list[str],
        ignore_index: int, gather: bool,
    ) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
        """Projection heads and loss modules by term, created in ``terms`` order (the order
        consumes the random generator: keep it stable). ``model`` gives the encoder / decoder
        channels; ``gather``: the losses take negatives from every process."""

    @abstractmethod
    def loss(self, net: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total loss, {term: value})`` for one batch of the transform's ``keys``.

        ``net`` is the :class:`~segcl.engine.pretrain.PretrainNet` (``encoder``, ``decoder`` or
        None, ``heads``, ``criteria``); this runs inside its ``forward`` (DDP-safe), under
        autocast; the losses compute in float32.
        """
