"""From a :class:`DataConfig` to samples, class description, subsets and data loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch.utils.data import DataLoader, Dataset

from segcl.config import DataConfig
from segcl.data import DatasetInfo, Sample, labeled_subset, load_samples, validate_samples
from segcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segcl.errors import ConfigError


@dataclass
class DataSplits:
    """The samples a job works on."""

    info: DatasetInfo
    labeled: list[Sample]
    unlabeled: list[Sample]
    val: list[Sample]


def dataset_info_override(cfg: DataConfig) -> DatasetInfo | None:
    """A :class:`DatasetInfo` built from ``--classes`` / ``--ignore-index``, if given."""
    if cfg.classes:
        ignore = 255 if cfg.ignore_index is None else cfg.ignore_index
        return DatasetInfo(classes=list(cfg.classes), ignore_index=ignore)
    return None


def load_splits(
    cfg: DataConfig,
    seed: int,
    need_val: bool = True,
    validate: bool = True,
    require_masks: bool = True,
) -> DataSplits:
    """Load the train/val samples and pick the labelled subset (nested for a given ``seed``).

    The labelled subset is drawn among the training images that have a mask; every other
    training image (and ``cfg.unlabeled``) is returned without its mask in ``unlabeled``. With
    ``require_masks=False`` training images without a mask are allowed (pre-training).
    """
    if not cfg.root:
        raise ConfigError("no dataset given")
    train, info = load_samples(cfg.root, cfg.train_split, cfg.layout, dataset_info_override(cfg),
                               require_masks=require_masks)
    if cfg.ignore_index is not None and not cfg.classes:
        info = dataclasses.replace(info, ignore_index=cfg.ignore_index)
    pool = [i for i, s in enumerate(train) if s.mask is not None]
    chosen = (
        {pool[j] for j in labeled_subset(len(pool), cfg.labeled_fraction, cfg.labeled_count, seed)}
        if pool
        else set()
    )
    labeled = [s for i, s in enumerate(train) if i in chosen]
    unlabeled = [dataclasses.replace(s, mask=None) for i, s in enumerate(train) if i not in chosen]
    if cfg.unlabeled:
        extra, _ = load_samples(cfg.unlabeled, "train", "folder", info, require_masks=False)
        unlabeled += [Sample(s.image, None) for s in extra]
    val: list[Sample] = []
    if need_val:
        val, _ = load_samples(cfg.root, cfg.val_split, cfg.layout, info)
    if validate:
        validate_samples(labeled + val, info)
    return DataSplits(info=info, labeled=labeled, unlabeled=unlabeled, val=val)


def normalization(
    encoder: str, encoder_weights: str | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean/std of a timm encoder: those of the pretrained tag ``--encoder-weights
    imagenet:TAG`` names (e.g. 0.5 for ViT ``augreg`` weights), else of the encoder's default
    pretrained config, else ImageNet's."""
    from segcl.models.weights import timm_pretrained_cfg, timm_tag

    if timm_tag(encoder_weights) is not None:
        cfg = timm_pretrained_cfg(encoder, encoder_weights)  # type: ignore[arg-type]
    else:
        try:
            cfg = timm.get_pretrained_cfg(encoder.split("hf-hub:")[-1])
        except Exception:
            cfg = None
    mean = tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(cfg, "std", None) or IMAGENET_STD)
    return mean, std


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of ``n`` items in ``epoch``: a permutation seeded by ``(seed, epoch)``
    alone, so any process, worker or resumed run computes the same one."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """Shuffles with a generator seeded by ``(seed, epoch)``: reproducible and resumable.

    It yields ``(epoch, index)`` keys, not bare indices: the dataset draws each sample's
    augmentation from ``(seed, epoch, index)`` (:class:`~segcl.data.SegmentationDataset`), and the
    key is the only thing that reaches DataLoader worker processes every epoch -- persistent
    workers hold their own copy of the dataset, so an epoch set on the main process's copy would
    never reach them.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select ``epoch``'s order, without its first ``skip`` items (a run resumed
        mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = (epoch_order(self.n, self.seed, self.epoch) if self.shuffle
                 else list(range(self.n)))
        share = order[self.rank :: self.world][: len(self)]
        return iter([(self.epoch, i) for i in share[self.skip :]])

    def __len__(self) -> int:
        return self.n // self.world


class StreamSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """An endless stream of ``(epoch, index)`` keys, ``batch`` per step, starting at ``start_step``.

    Position ``p`` of the global stream (``p = (step * world + rank) * batch + j``) is image
    ``perm_epoch[p mod n]`` of epoch ``p // n``, each epoch's permutation seeded by
    ``(seed, epoch)``. A second data stream (the unlabelled images of semi-supervised training)
    thus runs at its own epoch length yet is a function of the step alone, so a resumed run
    (``start_step``) draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, n: int, batch: int, seed: int, start_step: int = 0, rank: int = 0,
                 world: int = 1):
        if n < 1:
            raise ConfigError("the data stream has no images")
        self.n, self.batch, self.seed = n, batch, seed
        self.start_step, self.rank, self.world = start_step, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step, cached = self.start_step, (-1, [])
        while True:
            first = (step * self.world + self.rank) * self.batch
            for p in range(first, first + self.batch):
                epoch = p // self.n
                if cached[0] != epoch:
                    # (offset: not the labelled stream's order when both have n images)
                    cached = (epoch, epoch_order(self.n, self.seed, epoch + 7919))
                yield epoch, cached[1][p % self.n]
            step += 1


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    sampler: torch.utils.data.Sampler | None = None,
    drop_last: bool = False,
    collate_fn: Any = None,
) -> DataLoader:
    """A DataLoader with pinned memory on CUDA and persistent workers when there are any.

    It draws its worker seeds from a generator of its own, never from torch's global generator:
    creating a loader's iterator would otherwise consume a global draw, and a resumed run (which
    creates its iterators at another point) would then draw other dropout masks and pixel
    samples than the uninterrupted run. Augmentation does not use the worker seeds.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, workers: int, device: torch.device,
    rank: int = 0, world: int = 1,
) -> tuple[DataLoader, EpochSampler]:
    """The training loader of one process: its share of each shuffled epoch
    (:class:`EpochSampler`), full batches only, the batch size capped by that share.

    ``len(loader)`` is the number of steps per epoch; call ``sampler.set_epoch`` every epoch.
    """
    sampler = EpochSampler(len(dataset), seed, rank=rank, world=world)
    if len(sampler) == 0:
        raise ConfigError(f"{len(dataset)} training images cannot be shared by {world} processes")
    loader = make_loader(dataset, min(batch_size, len(sampler)), workers, device, sampler,
                         drop_last=True)
    return loader, sampler


def stream_loader(
    dataset: Dataset, batch_size: int, seed: int, workers: int, device: torch.device,
    start_step: int = 0, rank: int = 0, world: int = 1,
) -> Iterator[dict]:
    """Endless batches of ``dataset`` for a second data stream (:class:`StreamSampler`)."""
    sampler = StreamSampler(len(dataset), batch_size, seed, start_step, rank, world)
    return iter(make_loader(dataset, batch_size, workers, device, sampler, drop_last=True))


def collate_eval(items: list[dict]) -> dict:
    """Stack resized images; keep full-resolution masks (which may differ in size) as a list."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "mask": [it["mask"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }
