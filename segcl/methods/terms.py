"""Building blocks the pre-training methods share: the three contrastive loss terms.

A term is a projection head (``heads.<term>`` in the checkpoint) and a loss from
:mod:`segcl.losses`:

=========  =====================================  ==========================================
term       head (input)                           loss
=========  =====================================  ==========================================
global     :class:`~segcl.models.heads.GlobalHead`  :class:`~segcl.losses.NTXentLoss`
           (deepest encoder feature)
local      :class:`~segcl.models.heads.LocalHead`   :class:`~segcl.losses.LocalContrastLoss`
           (deepest encoder feature, S x S grid)
pixel      :class:`~segcl.models.heads.PixelHead`   :class:`~segcl.losses.PixelContrastLoss`
           (decoder features; needs labels)
=========  =====================================  ==========================================

:func:`build_terms` creates heads and losses; :func:`pair_losses` computes the terms for two
batches of views of the same images (encoded together as one ``2N`` batch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segcl.methods.base import PretrainMethod

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segcl.config import PretrainConfig
    from segcl.models import SegmentationModel

#: default temperature of each term: 0.1 for NT-Xent (SimCLR), 0.07 for pixel contrast (Zhao)
DEFAULT_TEMPERATURE = {"global": 0.1, "local": 0.1, "pixel": 0.07}

#: terms computed on the encoder's deepest feature map
ENCODER_TERMS = ("global", "local")

#: terms that need labels (masks or pseudo-masks) and the decoder
LABEL_TERMS = ("pixel",)


def temperature(cfg: PretrainConfig, term: str) -> float:
    """``--temperature`` if given, else the term's default."""
    return DEFAULT_TEMPERATURE[term] if cfg.temperature is None else cfg.temperature


def build_terms(
    cfg: PretrainConfig, model: SegmentationModel, terms: list[str], ignore_index: int,
    gather: bool,
) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """Heads and losses of ``terms`` (created in the canonical order global, local, pixel)."""
    from segcl.losses import LocalContrastLoss, NTXentLoss, PixelContrastLoss
    from segcl.models.heads import GlobalHead, LocalHead, PixelHead

    deepest = model.encoder.channels[-1]
    heads: dict[str, nn.Module] = {}
    criteria: dict[str, nn.Module] = {}
    if "global" in terms:
        heads["global"] = GlobalHead(deepest, out_dim=cfg.proj_dim)
        criteria["global"] = NTXentLoss(temperature(cfg, "global"), gather_distributed=gather)
    if "local" in terms:
        heads["local"] = LocalHead(deepest, grid=cfg.local_grid, out_dim=cfg.proj_dim)
        criteria["local"] = LocalContrastLoss(temperature(cfg, "local"),
                                              gather_distributed=gather)
    if "pixel" in terms:
        heads["pixel"] = PixelHead(model.decoder.out_channels, dim=cfg.pixel_dim)
        criteria["pixel"] = PixelContrastLoss(
            temperature(cfg, "pixel"), ignore_index, variant=cfg.variant,
            grid=tuple(cfg.grid) if cfg.grid else None, max_pixels=cfg.max_pixels,
            gather_distributed=gather,
        )
    return heads, criteria


def pair_losses(net: Any, x1: Tensor, x2: Tensor, mask: Tensor | None = None
                ) -> dict[str, Tensor]:
    """The terms of ``net.heads`` for views ``x1, x2`` ``(N, 3, H, W)`` of the same images
    (and labels ``(N, H, W)`` shared by both, for the pixel term).

    Both views are encoded in one batch; the losses run in float32 with autocast disabled.
    """
    import torch

    from segcl.errors import ConfigError

    n = x1.shape[0]
    feats = net.encoder(torch.cat([x1, x2]))
    out: dict[str, Tensor] = {}
    proj: dict[str, Tensor] = {}
    for name in ENCODER_TERMS:
        if name in net.heads:
            proj[name] = net.heads[name](feats[-1])
    if "pixel" in net.heads:
        if net.decoder is None or mask is None:
            raise ConfigError("the pixel term needs a decoder and masks")
        proj["pixel"] = net.heads["pixel"](net.decoder(feats))
    with torch.autocast(device_type=x1.device.type, enabled=False):
        for name, z in proj.items():
            z1, z2 = z[:n].float(), z[n:].float()
            if name in LABEL_TERMS:
                out[name] = net.criteria[name]([z1, z2], mask)
            else:
                out[name] = net.criteria[name](z1, z2)
    return out


def total(terms: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """``(sum of the terms, terms)``: the usual :meth:`PretrainMethod.loss` result."""
    return sum(terms.values()), terms  # type: ignore[return-value]


class PairViewsMethod(PretrainMethod):
    """Base of the methods trained on an image and its colour-distorted copy with the same
    geometry (:class:`segcl.data.PairTransform`), with the mask for the pixel term."""

    def transform(
        self, cfg: PretrainConfig, size: tuple[int, int], mean: tuple[float, ...],
        std: tuple[float, ...], ignore_index: int,
    ) -> Any:
        from segcl.data import PairTransform

        return PairTransform(size, scale=tuple(cfg.scale), strength=cfg.strength, mean=mean,
                             std=std, ignore_index=ignore_index)

    def loss(self, net: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return total(pair_losses(net, batch["image"], batch["image2"], batch["mask"]))
