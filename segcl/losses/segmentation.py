"""The supervised loss of ``segcl finetune``: ``ce``, ``dice``, ``focal`` or ``ce+dice``, with
optional class weights and OHEM pixel selection.

Each term lives in its own module (paper and formula there): cross-entropy
(:mod:`segcl.losses.cross_entropy`), soft Dice (:mod:`segcl.losses.dice`), focal
(:mod:`segcl.losses.focal`); OHEM (:mod:`segcl.losses.ohem`) selects the pixels of the
pixel-wise term (cross-entropy or focal; Dice is one ratio over all pixels and always sees every
labelled pixel). ``ce+dice`` is the unweighted sum ``L_ce + L_dice``. The class weights weight
every term (see each module); ``ignore_index`` pixels never count.

Defaults: ``ce``, no class weights, ``ignore_index`` = 255, no OHEM (when on: threshold 0.7,
``min_kept`` = 10000 per image), focal ``gamma`` = 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segcl.errors import ConfigError
from segcl.losses.cross_entropy import cross_entropy
from segcl.losses.dice import soft_dice_loss
from segcl.losses.focal import focal_loss
from segcl.losses.ohem import ohem_keep

#: the loss names, each a ``+``-joined list of terms
SEGMENTATION_LOSSES = {"ce": ("ce",), "dice": ("dice",), "focal": ("focal",),
                       "ce+dice": ("ce", "dice")}


class SegmentationLoss(nn.Module):
    """``forward(logits, target) -> (loss, {term: value})`` for one of
    :data:`SEGMENTATION_LOSSES`.

    Args:
        name: ``ce``, ``dice``, ``focal`` or ``ce+dice``.
        class_weights: one weight per class, or None.
        ignore_index: label of pixels that do not count.
        ohem: select the hard pixels of the pixel-wise term (:func:`ohem_keep`).
        ohem_threshold / ohem_min_kept: the OHEM rule's probability threshold and minimum
            number of kept pixels per image.
        focal_gamma: ``gamma`` of the focal loss.
    """

    def __init__(
        self,
        name: str = "ce",
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        ohem: bool = False,
        ohem_threshold: float = 0.7,
        ohem_min_kept: int = 10000,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if name not in SEGMENTATION_LOSSES:
            raise ConfigError(f"unknown loss {name!r}; choose from "
                              f"{', '.join(SEGMENTATION_LOSSES)}")
        self.terms = SEGMENTATION_LOSSES[name]
        if ohem and not any(t in ("ce", "focal") for t in self.terms):
            raise ConfigError("OHEM needs a pixel-wise term (ce or focal)")
        self.name, self.ignore_index, self.ohem = name, int(ignore_index), bool(ohem)
        self.ohem_threshold, self.ohem_min_kept = float(ohem_threshold), int(ohem_min_kept)
        self.focal_gamma = float(focal_gamma)
        weights = None if class_weights is None else torch.as_tensor(class_weights).float()
        self.register_buffer("class_weights", weights)

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of ``logits`` (B, C, H, W) against ``target`` (B, H, W), and its detached
        terms by name (``ce``, ``dice``, ``focal``)."""
        logits = logits.float()
        w = self.class_weights
        if w is not None and w.numel() != logits.shape[1]:
            raise ConfigError(f"{w.numel()} class weights for {logits.shape[1]} classes")
        keep = (ohem_keep(logits, target, self.ignore_index, self.ohem_threshold,
                          self.ohem_min_kept) if self.ohem else None)
        values: dict[str, Tensor] = {}
        for term in self.terms:
            if term == "ce":
                values[term] = cross_entropy(logits, target, w, self.ignore_index, keep)
            elif term == "focal":
                values[term] = focal_loss(logits, target, self.focal_gamma, w, self.ignore_index,
                                          keep)
            else:
                values[term] = soft_dice_loss(logits, target, w, self.ignore_index)
        loss = values[self.terms[0]]
        for term in self.terms[1:]:
            loss = loss + values[term]
        return loss, {k: v.detach() for k, v in values.items()}

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, ignore_index={self.ignore_index}, ohem={self.ohem}, "
                f"weighted={self.class_weights is not None}")
