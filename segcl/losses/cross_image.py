"""Cross-image pixel contrast with hard anchor sampling and an optional memory bank.

Wang, Zhou, Yu, Dai, Konukoglu and Van Gool, "Exploring Cross-Image Pixel Contrast for Semantic
Segmentation", ICCV 2021 (arXiv:2101.11939). Used as an auxiliary loss:
``L = CE + lambda * L_contrast`` (lambda 0.1, 0 during warm-up -- the training loop owns that
schedule).

Sampling, per image and class ``c`` on the embedding grid (labels and predictions sampled at the
same pixel centres): the class is *eligible* when more than ``max_views`` pixels carry label
``c``; with ``E`` eligible (image, class) pairs in the batch,
``n_view = min(max_samples // E, max_views)`` (at least 1) anchors are taken per pair, half *hard*
(label ``c``, predicted not ``c``) and half *easy* (label ``c``, predicted ``c``), filling from the
other kind when one runs short. Randomness comes from torch's global RNG (``torch.manual_seed``).

Loss over the ``A`` sampled anchors (unit-normalised, ``s_ij = z_i . z_j / tau``), contrasted with
the other anchors and, with a memory bank, with the bank's entries (extra keys)::

    P_i = {keys with label y_i, except i itself}     N_i = {keys with another label}
    l_i = -(tau / base_tau) mean_{p in P_i} log( e^{s_ip} / (e^{s_ip} + sum_{n in N_i} e^{s_in}) )
    loss = mean of l_i over the anchors with |P_i| >= 1

Anchors without positives (a class sampled once) are skipped, never NaN; no eligible class or no
anchor with a positive gives 0 with the graph intact (``emb.sum() * 0``).

Defaults (Wang et al.'s): ``tau`` = 0.1, ``base_tau`` = 0.07, ``max_samples`` = 1024 anchors,
``max_views`` = 100 per (image, class); the memory bank (:class:`MemoryBank`, off unless given)
keeps ``pixel_size`` = ``region_size`` = 5000 entries per class of ``dim`` = 256, adding
``pixels_per_class`` = 10 pixels per class and image at each update.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segcl.errors import ConfigError, DataError
from segcl.losses.checks import check_int, check_temperature
from segcl.losses.distributed import all_gather_variable
from segcl.losses.pixel import resize_labels
from segcl.losses.precision import autocast_off


def _check_labels_in_range(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    bad = labels[(labels != ignore_index) & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        raise DataError(
            f"labels contain value {int(bad[0])} outside 0..{num_classes - 1} that is not the "
            f"ignore index {ignore_index}"
        )


def _pixels(emb: Tensor) -> Tensor:
    """``(B, D, h, w)`` -> ``(B, h w, D)``."""
    b, d, h, w = emb.shape
    return emb.permute(0, 2, 3, 1).reshape(b, h * w, d)


class MemoryBank(nn.Module):
    """Per-class pixel queue and region (segment-mean) queue, kept as buffers (saved with the
    state dict).

    ``update`` enqueues, for every image and every class present in it, the normalised class-mean
    embedding into that class's region queue and up to ``pixels_per_class`` random pixels of that
    class into its pixel queue. Each queue is circular: its pointer advances by the number of
    entries actually enqueued (mod its size). Class 0 is an ordinary class. Under
    ``torch.distributed`` the entries of all ranks are gathered (rank order) and enqueued on every
    rank, so all ranks hold identical queues.
    """

    pixel_queue: Tensor
    region_queue: Tensor
    pixel_ptr: Tensor
    region_ptr: Tensor
    pixel_count: Tensor
    region_count: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        pixel_size: int = 5000,
        region_size: int = 5000,
        pixels_per_class: int = 10,
    ) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.dim = check_int(dim, "dim", 1)
        self.pixels_per_class = check_int(pixels_per_class, "pixels_per_class", 1)
        c = num_classes
        self.register_buffer(
            "pixel_queue", torch.zeros(c, check_int(pixel_size, "pixel_size", 1), dim)
        )
        self.register_buffer(
            "region_queue", torch.zeros(c, check_int(region_size, "region_size", 1), dim)
        )
        for name in ("pixel_ptr", "region_ptr", "pixel_count", "region_count"):
            self.register_buffer(name, torch.zeros(c, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, "
            f"pixel_size={self.pixel_queue.shape[1]}, region_size={self.region_queue.shape[1]}, "
            f"pixels_per_class={self.pixels_per_class}"
        )

    @torch.no_grad()
    @autocast_off
    def update(self, emb: Tensor, labels: Tensor, ignore_index: int) -> None:
        """Enqueue a batch.

        Args:
            emb: ``(B, D, h, w)`` embeddings (normalised again here, in float32).
            labels: ``(B, h, w)`` integer labels on the SAME grid as ``emb``.
            ignore_index: label value that is never enqueued.
        """
        if emb.ndim != 4 or emb.shape[1] != self.dim:
            raise ValueError(f"emb must be (B, {self.dim}, h, w), got {tuple(emb.shape)}")
        if labels.shape != (emb.shape[0], *emb.shape[2:]):
            raise ValueError(
                f"labels {tuple(labels.shape)} must be on the embedding grid "
                f"{(emb.shape[0], *emb.shape[2:])}; resize them with nearest neighbour first"
            )
        _check_labels_in_range(labels, self.num_classes, ignore_index)
        z = _pixels(F.normalize(emb.float(), dim=1))
        y = labels.reshape(labels.shape[0], -1)
        pix, pix_lab, reg, reg_lab = [], [], [], []
        for zb, yb in zip(z, y, strict=True):
            for c in torch.unique(yb[yb != ignore_index]).tolist():
                idx = torch.nonzero(yb == c).squeeze(1)
                reg.append(F.normalize(zb[idx].mean(dim=0), dim=0)[None])
                reg_lab.append(c)
                keep = idx[torch.randperm(idx.numel(), device=idx.device)[: self.pixels_per_class]]
                pix.append(zb[keep])
                pix_lab.extend([c] * keep.numel())
        device = self.pixel_queue.device
        feats = [
            torch.cat(pix) if pix else z.new_zeros(0, self.dim),
            torch.cat(reg) if reg else z.new_zeros(0, self.dim),
        ]
        labs = [torch.tensor(pix_lab, dtype=torch.long), torch.tensor(reg_lab, dtype=torch.long)]
        feats = [all_gather_variable(f.to(device)) for f in feats]
        labs = [all_gather_variable(lab.to(device)) for lab in labs]
        self._enqueue(self.pixel_queue, self.pixel_ptr, self.pixel_count, feats[0], labs[0])
        self._enqueue(self.region_queue, self.region_ptr, self.region_count, feats[1], labs[1])

    @staticmethod
    def _enqueue(queue: Tensor, ptr: Tensor, count: Tensor, feats: Tensor, labels: Tensor) -> None:
        size = queue.shape[1]
        for c in torch.unique(labels).tolist():
            entries = feats[labels == c].to(queue.dtype)
            n = entries.shape[0]
            start = int(ptr[c])
            if n > size:  # only the last `size` survive a sequential write
                start, entries = (start + n - size) % size, entries[n - size :]
            slots = (start + torch.arange(entries.shape[0], device=queue.device)) % size
            queue[c, slots] = entries
            ptr[c] = (int(ptr[c]) + n) % size
            count[c] = min(int(count[c]) + n, size)

    def features(self) -> tuple[Tensor, Tensor]:
        """Filled entries of both queues: ``(M, D)`` embeddings and their ``(M,)`` labels."""
        feats, labels = [], []
        for queue, count in (
            (self.pixel_queue, self.pixel_count),
            (self.region_queue, self.region_count),
        ):
            for c, n in enumerate(count.tolist()):
                if n:
                    feats.append(queue[c, :n])
                    labels.append(torch.full((n,), c, dtype=torch.long, device=queue.device))
        if not feats:
            return self.pixel_queue.new_zeros(0, self.dim), torch.zeros(
                0, dtype=torch.long, device=self.pixel_queue.device
            )
        return torch.cat(feats), torch.cat(labels)


def hard_anchor_sampling(
    pixels: Tensor,
    labels: Tensor,
    pred: Tensor,
    ignore_index: int,
    max_samples: int,
    max_views: int,
) -> tuple[Tensor, Tensor] | None:
    """Sampled anchors ``(A, D)`` and their labels ``(A,)``, or ``None`` without eligible class.

    Args:
        pixels: ``(B, P, D)`` pixel embeddings; labels, pred: ``(B, P)`` on the same pixels.
    """
    pairs = []
    for b in range(labels.shape[0]):
        yb = labels[b]
        classes, counts = torch.unique(yb[yb != ignore_index], return_counts=True)
        pairs += [
            (b, c) for c, n in zip(classes.tolist(), counts.tolist(), strict=True) if n > max_views
        ]
    if not pairs:
        return None
    n_view = max(1, min(max_samples // len(pairs), max_views))
    feats, labs = [], []
    for b, c in pairs:
        is_c = labels[b] == c
        hard = torch.nonzero(is_c & (pred[b] != c)).squeeze(1)
        easy = torch.nonzero(is_c & (pred[b] == c)).squeeze(1)
        n_hard = min(hard.numel(), n_view // 2)
        n_easy = min(easy.numel(), n_view - n_hard)
        n_hard = n_view - n_easy  # fill from hard when easy runs short (eligible: enough pixels)
        pick = torch.cat(
            [
                hard[torch.randperm(hard.numel(), device=hard.device)[:n_hard]],
                easy[torch.randperm(easy.numel(), device=easy.device)[:n_easy]],
            ]
        )
        feats.append(pixels[b, pick])
        labs.append(torch.full((pick.numel(),), c, dtype=torch.long, device=pixels.device))
    return torch.cat(feats), torch.cat(labs)


@autocast_off
def cross_image_contrast(
    anchors: Tensor,
    anchor_labels: Tensor,
    extra_keys: Tensor | None = None,
    extra_labels: Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> Tensor:
    """The loss of the module docstring for unit-normalised ``anchors`` ``(A, D)`` (float32);
    ``extra_keys`` ``(K, D)`` with ``extra_labels`` ``(K,)`` are memory-bank entries."""
    keys, key_labels = anchors, anchor_labels
    if extra_keys is not None and extra_labels is not None and extra_keys.shape[0]:
        keys = torch.cat([anchors, extra_keys.to(anchors.dtype)])
        key_labels = torch.cat([anchor_labels, extra_labels])
    a = anchors.shape[0]
    s = anchors @ keys.T / temperature  # (A, A + K)
    same = anchor_labels[:, None] == key_labels[None, :]
    not_self = torch.ones_like(same)
    not_self[:, :a].fill_diagonal_(False)
    pos = same & not_self
    n_pos = pos.sum(dim=1)
    has_neg = (~same).any(dim=1, keepdim=True)
    # rows without negatives get a finite dummy input so the LSE gradient stays finite
    neg_in = torch.where(has_neg, s.masked_fill(same, -math.inf), s.new_zeros(()))
    neg_lse = torch.where(has_neg, torch.logsumexp(neg_in, dim=1, keepdim=True), -math.inf)
    log_prob = s - torch.logaddexp(s, neg_lse)
    keep = n_pos > 0
    if not bool(keep.any()):
        return anchors.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~pos, 0.0).sum(dim=1)[keep] / n_pos[keep]
    return -(temperature / base_temperature) * mean_log_prob.mean()


class CrossImagePixelContrast(nn.Module):
    """Cross-image pixel contrast (Wang et al., ICCV 2021); see the module docstring.

    ``forward(emb, labels, logits)``:
        emb: ``(B, D, h, w)`` raw contrast-head outputs (L2-normalised here, in float32).
        labels: ``(B, H, W)`` integer labels, nearest-neighbour resized to ``(h, w)``.
        logits: ``(B, C, H', W')`` segmentation logits; ``pred`` is their argmax at the same
            pixel centres (nearest-neighbour) on the ``(h, w)`` grid.

    With a ``memory`` bank the anchors also contrast with the bank's entries, and in training
    mode the batch is enqueued AFTER the loss is computed (a batch never meets itself in the bank).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        temperature: float = 0.1,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 100,
        memory: MemoryBank | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", 1)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.temperature = check_temperature(temperature)
        self.base_temperature = check_temperature(base_temperature, "base_temperature")
        self.max_samples = check_int(max_samples, "max_samples", 1)
        self.max_views = check_int(max_views, "max_views", 1)
        if memory is not None and memory.num_classes != num_classes:
            raise ConfigError(
                f"memory bank has {memory.num_classes} classes, the loss {num_classes}"
            )
        self.memory = memory

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"max_samples={self.max_samples}, max_views={self.max_views}"
        )

    @autocast_off
    def forward(self, emb: Tensor, labels: Tensor, logits: Tensor) -> Tensor:
        if emb.ndim != 4 or labels.ndim != 3 or logits.ndim != 4:
            raise ValueError(
                "expected emb (B, D, h, w), labels (B, H, W), logits (B, C, H', W'), got "
                f"{tuple(emb.shape)}, {tuple(labels.shape)}, {tuple(logits.shape)}"
            )
        if not (emb.shape[0] == labels.shape[0] == logits.shape[0]):
            raise ValueError("emb, labels and logits must have the same batch size")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        size = (emb.shape[2], emb.shape[3])
        z = F.normalize(emb.float(), dim=1)
        y = resize_labels(labels, size)
        _check_labels_in_range(y, self.num_classes, self.ignore_index)
        with torch.no_grad():
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits.float(), size=size, mode="nearest-exact")
            pred = logits.max(dim=1).indices  # == argmax, faster on CPU
        flat_y = y.reshape(y.shape[0], -1)
        sampled = hard_anchor_sampling(
            _pixels(z),
            flat_y,
            pred.reshape(flat_y.shape),
            self.ignore_index,
            self.max_samples,
            self.max_views,
        )
        if sampled is None:
            loss = z.sum() * 0.0
        else:
            extra = self.memory.features() if self.memory is not None else (None, None)
            loss = cross_image_contrast(
                sampled[0],
                sampled[1],
                extra[0],
                extra[1],
                self.temperature,
                self.base_temperature,
            )
        if self.memory is not None and self.training:
            self.memory.update(z.detach(), y, self.ignore_index)
        return loss
