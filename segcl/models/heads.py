"""Projection heads of the contrastive methods (SimCLR, multi-scale, Zhao et al., Wang et al.).

One generic builder, :func:`projection_mlp`, stacks linear (or 1x1 conv) layers with optional
BatchNorm and ReLU between them; each method's head is a few lines quoting its paper.

Every head returns UNNORMALISED projections; the losses in :mod:`segcl.losses` L2-normalise their
inputs (in float32). The heads are training-only: they are dropped for fine-tuning and inference.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn

from segcl.errors import ConfigError


def _check_dims(dims: Sequence[int]) -> list[int]:
    dims = list(dims)
    if len(dims) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"projection head sizes must be >= 2 positive integers, got {dims}")
    return dims


def projection_mlp(dims: Sequence[int], *, conv: bool, batch_norm: bool) -> nn.Sequential:
    """``dims[0] -> dims[1] -> ... -> dims[-1]``: Linear (or 1x1 Conv2d) layers with
    [BatchNorm] + ReLU after every layer but the last (the last has a bias, no activation)."""
    dims = _check_dims(dims)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        last = i == len(dims) - 2
        norm = batch_norm and not last
        if conv:
            layers.append(nn.Conv2d(d_in, d_out, kernel_size=1, bias=not norm))
        else:
            layers.append(nn.Linear(d_in, d_out, bias=not norm))
        if not last:
            if norm:
                layers.append(nn.BatchNorm2d(d_out) if conv else nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ProjectionMLP(nn.Module):
    """SimCLR projection g(.), an MLP with one hidden layer: Linear-BN-ReLU-Linear.

    ``(N, in_dim) -> (N, out_dim)``. ``hidden_dim`` defaults to ``in_dim`` (as in SimCLR).
    BatchNorm needs more than one sample per batch in training mode.
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        self.net = projection_mlp(
            [in_dim, hidden_dim or in_dim, out_dim], conv=False, batch_norm=True
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GlobalHead(nn.Module):
    """Global head (SimCLR; multi-scale study ``L_g``): global average pool, then
    :class:`ProjectionMLP`. ``(N, C, H, W) -> (N, out_dim)``."""

    def __init__(self, in_ch: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = ProjectionMLP(in_ch, hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.pool(x).flatten(1))


class LocalHead(nn.Module):
    """Local head of the multi-scale contrast study: pool the feature map to an
    S x S grid (S = 4), then a 1x1 conv projection conv-ReLU-conv with 128 outputs.
    ``(N, C, H, W) -> (N, out_dim, S, S)``."""

    def __init__(
        self, in_ch: int, grid: int = 4, out_dim: int = 128, hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ConfigError(f"local head grid must be a positive integer, got {grid!r}")
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = projection_mlp(
            [in_ch, hidden_dim or in_ch, out_dim], conv=True, batch_norm=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(x))


class PixelHead(nn.Module):
    """Zhao et al. (ICCV 2021): three 1x1 convolutions with 256 channels,
    ReLU after the first two, on the decoder's stride-4 features.
    ``(N, C, h, w) -> (N, dim, h, w)``."""

    def __init__(self, in_ch: int, dim: int = 256, hidden_dim: int = 256) -> None:
        super().__init__()
        self.proj = projection_mlp(
            [in_ch, hidden_dim, hidden_dim, dim], conv=True, batch_norm=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class ContrastHead(nn.Module):
    """Wang et al. (ICCV 2021): 1x1 conv - BN - ReLU - 1x1 conv (256),
    parallel to the classifier. ``(N, C, h, w) -> (N, dim, h, w)``; ``hidden_dim`` defaults to
    ``in_ch``."""

    def __init__(self, in_ch: int, dim: int = 256, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.proj = projection_mlp([in_ch, hidden_dim or in_ch, dim], conv=True, batch_norm=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)
