"""Cross-image pixel contrast as an auxiliary fine-tuning loss: the module of the registered
method :mod:`segcl.methods.cross_image` (``--contrast cross-image``).

``L = CE + lambda * L_contrast`` (Wang et al., "Exploring Cross-Image Pixel Contrast for
Semantic Segmentation", ICCV 2021): a projection head parallel to the classifier embeds the
decoder's dense features; :class:`segcl.losses.CrossImagePixelContrast` samples hard and easy
anchors per image and class and contrasts them across the batch (and with per-class pixel /
region queues when the memory bank is on), with the supervised-contrastive loss
``l_i = -(tau / base_tau) mean_{p in P_i} log(e^{s_ip} / (e^{s_ip} + sum_{n in N_i} e^{s_in}))``
over the anchors ``i`` (``s = z . z' / tau`` of unit embeddings, ``P_i`` / ``N_i`` the keys of the
same / another class). The head and the queues are training-only:
:meth:`CrossImageAux.state_for_checkpoint` stores them in ``last/`` for ``--resume`` under
``heads.contrast.*`` and ``heads.memory.*``; the exported model leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.checkpoint import load_prefixed_state, read_weights
from segcl.config import ContrastConfig
from segcl.data import DatasetInfo
from segcl.losses import CrossImagePixelContrast, MemoryBank
from segcl.losses.pixel import resize_labels
from segcl.models.heads import ContrastHead

HEAD_PREFIX = "heads.contrast."
MEMORY_PREFIX = "heads.memory."


class CrossImageAux(nn.Module):
    """Projection head + cross-image pixel contrast (+ memory bank), with the weight schedule.

    Args:
        cfg: the ``contrast`` section of the fine-tuning config (weight ``lambda``, warm-up
            steps, temperatures, sampling sizes, memory bank and its size, embedding dim).
        in_channels: channels of the decoder's dense features.
        info: the dataset's classes and ignore index.

    ``forward(dense, mask, logits, step)`` returns the weighted loss, a float32 scalar:
    exactly 0 while ``step < cfg.warmup_steps`` (the memory bank is still filled then, with
    embeddings of the not-yet-trained head, as in the public code), ``cfg.weight * L`` after.
    """

    def __init__(self, cfg: ContrastConfig, in_channels: int, info: DatasetInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.ignore_index = info.ignore_index
        self.head = ContrastHead(in_channels, dim=cfg.dim)
        memory = (
            MemoryBank(info.num_classes, dim=cfg.dim, pixel_size=cfg.memory_size,
                       region_size=cfg.memory_size)
            if cfg.memory_bank
            else None
        )
        self.loss = CrossImagePixelContrast(
            info.num_classes, info.ignore_index, temperature=cfg.temperature,
            base_temperature=cfg.base_temperature, max_samples=cfg.max_samples,
            max_views=cfg.max_views, memory=memory,
        )

    @property
    def memory(self) -> MemoryBank | None:
        """The pixel / region queues (None without the memory bank)."""
        return self.loss.memory

    def weight(self, step: int) -> float:
        """``lambda`` of the current step: 0 during the warm-up, ``cfg.weight`` after."""
        return 0.0 if step < self.cfg.warmup_steps else float(self.cfg.weight)

    def forward(self, dense: Tensor, mask: Tensor, logits: Tensor, step: int) -> Tensor:
        """Weighted auxiliary loss for one batch.

        Args:
            dense: ``(B, C, h, w)`` decoder features (any dtype; autocast is fine).
            mask: ``(B, H, W)`` integer labels of the batch.
            logits: ``(B, K, H', W')`` segmentation logits (only their argmax is used).
            step: the optimiser step about to be taken (for the warm-up).
        """
        weight = self.weight(step)
        zero = torch.zeros((), device=dense.device, dtype=torch.float32)
        if weight == 0.0:
            if self.memory is not None and self.training:
                with torch.no_grad():
                    emb = self.head(dense).float()
                    labels = resize_labels(mask, tuple(emb.shape[-2:]))
                    self.memory.update(F.normalize(emb, dim=1), labels, self.ignore_index)
            return zero
        emb = self.head(dense)
        # the loss works in float32: exp(s / tau) with tau = 0.1 overflows half precision
        with torch.autocast(device_type=dense.device.type, enabled=False):
            loss = self.loss(emb.float(), mask, logits.detach().float())
        return weight * loss

    def state_for_checkpoint(self) -> dict[str, Tensor]:
        """Head weights (``heads.contrast.*``) and memory-bank buffers (``heads.memory.*``)."""
        out = {HEAD_PREFIX + k: v for k, v in self.head.state_dict().items()}
        if self.memory is not None:
            out.update({MEMORY_PREFIX + k: v for k, v in self.memory.state_dict().items()})
        return out

    def load_state(self, folder: str | Path) -> None:
        """Restore the head and memory bank saved by :meth:`state_for_checkpoint` in ``folder``."""
        weights = read_weights(folder)
        parts: list[tuple[str, nn.Module]] = [(HEAD_PREFIX, self.head)]
        if self.memory is not None:
            parts.append((MEMORY_PREFIX, self.memory))
        for prefix, module in parts:
            load_prefixed_state(module, folder, prefix, "this checkpoint was not saved with the "
                                "same auxiliary contrast settings", weights)
