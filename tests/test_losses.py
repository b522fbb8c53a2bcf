"""Contrastive losses against plain reference implementations written here (loops / formulas)."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from segcl.errors import ConfigError, DataError
from segcl.losses import (
    CrossImagePixelContrast,
    DiceLoss,
    FocalLoss,
    LocalContrastLoss,
    MemoryBank,
    NTXentLoss,
    PixelContrastLoss,
    SegmentationLoss,
    focal_loss,
    nt_xent,
    ohem_keep,
    pixel_contrast,
    pixel_contrast_naive,
)
from segcl.losses._linear_pixel import (
    LinearPixelContrast,
    SymmetricPixelContrast,
    SymmetricPlan,
    make_plan,
)
from segcl.losses.cross_image import cross_image_contrast, hard_anchor_sampling
from segcl.losses.pixel import pixel_contrast_sum

IGNORE = 255


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs, allow_unused=False)


def _unit(*shape: int, dim: int = -1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=dim).to(dtype)


# ----------------------------------------------------------------------------- references


def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Loop form: anchor i of 2N, positive = other view, denominator = all k != i."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    terms = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(torch.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        terms.append(-torch.log(torch.exp(z[i] @ z[pos] / tau) / denom))
    return torch.stack(terms).mean()


def ref_pixel(z: torch.Tensor, y: torch.Tensor, tau: float, ignore: int) -> torch.Tensor:
    """Loop form of Zhao et al.'s pixel contrast; mean over valid anchors having a negative."""
    z = z.double()
    valid = [i for i in range(len(y)) if int(y[i]) != ignore]
    terms = []
    for i in valid:
        negs = [k for k in valid if int(y[k]) != int(y[i])]
        if not negs:
            continue
        poss = [j for j in valid if int(y[j]) == int(y[i])]
        neg_sum = sum(torch.exp(z[i] @ z[k] / tau) for k in negs)
        per_pos = [
            -torch.log(torch.exp(z[i] @ z[j] / tau) / (torch.exp(z[i] @ z[j] / tau) + neg_sum))
            for j in poss
        ]
        terms.append(torch.stack(per_pos).mean())
    if not terms:
        return z.sum() * 0
    return torch.stack(terms).mean()


def ref_cross(
    z: torch.Tensor,
    y: torch.Tensor,
    tau: float,
    base_tau: float,
    mem: torch.Tensor | None = None,
    mem_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loop form of Wang et al.'s cross-image contrast (positives exclude self; anchors without
    one skipped)."""
    z = z.double()
    keys = [(z[j], int(y[j]), j) for j in range(len(y))]
    if mem is not None and mem_y is not None:
        keys += [(mem[j].double(), int(mem_y[j]), -1) for j in range(len(mem_y))]
    terms = []
    for i in range(len(y)):
        pos = [k for k, c, j in keys if c == int(y[i]) and j != i]
        if not pos:
            continue
        neg_sum = sum(torch.exp(z[i] @ k / tau) for k, c, _ in keys if c != int(y[i]))
        logs = [
            torch.log(torch.exp(z[i] @ p / tau) / (torch.exp(z[i] @ p / tau) + neg_sum))
            for p in pos
        ]
        terms.append(-(tau / base_tau) * torch.stack(logs).mean())
    if not terms:
        return z.sum() * 0
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize(("n", "tau"), [(2, 0.1), (5, 0.5), (7, 0.07)])
def test_nt_xent_matches_loop_reference(n: int, tau: float) -> None:
    torch.manual_seed(n)
    z1 = torch.randn(n, 8, requires_grad=True)
    z2 = torch.randn(n, 8, requires_grad=True)
    loss = NTXentLoss(temperature=tau)(z1, z2)
    ref = ref_nt_xent(z1, z2, tau)
    _close(loss, ref)
    for g, r in zip(_grads(loss, z1, z2), _grads(ref, z1, z2), strict=True):
        _close(g, r)


def test_nt_xent_single_image_warns_and_is_zero() -> None:
    z1 = torch.randn(1, 4, requires_grad=True)
    z2 = torch.randn(1, 4, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no negatives"):
        loss = nt_xent(z1, z2)
    assert loss.item() == 0.0
    g1, g2 = _grads(loss, z1, z2)
    assert torch.all(g1 == 0) and torch.all(g2 == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nt_xent_half_precision_does_not_overflow(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    z1 = (torch.randn(6, 16) * 300).to(dtype).requires_grad_()
    z2 = (torch.randn(6, 16) * 300).to(dtype).requires_grad_()
    loss = nt_xent(z1, z2, temperature=0.01)  # exp(1/0.01) overflows fp16 and fp32 alike
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    _close(loss, ref_nt_xent(z1.float(), z2.float(), 0.01), rtol=1e-4)
    g1, g2 = _grads(loss, z1, z2)
    assert g1.dtype == dtype and torch.isfinite(g1).all() and torch.isfinite(g2).all()


def test_nt_xent_argument_checks() -> None:
    for bad in (0, -0.1, math.nan, math.inf, "0.1"):
        with pytest.raises(ConfigError):
            NTXentLoss(temperature=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))


# ----------------------------------------------------------------------------- local


def test_local_contrast_matches_loop_reference() -> None:
    torch.manual_seed(1)
    n, d, s, tau = 2, 6, 2, 0.2
    q1 = torch.randn(n, d, s, s, requires_grad=True)
    q2 = torch.randn(n, d, s, s, requires_grad=True)
    loss = LocalContrastLoss(temperature=tau)(q1, q2)
    # explicit: embeddings indexed (view, image, row, col); positive = same (image, row, col)
    emb = {}
    for v, q in enumerate((q1, q2)):
        for i in range(n):
            for r in range(s):
                for c in range(s):
                    emb[(v, i, r, c)] = F.normalize(q[i, :, r, c].double(), dim=0)
    terms = []
    for key, z in emb.items():
        v, i, r, c = key
        pos = emb[(1 - v, i, r, c)]
        denom = sum(torch.exp(z @ o / tau) for k2, o in emb.items() if k2 != key)
        terms.append(-torch.log(torch.exp(z @ pos / tau) / denom))
    ref = torch.stack(terms).mean()
    _close(loss, ref)
    for g, r in zip(_grads(loss, q1, q2), _grads(ref, q1, q2), strict=True):
        _close(g, r)


def test_local_contrast_shape_check() -> None:
    with pytest.raises(ValueError):
        LocalContrastLoss()(torch.randn(2, 4, 2, 2), torch.randn(2, 4, 3, 3))


# ----------------------------------------------------------------------------- pixel (Zhao)


def _pixel_case(n: int, classes: int, seed: int, ignore_frac: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 8, generator=g, dtype=torch.float64), dim=1).float()
    y = torch.randint(0, classes, (n,), generator=g)
    y[torch.rand(n, generator=g) < ignore_frac] = IGNORE
    return z.requires_grad_(), y


@pytest.mark.parametrize(("n", "classes", "tau"), [(24, 3, 0.07), (31, 5, 0.2), (12, 2, 0.5)])
def test_pixel_naive_matches_loop_reference(n: int, classes: int, tau: float) -> None:
    z, y = _pixel_case(n, classes, seed=n)
    y[3] = 7  # a single-pixel class (its only positive is itself)
    loss = pixel_contrast_naive(z, y, tau, IGNORE)
    ref = ref_pixel(z, y, tau, IGNORE)
    _close(loss, ref)
    _close(_grads(loss, z)[0], _grads(ref, z)[0])


@pytest.mark.parametrize("tau", [0.07, 0.01])  # symmetric fast path / running-max path
@pytest.mark.parametrize(
    ("n", "classes", "block"),
    [(60, 4, 7), (60, 4, 15), (60, 4, 60), (60, 4, 4096), (257, 6, 64), (100, 2, 33), (9, 3, 1)],
)
def test_linear_pixel_equals_naive(n: int, classes: int, block: int, tau: float) -> None:
    z, y = _pixel_case(n, classes, seed=block + n)
    y[0], y[1] = 9, 9  # a two-pixel class; and a single-pixel class:
    y[2] = 11
    naive = pixel_contrast_naive(z, y, tau, IGNORE)
    linear = pixel_contrast(z, y, tau, IGNORE, block_size=block)
    _close(linear, naive, rtol=1e-5)
    g_lin, g_naive = _grads(linear, z)[0], _grads(naive, z)[0]
    # float32 on both sides: agree to 1e-5 of the gradient's scale (each is ~2e-6 from float64)
    _close(g_lin, g_naive, rtol=1e-5, atol=1e-5 * float(g_naive.abs().max()))


def test_pixel_contrast_picks_the_symmetric_path_only_within_the_bound() -> None:
    z, y = _pixel_case(30, 3, seed=2)
    calls = {"symmetric": 0, "general": 0}
    sym_apply, gen_apply = SymmetricPixelContrast.apply, LinearPixelContrast.apply

    def count(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)

        return wrapper

    with (
        mock.patch.object(SymmetricPixelContrast, "apply", count("symmetric", sym_apply)),
        mock.patch.object(LinearPixelContrast, "apply", count("general", gen_apply)),
    ):
        pixel_contrast(z, y, 1 / 59, IGNORE)
        assert calls == {"symmetric": 1, "general": 0}
        pixel_contrast(z, y, 1 / 61, IGNORE)  # exp(61) sums could overflow: running max
        assert calls == {"symmetric": 1, "general": 1}
        pixel_contrast(z * 2, y, 0.07, IGNORE)  # |z|^2 = 4: bound 57 ok
        pixel_contrast(z * 3, y, 0.07, IGNORE)  # bound 129: running max
        assert calls == {"symmetric": 2, "general": 2}


@pytest.mark.parametrize("fn", [pixel_contrast, pixel_contrast_naive])
def test_pixel_edge_cases_are_zero_with_graph(fn) -> None:
    z = _unit(10, 4).requires_grad_()
    cases = {
        "single class": torch.zeros(10, dtype=torch.long),
        "single class + ignore": torch.tensor([3] * 6 + [IGNORE] * 4),
        "all ignored": torch.full((10,), IGNORE),
    }
    for name, y in cases.items():
        loss = fn(z, y, 0.07, IGNORE)
        assert loss.item() == 0.0, name
        assert loss.requires_grad, name
        (g,) = _grads(loss, z)
        assert torch.all(g == 0), name
    one = _unit(1, 4).requires_grad_()
    assert fn(one, torch.tensor([2]), 0.07, IGNORE).item() == 0.0
    empty = torch.zeros(0, 4, requires_grad=True)
    assert fn(empty, torch.zeros(0, dtype=torch.long), 0.07, IGNORE).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pixel_half_precision_does_not_overflow(dtype: torch.dtype) -> None:
    z32, y = _pixel_case(40, 4, seed=3, ignore_frac=0.0)
    z = z32.detach().to(dtype).requires_grad_()
    for fn in (pixel_contrast, pixel_contrast_naive):
        loss = fn(z, y, 0.07, IGNORE)  # exp(1/0.07) = 1.6e6 overflows fp16
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        _close(loss, ref_pixel(z.float(), y, 0.07, IGNORE), rtol=1e-4)
        (g,) = _grads(loss, z)
        assert g.dtype == dtype and torch.isfinite(g).all()


def test_losses_compute_in_float32_under_autocast() -> None:
    """A bf16 autocast region (as in a mixed-precision training step) must not reach the
    similarity matmuls: the losses equal their float32 values."""
    z, y = _pixel_case(64, 3, seed=8, ignore_frac=0.0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    emb, labels = torch.randn(2, 8, 12, 12), torch.randint(0, 2, (2, 12, 12))
    logits = torch.randn(2, 2, 12, 12)
    cross = CrossImagePixelContrast(2, max_samples=40, max_views=10)

    def run() -> list[torch.Tensor]:
        torch.manual_seed(0)
        return [
            pixel_contrast(z, y, 0.07, IGNORE, block_size=16),
            pixel_contrast_naive(z, y, 0.07, IGNORE),
            nt_xent(z1, z2, 0.07),
            cross(emb, labels, logits),
        ]

    expected = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32
        _close(g, e)


def test_linear_function_gradcheck_with_distinct_anchors_and_keys() -> None:
    """The Function's backward in float64, anchors != keys (the distributed layout)."""
    torch.manual_seed(0)
    q = _unit(7, 3, dtype=torch.float64).requires_grad_()
    k = _unit(11, 3, dtype=torch.float64).requires_grad_()
    q_bounds, k_bounds = [0, 3, 5, 7], [0, 4, 9, 11]  # 3 classes, both sides class-sorted
    plan = make_plan(q_bounds, k_bounds, block_size=2)

    def per_anchor(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return LinearPixelContrast.apply(q, k, plan, 1 / 0.3)

    assert torch.autograd.gradcheck(per_anchor, (q, k), eps=1e-6, atol=1e-6)


def test_symmetric_function_gradcheck() -> None:
    torch.manual_seed(1)
    z = _unit(10, 3, dtype=torch.float64).requires_grad_()
    plan = SymmetricPlan.build([0, 4, 5, 10], block_size=2)  # classes of 4, 1 and 5 rows

    def per_row(z: torch.Tensor) -> torch.Tensor:
        return SymmetricPixelContrast.apply(z, plan, 1 / 0.3)

    assert torch.autograd.gradcheck(per_row, (z,), eps=1e-6, atol=1e-6)


def test_pixel_sum_with_separate_keys_matches_reference() -> None:
    """Anchors = the first 20 pixels, keys = all 40: the sum of those anchors' l_i."""
    z, y = _pixel_case(40, 3, seed=5, ignore_frac=0.0)
    total, count = pixel_contrast_sum(z[:20], y[:20], z, y, temperature=0.1, block_size=8)
    zd, tau = z.double(), 0.1
    terms = []
    for i in range(20):
        neg_sum = sum(torch.exp(zd[i] @ zd[k] / tau) for k in range(40) if y[k] != y[i])
        terms.append(
            torch.stack(
                [
                    F.softplus(torch.log(neg_sum) - zd[i] @ zd[j] / tau)
                    for j in range(40)
                    if y[j] == y[i]
                ]
            ).mean()
        )
    ref = torch.stack(terms).sum()
    assert count == 20
    _close(total, ref)
    _close(_grads(total, z)[0], _grads(ref, z)[0], atol=1e-6)


# ----------------------------------------------------------------------------- PixelContrastLoss


def _dense_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, d, h, w = 4, 6, 4, 5
    e1 = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    e2 = torch.randn(b, d, h, w, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (b, 2 * h, 2 * w), generator=g)
    labels[2] = 1  # single-class image
    labels[3] = IGNORE  # fully ignored image
    labels[0, :, :3] = IGNORE
    return e1, e2, labels


def _rows(e: torch.Tensor, b: int) -> torch.Tensor:
    return F.normalize(e[b].double(), dim=0).reshape(e.shape[1], -1).T


def test_pixel_loss_single_variant_matches_per_image_reference() -> None:
    e1, e2, labels = _dense_case()
    loss = PixelContrastLoss(temperature=0.1, variant="single", block_size=7)((e1, e2), labels)
    # 2x nearest-neighbour downsampling with pixel-centre alignment samples odd rows / columns
    small = labels[:, 1::2, 1::2]
    per_image = []
    for b in range(labels.shape[0]):
        y = small[b].reshape(-1)
        z = torch.cat([_rows(e1, b), _rows(e2, b)])
        if len(set(y[y != IGNORE].tolist())) >= 2:
            per_image.append(ref_pixel(z, torch.cat([y, y]), 0.1, IGNORE))
    assert len(per_image) == 2  # images 2 (one class) and 3 (all ignored) are left out
    ref = torch.stack(per_image).mean()
    _close(loss, ref)
    for g, r in zip(_grads(loss, e1, e2), _grads(ref, e1, e2), strict=True):
        _close(g, r, atol=1e-6)


def test_pixel_loss_batch_variant_matches_reference() -> None:
    e1, e2, labels = _dense_case(1)
    loss = PixelContrastLoss(temperature=0.2, variant="batch", block_size=16)([e1, e2], labels)
    small = labels[:, 1::2, 1::2]
    z = torch.cat([torch.cat([_rows(e1, b), _rows(e2, b)]) for b in range(4)])
    y = torch.cat([torch.cat([small[b].reshape(-1)] * 2) for b in range(4)])
    ref = pixel_contrast_naive(z, y, 0.2, IGNORE)
    _close(loss, ref)
    for g, r in zip(_grads(loss, e1, e2), _grads(ref, e1, e2), strict=True):
        _close(g, r, atol=1e-6)


def test_pixel_loss_grid_resizes_embeddings_bilinearly() -> None:
    e1, _, labels = _dense_case(2)
    loss = PixelContrastLoss(variant="batch", grid=(3, 3))(e1, labels)
    up = F.normalize(F.interpolate(e1, size=(3, 3), mode="bilinear", align_corners=False), dim=1)
    small = F.interpolate(labels[:, None].float(), size=(3, 3), mode="nearest-exact")[:, 0].long()
    ref = pixel_contrast_naive(
        up.permute(0, 2, 3, 1).reshape(-1, 6), small.reshape(-1), 0.07, IGNORE
    )
    _close(loss, ref)


def test_pixel_loss_max_pixels_is_seeded_and_samples_valid_pixels() -> None:
    e1, e2, labels = _dense_case(3)
    module = PixelContrastLoss(variant="batch", max_pixels=30)
    torch.manual_seed(4)
    a = module((e1, e2), labels)
    torch.manual_seed(4)
    b = module((e1, e2), labels)
    full = PixelContrastLoss(variant="batch")((e1, e2), labels)
    assert a.item() == b.item() and a.item() != full.item() and torch.isfinite(a)
    enough = PixelContrastLoss(variant="batch", max_pixels=10_000)((e1, e2), labels)
    _close(enough, full)


def test_pixel_loss_all_ignored_keeps_graph() -> None:
    e1 = torch.randn(2, 4, 3, 3, requires_grad=True)
    labels = torch.full((2, 3, 3), IGNORE)
    for variant in ("single", "batch"):
        loss = PixelContrastLoss(variant=variant)(e1, labels)
        assert loss.item() == 0.0 and loss.requires_grad
        assert torch.all(_grads(loss, e1)[0] == 0)


def test_pixel_loss_argument_checks() -> None:
    for kwargs in (
        {"temperature": 0},
        {"variant": "global"},
        {"grid": (65,)},
        {"grid": (0, 65)},
        {"block_size": 0},
        {"max_pixels": 1, "variant": "batch"},
        {"max_pixels": 100, "variant": "single"},
        {"ignore_index": 2.5},
    ):
        with pytest.raises(ConfigError):
            PixelContrastLoss(**kwargs)
    with pytest.raises(ValueError):
        PixelContrastLoss()(torch.randn(2, 4, 3, 3), torch.zeros(3, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        PixelContrastLoss()(torch.randn(2, 4, 3, 3), torch.zeros(2, 3, 3))


# ----------------------------------------------------------------------------- cross-image (Wang)


def test_cross_image_contrast_matches_loop_reference() -> None:
    torch.manual_seed(0)
    z = _unit(14, 5).requires_grad_()
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 1, 0, 2, 1])  # class 3: a single sample
    loss = cross_image_contrast(z, y, temperature=0.1, base_temperature=0.07)
    ref = ref_cross(z, y, 0.1, 0.07)
    _close(loss, ref)
    _close(_grads(loss, z)[0], _grads(ref, z)[0])


def test_cross_image_contrast_with_memory_keys() -> None:
    torch.manual_seed(1)
    z = _unit(8, 5).requires_grad_()
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # class 2: positives only in the memory
    mem, mem_y = _unit(6, 5), torch.tensor([2, 2, 0, 1, 4, 4])
    loss = cross_image_contrast(z, y, mem, mem_y, temperature=0.2, base_temperature=0.07)
    ref = ref_cross(z, y, 0.2, 0.07, mem, mem_y)
    _close(loss, ref)
    _close(_grads(loss, z)[0], _grads(ref, z)[0])


def test_cross_image_edge_cases_never_nan() -> None:
    z = _unit(3, 4).requires_grad_()
    only_singletons = cross_image_contrast(z, torch.tensor([0, 1, 2]))
    assert only_singletons.item() == 0.0 and torch.all(_grads(only_singletons, z)[0] == 0)
    one_class = cross_image_contrast(z, torch.tensor([1, 1, 1]))  # positives, no negatives
    assert one_class.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(_grads(one_class, z)[0]).all()


def _sampling_case():
    """2 images, 10x10 grid: class 0 (60 px), class 1 (30 px), class 2 (5 px), 5 ignored."""
    labels = torch.zeros(2, 10, 10, dtype=torch.long)
    labels[:, 6:9] = 1
    labels[:, 9, :5] = 2
    labels[:, 9, 5:] = IGNORE
    pred = labels.clone()
    pred[:, 0, :] = 1  # 10 hard pixels of class 0 (label 0, predicted 1)
    pred[:, 6, :2] = 0  # 2 hard pixels of class 1
    pred[pred == IGNORE] = 0
    return labels, pred


def test_hard_anchor_sampling_counts() -> None:
    labels, pred = _sampling_case()
    pixels = torch.arange(200, dtype=torch.float32).reshape(2, 100, 1)  # value = pixel id
    torch.manual_seed(0)
    out = hard_anchor_sampling(pixels, labels.reshape(2, -1), pred.reshape(2, -1), IGNORE, 40, 20)
    assert out is not None
    feats, labs = out
    # eligible (> 20 px): classes 0 and 1 in both images -> 4 pairs, n_view = min(40 // 4, 20)
    assert labs.tolist() == [0] * 10 + [1] * 10 + [0] * 10 + [1] * 10
    flat_y, flat_p = labels.reshape(-1), pred.reshape(-1)
    ids = feats.squeeze(1).long()
    assert torch.all(flat_y[ids] == labs)
    hard = flat_p[ids] != labs
    per_pair = hard.reshape(4, 10).sum(1).tolist()
    assert per_pair == [5, 2, 5, 2]  # half hard; class 1 has only 2 hard -> filled with easy
    assert len(set(ids.tolist())) == 40  # no pixel drawn twice
    none = hard_anchor_sampling(pixels, labels.reshape(2, -1), pred.reshape(2, -1), IGNORE, 40, 60)
    assert none is None


def test_cross_image_module_reproducible_and_matches_functions() -> None:
    labels, pred = _sampling_case()
    emb = torch.randn(2, 8, 10, 10, requires_grad=True)
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    up_labels = labels.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (2, 20, 20)
    loss_fn = CrossImagePixelContrast(3, ignore_index=IGNORE, max_samples=40, max_views=20)
    torch.manual_seed(5)
    loss = loss_fn(emb, up_labels, logits)
    torch.manual_seed(5)
    again = loss_fn(emb, up_labels, logits)
    assert loss.item() == again.item() and torch.isfinite(loss)
    torch.manual_seed(5)
    z = F.normalize(emb, dim=1).permute(0, 2, 3, 1).reshape(2, 100, 8)
    feats, labs = hard_anchor_sampling(
        z, labels.reshape(2, -1), pred.reshape(2, -1), IGNORE, 40, 20
    )
    _close(loss, ref_cross(feats, labs, 0.1, 0.07))


def test_cross_image_no_eligible_class_keeps_graph() -> None:
    emb = torch.randn(2, 8, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    loss = CrossImagePixelContrast(3, max_views=100)(emb, labels, torch.randn(2, 3, 4, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    assert torch.all(_grads(loss, emb)[0] == 0)


def test_cross_image_argument_checks() -> None:
    for kwargs in (
        {"num_classes": 0},
        {"num_classes": 3, "temperature": -1},
        {"num_classes": 3, "base_temperature": 0},
        {"num_classes": 3, "max_views": 0},
        {"num_classes": 3, "memory": MemoryBank(4, dim=8)},
    ):
        with pytest.raises(ConfigError):
            CrossImagePixelContrast(**kwargs)
    with pytest.raises(DataError, match=r"outside 0\.\.2"):
        CrossImagePixelContrast(3)(
            torch.randn(1, 4, 2, 2), torch.full((1, 2, 2), 5), torch.randn(1, 3, 2, 2)
        )


# ----------------------------------------------------------------------------- memory bank


def _planted(b: int, c: int, h: int, w: int, d: int):
    """Every pixel of class k has embedding e_k (one-hot): a queue entry reveals its source."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels[0, 0, 0] = IGNORE
    emb = F.one_hot(labels.clamp(max=c - 1), d).permute(0, 3, 1, 2).float() * 3.0
    emb[0, :, 0, 0] = 1.0  # the ignored pixel points everywhere; it must never be enqueued
    return emb, labels


def test_memory_bank_enqueues_only_pixels_of_the_class() -> None:
    c, d = 4, 6
    bank = MemoryBank(c, dim=d, pixel_size=50, region_size=50, pixels_per_class=3)
    emb, labels = _planted(3, c, 5, 5, d)
    bank.update(emb, labels, IGNORE)
    feats, labs = bank.features()
    expected = F.one_hot(labs, d).float()
    _close(feats, expected)  # pixel AND region entries equal e_class (normalised)
    for k in range(c):  # class 0 included; 3 pixels + 1 region per image containing the class
        images = sum(int((labels[i] == k).any()) for i in range(3))
        assert int(bank.pixel_count[k]) == 3 * images
        assert int(bank.region_count[k]) == images
        assert int((labs == k).sum()) == 4 * images


def test_memory_bank_pointer_wraps_around() -> None:
    bank = MemoryBank(2, dim=3, pixel_size=7, region_size=3)
    q, ptr, cnt = bank.pixel_queue, bank.pixel_ptr, bank.pixel_count
    entries = torch.arange(30, dtype=torch.float32)[:, None].expand(30, 3)
    bank._enqueue(q, ptr, cnt, entries[:5], torch.ones(5, dtype=torch.long))
    assert (int(ptr[1]), int(cnt[1]), int(ptr[0]), int(cnt[0])) == (5, 5, 0, 0)
    bank._enqueue(q, ptr, cnt, entries[5:9], torch.ones(4, dtype=torch.long))
    assert (int(ptr[1]), int(cnt[1])) == (2, 7)
    assert q[1, :, 0].tolist() == [7, 8, 2, 3, 4, 5, 6]
    bank._enqueue(q, ptr, cnt, entries[9:25], torch.ones(16, dtype=torch.long))  # > size
    assert (int(ptr[1]), int(cnt[1])) == ((2 + 16) % 7, 7)
    # the last 7 written (18..24) sit where a sequential ring write would put them
    assert q[1, :, 0].tolist() == [21, 22, 23, 24, 18, 19, 20]
    assert torch.all(q[0] == 0)


def test_memory_bank_checks_grid_and_labels() -> None:
    bank = MemoryBank(3, dim=4)
    with pytest.raises(ValueError, match="embedding grid"):
        bank.update(torch.randn(1, 4, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long), IGNORE)
    with pytest.raises(DataError):
        bank.update(torch.randn(1, 4, 2, 2), torch.full((1, 2, 2), 3), IGNORE)


def test_cross_image_with_memory_uses_then_updates_the_bank() -> None:
    labels, pred = _sampling_case()
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    bank = MemoryBank(3, dim=8, pixel_size=20, region_size=20)
    loss_fn = CrossImagePixelContrast(3, max_samples=40, max_views=20, memory=bank).train()
    emb = torch.randn(2, 8, 10, 10, requires_grad=True)
    loss_fn(emb, labels, logits)  # first step: bank empty -> filled afterwards
    assert int(bank.pixel_count.sum()) > 0 and int(bank.pixel_count[0]) > 0
    mem, mem_y = bank.features()
    torch.manual_seed(2)
    loss = loss_fn(emb, labels, logits)
    torch.manual_seed(2)
    z = F.normalize(emb, dim=1).permute(0, 2, 3, 1).reshape(2, 100, 8)
    feats, labs = hard_anchor_sampling(
        z, labels.reshape(2, -1), pred.reshape(2, -1), IGNORE, 40, 20
    )
    _close(loss, ref_cross(feats, labs, 0.1, 0.07, mem, mem_y))
    loss_fn.eval()
    before = bank.pixel_count.clone()
    loss_fn(emb, labels, logits)
    assert torch.equal(before, bank.pixel_count)  # eval mode never enqueues


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: NTXentLoss(temperature=0), "temperature"),
        (lambda: LocalContrastLoss(temperature=-1.0), "temperature"),
        (lambda: PixelContrastLoss(temperature=math.nan), "temperature"),
        (lambda: PixelContrastLoss(block_size=0), "block_size"),
        (lambda: CrossImagePixelContrast(3, max_views=0), "max_views"),
        (lambda: MemoryBank(3, dim=0), "dim"),
        (lambda: DiceLoss(smooth=-1.0), "smooth"),
        (lambda: FocalLoss(gamma=-0.5), "focal gamma"),
        (lambda: focal_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                            gamma=math.nan), "focal gamma"),
        (lambda: ohem_keep(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                           threshold=1.5), "OHEM threshold"),
        (lambda: ohem_keep(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                           min_kept=-1), "OHEM min_kept"),
        (lambda: SegmentationLoss("hinge"), "unknown loss 'hinge'"),
        (lambda: SegmentationLoss("dice", ohem=True), "OHEM needs a pixel-wise term"),
    ],
)
def test_every_loss_raises_config_error_for_bad_settings(build, message) -> None:
    """One error type for a bad configuration, whichever loss; it names the argument."""
    with pytest.raises(ConfigError, match=message):
        build()
