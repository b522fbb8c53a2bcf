"""Label-based (supervised) pixel contrast.

Zhao, Vemulapalli, Mansfield, Gong, Green, Shapira and Wu, "Contrastive Learning for
Label-Efficient Semantic Segmentation", ICCV 2021 (arXiv:2012.06985).

For unit-normalised pixel embeddings ``z`` (``N x D``) with labels ``y`` and ``s_ij = z_i . z_j /
tau``, over the valid pixels ``V`` (``y != ignore_index``)::

    P_i = {j in V: y_j = y_i}   (self included)      N_i = {k in V: y_k != y_i}
    l_i = mean_{j in P_i} softplus( LSE_{k in N_i} s_ik - s_ij )
        = -mean_{j in P_i} log( e^{s_ij} / (e^{s_ij} + sum_{k in N_i} e^{s_ik}) )

An *effective anchor* is a valid pixel with at least one negative. Within one set this is every
valid pixel when the valid pixels carry >= 2 distinct labels, and none otherwise. The loss of a set
is the mean of ``l_i`` over its effective anchors; a set without any (one class, or everything
ignored) gives 0 with the autograd graph intact (``emb.sum() * 0``), never NaN.

:func:`pixel_contrast_naive` builds the ``N x N`` matrix (reference); :func:`pixel_contrast` is the
linear-memory form (:mod:`segcl.losses._linear_pixel`), equal in value and gradient.

Defaults of :class:`PixelContrastLoss`: ``tau`` = 0.07 (Zhao et al.), ``ignore_index`` = 255,
``variant="single"`` (one set per image, the paper's best; ``"batch"``: one set over the batch,
optionally ``max_pixels`` of them at random), embeddings at their native resolution
(``grid=None``; the paper resizes them to 65 x 65), row blocks of ``block_size`` = 1024.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.errors import ConfigError
from segcl.losses._linear_pixel import (
    SHIFT_FREE_LIMIT,
    LinearPixelContrast,
    SymmetricPixelContrast,
    SymmetricPlan,
    make_plan,
)
from segcl.losses.checks import check_int, check_temperature
from segcl.losses.distributed import gather_with_grad, is_distributed, world_size
from segcl.losses.precision import autocast_off

VARIANTS = ("single", "batch")


def _check_inputs(emb: Tensor, labels: Tensor) -> None:
    if emb.ndim != 2 or labels.ndim != 1 or emb.shape[0] != labels.shape[0]:
        raise ValueError(
            f"pixel contrast expects emb (N, D) and labels (N,), got {tuple(emb.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")


@autocast_off
def pixel_contrast_naive(
    emb: Tensor, labels: Tensor, temperature: float, ignore_index: int
) -> Tensor:
    """Reference ``O(N^2)``-memory form of the loss in the module docstring.

    Args:
        emb: ``(N, D)`` unit-normalised embeddings (cast to float32; not re-normalised).
        labels: ``(N,)`` integer labels; ``ignore_index`` marks pixels left out entirely.
        temperature: ``tau`` (> 0).
        ignore_index: label value to ignore.

    Returns:
        Scalar float32: mean of ``l_i`` over the effective anchors, 0 when there are none.
    """
    tau = check_temperature(temperature)
    _check_inputs(emb, labels)
    zero = emb.float().sum() * 0.0
    valid = labels != ignore_index
    z, y = emb[valid].float(), labels[valid]
    if torch.unique(y).numel() < 2:
        return zero
    s = z @ z.T / tau
    pos = y[:, None] == y[None, :]
    ln = torch.logsumexp(s.masked_fill(pos, -math.inf), dim=1)  # every row has a negative
    terms = F.softplus(ln[:, None] - s).masked_fill(~pos, 0.0)
    return (terms.sum(dim=1) / pos.sum(dim=1)).mean()


def _class_sorted(z: Tensor, compact: Tensor, num: int) -> tuple[Tensor, list[int]]:
    """Rows of ``z`` sorted by ``compact`` label and the per-class offsets (``num + 1``)."""
    order = torch.argsort(compact, stable=True)
    counts = torch.bincount(compact, minlength=num)
    return z[order], [0, *torch.cumsum(counts, 0).tolist()]


@autocast_off
def pixel_contrast_sum(
    anchors: Tensor,
    anchor_labels: Tensor,
    keys: Tensor | None = None,
    key_labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    block_size: int = 1024,
) -> tuple[Tensor, int]:
    """Sum of ``l_i`` over the effective anchors and their number, in linear memory.

    ``anchors`` (``M x D``, float32, unit-normalised) contrast against ``keys`` (``N x D``); with
    ``keys=None`` the keys are the anchors themselves. All rows must be valid (ignored pixels
    removed). Positives of anchor ``i`` are the keys with its label (it must itself be among the
    keys for the self-pair of the paper's formula to count), negatives the other keys.
    """
    inv_tau = 1.0 / check_temperature(temperature)
    check_int(block_size, "block_size", 1)
    symmetric = keys is None or key_labels is None
    anchors = anchors.float()
    keys, key_labels = (anchors, anchor_labels) if symmetric else (keys.float(), key_labels)
    uniq, inverse = torch.unique(torch.cat([anchor_labels, key_labels]), return_inverse=True)
    num = uniq.numel()
    zero = anchors.sum() * 0.0 + (0.0 if symmetric else keys.sum() * 0.0)
    if num < 2 or anchors.shape[0] == 0:
        return zero, 0
    q_sorted, q_bounds = _class_sorted(anchors, inverse[: anchors.shape[0]], num)
    if symmetric:
        bound = inv_tau * float(q_sorted.detach().pow(2).sum(dim=1).max())
        if bound <= SHIFT_FREE_LIMIT:  # fast path; otherwise the running-max Function below
            plan = SymmetricPlan.build(q_bounds, block_size)
            return SymmetricPixelContrast.apply(q_sorted, plan, inv_tau).sum(), anchors.shape[0]
        k_sorted, k_bounds = q_sorted, q_bounds
    else:
        k_sorted, k_bounds = _class_sorted(keys, inverse[anchors.shape[0] :], num)
    plan = make_plan(q_bounds, k_bounds, block_size)
    count = sum(blk.r1 - blk.r0 for blk in plan)
    if count == 0:
        return zero, 0
    losses = LinearPixelContrast.apply(q_sorted, k_sorted, plan, inv_tau)
    return losses.sum(), count


@autocast_off
def pixel_contrast(
    emb: Tensor,
    labels: Tensor,
    temperature: float = 0.07,
    ignore_index: int = 255,
    block_size: int = 1024,
) -> Tensor:
    """Linear-memory form of :func:`pixel_contrast_naive` (same arguments, same result).

    Memory ``O(block_size^2 + N D)``. On CPU 512-1024 measured fastest (tiles stay in cache; see
    ``scripts/bench_pixel_loss.py``); on a GPU larger blocks (4096+) should pay off through fewer
    kernel launches (not measured here).
    """
    check_temperature(temperature)
    _check_inputs(emb, labels)
    check_int(block_size, "block_size", 1)
    valid = labels != ignore_index
    z = emb.float()
    total, count = pixel_contrast_sum(
        z[valid], labels[valid], temperature=temperature, block_size=block_size
    )
    if count == 0:
        return z.sum() * 0.0
    return total / count


def _dense_to_rows(views: list[Tensor], labels: Tensor) -> tuple[Tensor, Tensor]:
    """Views ``V x (B, D, h, w)`` + labels ``(B, h, w)`` -> ``(B, V h w, D)`` and ``(B, V h w)``."""
    stacked = torch.stack(views, dim=1)  # (B, V, D, h, w)
    b, v, d, h, w = stacked.shape
    rows = stacked.permute(0, 1, 3, 4, 2).reshape(b, v * h * w, d)
    return rows, labels.reshape(b, 1, h * w).expand(b, v, h * w).reshape(b, v * h * w)


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of ``(B, H, W)`` integer labels to ``size`` (pixel-centre aligned,
    the same sampling grid as bilinear ``align_corners=False``)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].to(labels.dtype)


class PixelContrastLoss(nn.Module):
    """Label-based pixel contrast of Zhao et al. (ICCV 2021) on dense projections.

    ``forward(embeddings, labels)``:
        embeddings: ``(B, D, h, w)`` raw pixel-head outputs, or a sequence of such tensors (the
            original and its distorted copy, same geometry) sharing ``labels``. Embeddings are
            resized bilinearly to ``grid`` when set (paper: 65 x 65), then L2-normalised in
            float32.
        labels: ``(B, H, W)`` integer labels, resized by nearest neighbour to the embedding grid.

    Variants (loss definition in the module docstring):
        ``"single"`` (paper's best): the pixels of image ``b`` in all views form one set; loss per
            image, then the mean over images that have >= 1 effective anchor (so a single-class
            or fully ignored image neither adds a term nor dilutes the mean).
        ``"batch"``: all pixels of the batch (all views) form one set, optionally subsampled at
            random to ``max_pixels`` valid pixels (torch's global RNG). With
            ``gather_distributed`` the keys are the pixels of all ranks (each rank contributes at
            most ``max_pixels // world_size`` valid pixels); each rank returns
            ``world_size * (sum of its anchors' l_i) / (global effective anchors)``, whose mean
            over ranks is the global loss (DDP averaging then matches one process).
            ``gather_distributed`` has no effect on ``"single"`` (no cross-image terms).

    Returns a float32 scalar; 0 with the graph intact when no image/set has an effective anchor.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        ignore_index: int = 255,
        variant: str = "single",
        grid: tuple[int, int] | None = None,
        max_pixels: int | None = None,
        block_size: int = 1024,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"ignore_index must be an integer, got {ignore_index!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if grid is not None:
            if len(grid) != 2 or any(isinstance(g, bool) or int(g) != g or g < 1 for g in grid):
                raise ConfigError(f"grid must be two positive integers (h, w), got {grid!r}")
            grid = (int(grid[0]), int(grid[1]))
        if max_pixels is not None and (
            isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 2
        ):
            raise ConfigError(f"max_pixels must be an integer >= 2 or None, got {max_pixels!r}")
        if max_pixels is not None and variant != "batch":
            raise ConfigError("max_pixels only applies to variant='batch'")
        self.ignore_index = ignore_index
        self.variant = variant
        self.grid = grid
        self.max_pixels = max_pixels
        self.block_size = check_int(block_size, "block_size", 1)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
            f"variant={self.variant!r}, grid={self.grid}, max_pixels={self.max_pixels}, "
            f"block_size={self.block_size}, gather_distributed={self.gather_distributed}"
        )

    def _views(self, embeddings: Tensor | Sequence[Tensor], labels: Tensor) -> list[Tensor]:
        views = [embeddings] if isinstance(embeddings, Tensor) else list(embeddings)
        if not views:
            raise ValueError("PixelContrastLoss needs at least one embedding tensor")
        shape = views[0].shape
        if len(shape) != 4 or any(v.shape != shape for v in views):
            raise ValueError(
                "embeddings must be (B, D, h, w) tensors of one shape, got "
                f"{[tuple(v.shape) for v in views]}"
            )
        if labels.ndim != 3 or labels.shape[0] != shape[0]:
            raise ValueError(
                f"labels must be (B, H, W) with B = {shape[0]}, got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        out = []
        for v in views:
            v = v.float()
            if self.grid is not None and tuple(v.shape[-2:]) != self.grid:
                v = F.interpolate(v, size=self.grid, mode="bilinear", align_corners=False)
            out.append(F.normalize(v, dim=1))
        return out

    @autocast_off
    def forward(self, embeddings: Tensor | Sequence[Tensor], labels: Tensor) -> Tensor:
        views = self._views(embeddings, labels)
        size = (views[0].shape[-2], views[0].shape[-1])
        rows, row_labels = _dense_to_rows(views, resize_labels(labels, size))
        if self.variant == "single":
            return self._single(rows, row_labels)
        return self._batch(rows.reshape(-1, rows.shape[-1]), row_labels.reshape(-1))

    def _single(self, rows: Tensor, row_labels: Tensor) -> Tensor:
        losses = []
        for z, y in zip(rows, row_labels, strict=True):
            valid = y != self.ignore_index
            total, count = pixel_contrast_sum(
                z[valid], y[valid], temperature=self.temperature, block_size=self.block_size
            )
            if count > 0:
                losses.append(total / count)
        if not losses:
            return rows.sum() * 0.0
        return torch.stack(losses).mean()

    def _batch(self, z: Tensor, y: Tensor) -> Tensor:
        gather = self.gather_distributed and is_distributed() and world_size() > 1
        if self.max_pixels is not None:
            z, y = self._subsample(
                z, y, max(1, self.max_pixels // world_size()) if gather else None
            )
        zero = z.sum() * 0.0
        valid = y != self.ignore_index
        if not gather:
            total, count = pixel_contrast_sum(
                z[valid], y[valid], temperature=self.temperature, block_size=self.block_size
            )
            return total / count if count > 0 else zero
        keys, key_labels = gather_with_grad(z), gather_with_grad(y)
        key_valid = key_labels != self.ignore_index
        keys, key_labels = keys[key_valid], key_labels[key_valid]
        n_global = keys.shape[0] if torch.unique(key_labels).numel() >= 2 else 0
        total, _ = pixel_contrast_sum(
            z[valid],
            y[valid],
            keys,
            key_labels,
            temperature=self.temperature,
            block_size=self.block_size,
        )
        if n_global == 0:
            return zero + keys.sum() * 0.0
        return total * (world_size() / n_global)

    def _subsample(self, z: Tensor, y: Tensor, pad_to: int | None) -> tuple[Tensor, Tensor]:
        """Keep at most ``max_pixels`` (or ``pad_to``) random valid pixels; with ``pad_to`` pad
        with ignored rows to exactly that many, so every rank gathers the same size."""
        limit = self.max_pixels if pad_to is None else pad_to
        idx = torch.nonzero(y != self.ignore_index).squeeze(1)
        if idx.numel() > limit:
            idx = idx[torch.randperm(idx.numel(), device=idx.device)[:limit]]
        z, y = z[idx], y[idx]
        if pad_to is not None and idx.numel() < pad_to:
            missing = pad_to - idx.numel()
            z = torch.cat([z, z.new_zeros(missing, z.shape[1])])
            y = torch.cat([y, y.new_full((missing,), self.ignore_index)])
        return z, y
