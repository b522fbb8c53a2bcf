"""Find the (image, mask) pairs of a dataset on disk, for the folder layout and known datasets.

Every layout returns samples sorted by their key (file stem, or relative path without extension
for nested folders), so the order -- and therefore every seeded subset -- is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segcl.config import LAYOUTS, read_yaml
from segcl.data.info import CAMVID, CITYSCAPES, PET, VOC, DatasetInfo
from segcl.data.io import IMAGE_EXTENSIONS
from segcl.errors import ConfigError, DataError

DATASET_YAML = "dataset.yaml"


def _lut(pairs: dict[int, int], default: int = 255) -> np.ndarray:
    table = np.full(256, default, dtype=np.uint8)
    for src, dst in pairs.items():
        table[src] = dst
    return table


#: Cityscapes label id (``*_gtFine_labelIds.png``) -> train id 0..18; every other id -> 255.
CITYSCAPES_ID_TO_TRAINID = _lut(
    {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
)  # fmt: skip

#: Oxford-IIIT Pet trimap (1 = pet, 2 = background, 3 = boundary) -> pet 1, background 0, 255.
PET_TRIMAP_TO_LABEL = _lut({1: 1, 2: 0, 3: 255})


@dataclass(frozen=True)
class Sample:
    """One image and its mask file.

    Args:
        image: the image file.
        mask: the class-index mask file, or ``None`` for an unlabelled image.
        label_map: optional 256-entry lookup table applied to the mask values after reading
            (e.g. Cityscapes label ids -> train ids); ``None`` means the values are labels.
    """

    image: Path
    mask: Path | None
    label_map: tuple[int, ...] | None = field(default=None, repr=False)


def load_samples(
    root: str | Path,
    split: str = "train",
    layout: str = "auto",
    info: DatasetInfo | None = None,
    require_masks: bool = True,
) -> tuple[list[Sample], DatasetInfo]:
    """List the samples of one split of a dataset and describe its classes.

    Args:
        root: the dataset folder.
        split: ``"train"``, ``"val"``, ``"test"`` (or any split the layout has).
        layout: one of :data:`LAYOUTS`; ``"auto"`` detects it from the folder contents.
        info: class description; overrides the layout's built-in one and ``dataset.yaml``.
        require_masks: when ``False``, images without a mask are kept with ``mask=None``.

    Returns:
        The samples sorted by key, and the :class:`DatasetInfo` to interpret their masks.

    Raises:
        DataError: the folder, a split, the images or a mask are missing.
        ConfigError: unknown layout, or no class description for a plain folder dataset.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if layout == "auto":
        layout = detect_layout(root)
    loader = _LOADERS[layout]
    return loader(root, split, info, require_masks)


def detect_layout(root: str | Path) -> str:
    """Guess the layout of a dataset folder (see :func:`load_samples`)."""
    root = Path(root)
    if (root / "JPEGImages").is_dir() or _voc_root(root) is not None:
        return "voc"
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    if (root / "annotations" / "trimaps").is_dir():
        return "pet"
    if (root / "trainannot").is_dir() or "camvid" in root.resolve().name.lower():
        return "camvid"
    return "folder"


# --------------------------------------------------------------------------------------------
# helpers


def _is_visible_image(path: Path, base: Path) -> bool:
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(base).parts)
    )


def _index_files(folder: Path, recursive: bool = True) -> dict[str, Path]:
    """Map key (relative path without extension, '/'-separated) -> image file in ``folder``."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    index: dict[str, Path] = {}
    for f in files:
        if not _is_visible_image(f, folder):
            continue
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in index:
            first, second = sorted([index[key], f])
            raise DataError(f"{second}: same name as {first}; cannot tell which one to pair")
        index[key] = f
    return index


def _pair(
    image_dir: Path,
    mask_dir: Path,
    require_masks: bool,
    label_map: tuple[int, ...] | None = None,
) -> list[Sample]:
    """Pair images and masks of two parallel folders by key."""
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    images = _index_files(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no images found")
    if mask_dir.is_dir():
        masks = _index_files(mask_dir)
    elif require_masks:
        raise DataError(f"{mask_dir}: mask folder not found (needed for the images in {image_dir})")
    else:
        masks = {}
    samples = []
    for key in sorted(images):
        mask = masks.get(key)
        if mask is None and require_masks:
            raise DataError(f"{images[key]}: no mask found (expected {mask_dir / key}.png)")
        samples.append(Sample(images[key], mask, label_map))
    return samples


def _read_dataset_yaml(path: Path) -> DatasetInfo:
    data = read_yaml(path, "dataset description")
    try:
        return DatasetInfo.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def _read_split_list(path: Path) -> list[str]:
    """Stems listed in a split file: the first token of every non-empty, non-comment line."""
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    stems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            stems.append(tokens[0])
    if not stems:
        raise DataError(f"{path}: split list is empty")
    return sorted(dict.fromkeys(stems))


def _listed(
    stems: Iterable[str],
    image_of: Callable[[str], Path],
    mask_of: Callable[[str], Path],
    require_masks: bool,
    label_map: tuple[int, ...] | None = None,
) -> list[Sample]:
    """Samples for the stems of a split list; every image must exist, masks unless optional."""
    samples = []
    for stem in stems:
        image, mask = image_of(stem), mask_of(stem)
        if not image.is_file():
            raise DataError(f"{image}: image listed in the split file not found")
        if not mask.is_file():
            if require_masks:
                raise DataError(f"{image}: no mask found (expected {mask})")
            mask = None
        samples.append(Sample(image, mask, label_map))
    return samples


# --------------------------------------------------------------------------------------------
# layouts


def _load_folder(
    root: Path, split: str, info: DatasetInfo | None, require_masks: bool
) -> tuple[list[Sample], DatasetInfo]:
    """``root/{split}/images`` + ``masks``, or ``root/images`` + ``masks`` (no splits).

    With ``require_masks=False`` a plain folder of images (no ``images`` subfolder) is accepted
    as unlabelled images.
    """
    if (root / split).is_dir():
        base = root / split
    elif (root / "images").is_dir():
        base = root
    elif not require_masks and (plain := _index_files(root)):
        # a plain folder of unlabelled images
        return [Sample(plain[key], None) for key in sorted(plain)], info or _folder_info(root)
    else:
        raise DataError(
            f"{root}: no '{split}' folder and no 'images' folder "
            f"(expected {root / split / 'images'} or {root / 'images'})"
        )
    samples = _pair(base / "images", base / "masks", require_masks)
    return samples, info or _folder_info(root)


def _folder_info(root: Path) -> DatasetInfo:
    """The class description in ``dataset.yaml`` of ``root`` or its parent."""
    for candidate in (root / DATASET_YAML, root.parent / DATASET_YAML):
        if candidate.is_file():
            return _read_dataset_yaml(candidate)
    raise ConfigError(
        f"{root}: no class names for this dataset; pass --classes or write "
        f"{root / DATASET_YAML} (keys: classes, ignore_index, palette, name)"
    )


def _load_camvid(
    root: Path, split: str, info: DatasetInfo | None, require_masks: bool
) -> tuple[list[Sample], DatasetInfo]:
    """``root/{split}/images`` + ``masks``, or the SegNet ``root/{split}`` + ``{split}annot``."""
    if (root / split / "images").is_dir():
        samples = _pair(root / split / "images", root / split / "masks", require_masks)
    elif (root / split).is_dir():
        samples = _pair(root / split, root / f"{split}annot", require_masks)
    else:
        raise DataError(
            f"{root / split}: CamVid split folder not found (expected {root / split / 'images'} "
            f"or {root / split} with {root / (split + 'annot')})"
        )
    return samples, info or CAMVID


def _voc_root(root: Path) -> Path | None:
    if (root / "JPEGImages").is_dir():
        return root
    if (root / "VOC2012" / "JPEGImages").is_dir():
        return root / "VOC2012"
    candidates = sorted(p.parent for p in root.glob("VOC*/JPEGImages") if p.is_dir())
    return candidates[0] if len(candidates) == 1 else None


def _load_voc(
    root: Path, split: str, info: DatasetInfo | None, require_masks: bool
) -> tuple[list[Sample], DatasetInfo]:
    """PASCAL VOC: ``JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation/{split}.txt``."""
    base = _voc_root(root)
    if base is None:
        raise DataError(f"{root}: not a VOC folder (no JPEGImages or VOC2012/JPEGImages)")
    stems = _read_split_list(base / "ImageSets" / "Segmentation" / f"{split}.txt")
    samples = _listed(
        stems,
        lambda s: base / "JPEGImages" / f"{s}.jpg",
        lambda s: base / "SegmentationClass" / f"{s}.png",
        require_masks,
    )
    return samples, info or VOC


def _load_cityscapes(
    root: Path, split: str, info: DatasetInfo | None, require_masks: bool
) -> tuple[list[Sample], DatasetInfo]:
    """Cityscapes fine annotations; label ids are mapped to the 19 train ids."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: Cityscapes split folder not found")
    suffix = "_leftImg8bit"
    images = sorted(
        (f for f in image_dir.glob("*/*.png") if f.stem.endswith(suffix)),
        key=lambda f: f.relative_to(image_dir).as_posix(),
    )
    if not images:
        raise DataError(f"{image_dir}: no *_leftImg8bit.png images found")
    label_map = tuple(int(v) for v in CITYSCAPES_ID_TO_TRAINID)
    samples = []
    for image in images:
        city, prefix = image.parent.name, image.stem[: -len(suffix)]
        mask = root / "gtFine" / split / city / f"{prefix}_gtFine_labelIds.png"
        if not mask.is_file():
            if require_masks:
                raise DataError(f"{image}: no mask found (expected {mask})")
            mask = None
        samples.append(Sample(image, mask, label_map))
    return samples, info or CITYSCAPES


_PET_SPLITS = {"train": "trainval", "trainval": "trainval", "val": "test", "test": "test"}


def _load_pet(
    root: Path, split: str, info: DatasetInfo | None, require_masks: bool
) -> tuple[list[Sample], DatasetInfo]:
    """Oxford-IIIT Pet: ``images/*.jpg`` with ``annotations/trimaps/*.png`` mapped to 0/1/255."""
    if split not in _PET_SPLITS:
        raise ConfigError(
            f"Oxford-IIIT Pet has no split {split!r}; use one of {', '.join(_PET_SPLITS)}"
        )
    stems = _read_split_list(root / "annotations" / f"{_PET_SPLITS[split]}.txt")
    samples = _listed(
        stems,
        lambda s: root / "images" / f"{s}.jpg",
        lambda s: root / "annotations" / "trimaps" / f"{s}.png",
        require_masks,
        tuple(int(v) for v in PET_TRIMAP_TO_LABEL),
    )
    return samples, info or PET


_LOADERS = {
    "folder": _load_folder,
    "camvid": _load_camvid,
    "voc": _load_voc,
    "cityscapes": _load_cityscapes,
    "pet": _load_pet,
}
