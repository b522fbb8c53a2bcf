"""Linear-memory label-based pixel contrast: a custom autograd Function (Zhao et al., ICCV 2021).

For anchors ``q`` (``M x D``) and keys ``k`` (``N x D``), ``s_ij = q_i . k_j / tau``, positives
``P_i = {j: y_j = y_i}`` and negatives ``N_i = {j: y_j != y_i}`` among the keys::

    LN_i = LSE_{n in N_i} s_in
    l_i  = (1/|P_i|) sum_{p in P_i} softplus(LN_i - s_ip)

Both anchors and keys arrive sorted by class, so the positives of a row block of class ``c`` are
one contiguous column range and its negatives the two ranges around it: every ``B x B`` tile is
purely positive or purely negative and no ``M x N`` (or tile) mask is ever built.

Forward, per row block of one class:
  pass 1 streams over the negative column blocks keeping a running max ``m`` and a rescaled sum
  ``a`` (``a <- a exp(m_old - m_new) + sum exp(s - m_new)``, as in flash attention):
  ``LN = m + log a``;
  pass 2 streams over the positive column blocks accumulating ``softplus(LN - s)`` and, when a
  gradient is needed, ``sigmoid(LN - s)``; ``|P_i|`` is the class's key count.
Backward recomputes every tile; with ``w_i = (1/|P_i|) sum_p sigmoid(LN_i - s_ip)`` and the
upstream gradient ``g_i``::

    dl/ds_ip = -g_i sigmoid(LN_i - s_ip) / |P_i|      (positives)
    dl/ds_in =  g_i w_i exp(s_in - LN_i)               (negatives)
    dq_i = (1/tau) sum_j ds_ij k_j,   dk_j = (1/tau) sum_i ds_ij q_i

Extra memory is ``O(B^2 + (M + N) D)``. Anchors of a class with no positive or no negative key
are left out of the plan: their ``l_i`` is 0 with zero gradient.

:class:`SymmetricPixelContrast` is the fast path for the common case keys = anchors (one process,
no gathering). ``s`` is symmetric, so each unordered pair of row blocks ``(I, J)`` is computed
once and serves the rows of ``I`` (row sums) and of ``J`` (column sums); in backward the two
directions are merged into one tile ``H = dS_IJ + dS_JI^T`` (``dz_I += H z_J``,
``dz_J += H^T z_I``): half the matrix products of the general Function. It also drops the running
max: when ``|s| <= inv_tau * max|z|^2 <= SHIFT_FREE_LIMIT`` (60, i.e. ``tau >= 1/60`` for unit
vectors) every ``exp(s)`` lies in ``[e^-60, e^60]`` and any sum of them fits float32, so ``exp(s)``
is summed directly and shared by both directions. Outside that bound the general (running-max)
Function is used.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from segcl.losses.precision import autocast_off

Range = tuple[int, int]


@dataclass(frozen=True)
class RowBlock:
    """Anchor rows ``[r0, r1)`` of one class with the key column ranges they meet."""

    r0: int
    r1: int
    n_pos: int
    neg: tuple[Range, ...]
    pos: tuple[Range, ...]


def split_range(start: int, stop: int, size: int) -> list[Range]:
    """``[start, stop)`` cut into the fewest near-equal pieces of at most ``size`` elements."""
    length = stop - start
    if length <= 0:
        return []
    pieces = -(-length // size)
    edges = [start + (length * i) // pieces for i in range(pieces + 1)]
    return list(itertools.pairwise(edges))


def make_plan(q_bounds: list[int], k_bounds: list[int], block_size: int) -> list[RowBlock]:
    """Tile plan from per-class offsets of the class-sorted anchors and keys.

    ``q_bounds[c]:q_bounds[c+1]`` are the anchor rows of class ``c`` (same for ``k_bounds`` and
    the keys); both lists have ``C + 1`` entries.
    """
    n_keys = k_bounds[-1]
    plan: list[RowBlock] = []
    for c in range(len(q_bounds) - 1):
        qa, qb, ka, kb = q_bounds[c], q_bounds[c + 1], k_bounds[c], k_bounds[c + 1]
        if qb == qa or kb == ka or kb - ka == n_keys:
            continue  # no anchors, no positive key, or no negative key
        neg = tuple(split_range(0, ka, block_size) + split_range(kb, n_keys, block_size))
        pos = tuple(split_range(ka, kb, block_size))
        for r0, r1 in split_range(qa, qb, block_size):
            plan.append(RowBlock(r0, r1, kb - ka, neg, pos))
    return plan


def _negative_lse(qs: Tensor, k: Tensor, ranges: tuple[Range, ...]) -> Tensor:
    """Pass 1: ``LSE`` over the negative columns, streamed with a running max and rescaled sum."""
    m: Tensor | None = None
    acc: Tensor | None = None
    for c0, c1 in ranges:
        s = torch.mm(qs, k[c0:c1].t())
        tile_max = s.amax(dim=1)
        if m is None or acc is None:
            m = tile_max
            acc = s.sub_(m[:, None]).exp_().sum(dim=1)
        else:
            m_new = torch.maximum(m, tile_max)
            acc = acc * torch.exp(m - m_new) + s.sub_(m_new[:, None]).exp_().sum(dim=1)
            m = m_new
    assert m is not None and acc is not None  # the plan never gives an empty range list
    return m + acc.log()


def _positive_sums(
    qs: Tensor, k: Tensor, ranges: tuple[Range, ...], ln: Tensor, with_sigmoid: bool
) -> tuple[Tensor, Tensor | None]:
    """Pass 2: ``sum_p softplus(LN - s_p)`` and (optionally) ``sum_p sigmoid(LN - s_p)``."""
    sp = qs.new_zeros(qs.shape[0])
    sg = qs.new_zeros(qs.shape[0]) if with_sigmoid else None
    for c0, c1 in ranges:
        t = torch.addmm(ln[:, None], qs, k[c0:c1].t(), alpha=-1.0)  # LN - s
        sp += F.softplus(t).sum(dim=1)
        if sg is not None:
            sg += t.sigmoid_().sum(dim=1)
    return sp, sg


class LinearPixelContrast(torch.autograd.Function):
    """Per-anchor pixel-contrast losses ``l`` (``M``,) without any ``M x N`` buffer.

    ``apply(q, k, plan, inv_tau)``: ``q`` (``M x D``) and ``k`` (``N x D``) float32, class-sorted,
    ``plan`` from :func:`make_plan`, ``inv_tau = 1 / tau``. ``q`` and ``k`` may be the same tensor.
    """

    @staticmethod
    @autocast_off
    def forward(ctx, q: Tensor, k: Tensor, plan: list[RowBlock], inv_tau: float) -> Tensor:  # type: ignore[override]
        need_grad = any(ctx.needs_input_grad[:2])
        qs = q * inv_tau
        loss = q.new_zeros(q.shape[0])
        ln_all = q.new_zeros(q.shape[0])
        w_all = q.new_zeros(q.shape[0])
        for blk in plan:
            qr = qs[blk.r0 : blk.r1]
            ln = _negative_lse(qr, k, blk.neg)
            sp, sg = _positive_sums(qr, k, blk.pos, ln, need_grad)
            loss[blk.r0 : blk.r1] = sp / blk.n_pos
            ln_all[blk.r0 : blk.r1] = ln
            if sg is not None:
                w_all[blk.r0 : blk.r1] = sg / blk.n_pos
        ctx.save_for_backward(q, k, ln_all, w_all)
        ctx.plan = plan
        ctx.inv_tau = inv_tau
        return loss

    @staticmethod
    @autocast_off
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        q, k, ln_all, w_all = ctx.saved_tensors
        inv_tau: float = ctx.inv_tau
        qs = q * inv_tau
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        neg_coef = grad * w_all  # g_i w_i
        for blk in ctx.plan:
            rows = slice(blk.r0, blk.r1)
            qr, ln, dqr = qs[rows], ln_all[rows, None], dq[rows]
            a = neg_coef[rows, None]
            b = grad[rows, None] * (-1.0 / blk.n_pos)
            for c0, c1 in blk.neg:
                kc = k[c0:c1]
                g = torch.addmm(-ln, qr, kc.t()).exp_().mul_(a)  # g_i w_i exp(s - LN)
                dqr.addmm_(g, kc)
                dk[c0:c1].addmm_(g.t(), qr)
            for c0, c1 in blk.pos:
                kc = k[c0:c1]
                g = torch.addmm(ln, qr, kc.t(), alpha=-1.0).sigmoid_().mul_(b)
                dqr.addmm_(g, kc)
                dk[c0:c1].addmm_(g.t(), qr)
        dq.mul_(inv_tau)  # dk already carries 1/tau through qs
        return dq, dk, None, None


SHIFT_FREE_LIMIT = 60.0


@dataclass(frozen=True)
class SymmetricPlan:
    """Class-aligned row blocks ``(r0, r1, class)`` of class-sorted rows and per-class counts."""

    blocks: tuple[tuple[int, int, int], ...]
    counts: tuple[int, ...]

    @classmethod
    def build(cls, bounds: list[int], block_size: int) -> SymmetricPlan:
        blocks = tuple(
            (r0, r1, c)
            for c in range(len(bounds) - 1)
            for r0, r1 in split_range(bounds[c], bounds[c + 1], block_size)
        )
        counts = tuple(b - a for a, b in itertools.pairwise(bounds))
        return cls(blocks, counts)

    def pairs(self, same_class: bool) -> list[tuple[int, int, int, int]]:
        """Unordered block pairs ``(a0, a1, b0, b1)`` with ``I <= J`` of the same / other class
        (a block is paired with itself only within its class)."""
        out = []
        for i, (a0, a1, ca) in enumerate(self.blocks):
            for b0, b1, cb in self.blocks[i if same_class else i + 1 :]:
                if (ca == cb) == same_class:
                    out.append((a0, a1, b0, b1))
        return out

    def positives_per_row(self, like: Tensor) -> Tensor:
        sizes = torch.tensor(self.counts, dtype=torch.long, device=like.device)
        return torch.repeat_interleave(sizes, sizes).to(like.dtype)


class SymmetricPixelContrast(torch.autograd.Function):
    """Per-row losses ``l`` (``M``,) for keys = anchors; see the module docstring.

    ``apply(z, plan, inv_tau)``: ``z`` (``M x D``) float32 sorted by class, every class present in
    ``plan`` with >= 2 classes overall, ``inv_tau * max|z|^2 <= SHIFT_FREE_LIMIT``.
    """

    @staticmethod
    @autocast_off
    def forward(ctx, z: Tensor, plan: SymmetricPlan, inv_tau: float) -> Tensor:  # type: ignore[override]
        zs = z * inv_tau
        neg_sum = z.new_zeros(z.shape[0])
        for a0, a1, b0, b1 in plan.pairs(same_class=False):
            e = torch.mm(zs[a0:a1], z[b0:b1].t()).exp_()
            neg_sum[a0:a1] += e.sum(dim=1)
            neg_sum[b0:b1] += e.sum(dim=0)
        ln = neg_sum.log()
        sp, sg = z.new_zeros(z.shape[0]), z.new_zeros(z.shape[0])
        for a0, a1, b0, b1 in plan.pairs(same_class=True):
            s = torch.mm(zs[a0:a1], z[b0:b1].t())
            if a0 != b0:  # the J side: columns, against LN_j
                t_cols = torch.sub(ln[None, b0:b1], s)
                sp[b0:b1] += F.softplus(t_cols).sum(dim=0)
                sg[b0:b1] += t_cols.sigmoid_().sum(dim=0)
            t_rows = s.neg_().add_(ln[a0:a1, None])
            sp[a0:a1] += F.softplus(t_rows).sum(dim=1)
            sg[a0:a1] += t_rows.sigmoid_().sum(dim=1)
        n_pos = plan.positives_per_row(z)
        ctx.save_for_backward(z, neg_sum, ln, sg / n_pos, n_pos)
        ctx.plan = plan
        ctx.inv_tau = inv_tau
        return sp / n_pos

    @staticmethod
    @autocast_off
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        z, neg_sum, ln, w, n_pos = ctx.saved_tensors
        plan: SymmetricPlan = ctx.plan
        zs = z * ctx.inv_tau
        neg_coef = grad * w / neg_sum  # dl_i/ds_in = g_i w_i exp(s_in) / sum_n exp(s_in)
        pos_coef = -grad / n_pos  # dl_i/ds_ip = pos_coef_i sigmoid(LN_i - s_ip)
        dz = torch.zeros_like(z)
        for a0, a1, b0, b1 in plan.pairs(same_class=False):
            h = torch.mm(zs[a0:a1], z[b0:b1].t()).exp_()
            h.mul_(torch.add(neg_coef[a0:a1, None], neg_coef[None, b0:b1]))
            dz[a0:a1].addmm_(h, z[b0:b1])
            dz[b0:b1].addmm_(h.t(), z[a0:a1])
        for a0, a1, b0, b1 in plan.pairs(same_class=True):
            s = torch.mm(zs[a0:a1], z[b0:b1].t())
            if a0 == b0:  # diagonal block: H = G + G^T, one product
                g = s.neg_().add_(ln[a0:a1, None]).sigmoid_().mul_(pos_coef[a0:a1, None])
                dz[a0:a1].addmm_(g + g.t(), z[a0:a1])
                continue
            g_cols = torch.sub(ln[None, b0:b1], s).sigmoid_().mul_(pos_coef[None, b0:b1])
            h = s.neg_().add_(ln[a0:a1, None]).sigmoid_().mul_(pos_coef[a0:a1, None]).add_(g_cols)
            dz[a0:a1].addmm_(h, z[b0:b1])
            dz[b0:b1].addmm_(h.t(), z[a0:a1])
        return dz.mul_(ctx.inv_tau), None, None
