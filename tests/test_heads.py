"""Projection heads: output shapes, layer structure from the papers, raw (unnormalised) outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segcl.errors import ConfigError
from segcl.models.heads import (
    ContrastHead,
    GlobalHead,
    LocalHead,
    PixelHead,
    ProjectionMLP,
    projection_mlp,
)


def _kinds(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module.modules() if not list(m.children())]


def test_projection_mlp_is_linear_bn_relu_linear() -> None:
    head = ProjectionMLP(32, out_dim=16)
    assert _kinds(head) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head.net[0].out_features == 32  # hidden defaults to in_dim (SimCLR)
    assert ProjectionMLP(32, hidden_dim=64).net[0].out_features == 64
    assert head(torch.randn(5, 32)).shape == (5, 16)


def test_global_head_pools_then_projects() -> None:
    head = GlobalHead(8, out_dim=128).eval()
    x = torch.randn(3, 8, 7, 5)
    out = head(x)
    assert out.shape == (3, 128)
    torch.testing.assert_close(out, head.mlp(x.mean(dim=(2, 3))))


def test_local_head_grid_and_structure() -> None:
    head = LocalHead(8, grid=4, out_dim=128)
    assert _kinds(head) == ["AdaptiveAvgPool2d", "Conv2d", "ReLU", "Conv2d"]
    assert head(torch.randn(2, 8, 13, 9)).shape == (2, 128, 4, 4)
    with pytest.raises(ConfigError):
        LocalHead(8, grid=0)


def test_pixel_head_three_convs_relu_after_first_two() -> None:
    head = PixelHead(16, dim=256)
    assert _kinds(head) == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    assert all(c.kernel_size == (1, 1) for c in head.modules() if isinstance(c, nn.Conv2d))
    out = head(torch.randn(2, 16, 6, 8))
    assert out.shape == (2, 256, 6, 8)
    norms = out.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # raw output; losses normalise


def test_contrast_head_conv_bn_relu_conv() -> None:
    head = ContrastHead(32, dim=256)
    assert _kinds(head) == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert head(torch.randn(2, 32, 5, 5)).shape == (2, 256, 5, 5)


def test_projection_mlp_rejects_bad_sizes() -> None:
    for dims in ([8], [8, 0], [8, 2.5]):
        with pytest.raises(ConfigError):
            projection_mlp(dims, conv=True, batch_norm=False)  # type: ignore[arg-type]
