"""Class descriptions of a dataset (names, ignore index, palette) and the built-in datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segcl.errors import ConfigError
from segcl.viz import default_palette

Color = tuple[int, int, int]

_KEYS = ("classes", "ignore_index", "palette", "name")


@dataclass
class DatasetInfo:
    """What the label values of a dataset mean.

    Args:
        classes: class names; label value ``i`` is ``classes[i]``.
        ignore_index: label value excluded from losses and metrics (void / boundary pixels).
            Must not be a class index.
        palette: one RGB colour per class (for overlays and colour masks), or ``None``.
        name: short dataset name (e.g. ``"camvid"``), used in model cards.
    """

    classes: list[str]
    ignore_index: int = 255
    palette: list[Color] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, str) or not isinstance(self.classes, (list, tuple)):
            raise ConfigError(f"classes must be a list of names, got {self.classes!r}")
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise ConfigError("classes must name at least one class")
        duplicates = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if duplicates:
            raise ConfigError(f"duplicate class names: {', '.join(duplicates)}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise ConfigError(f"ignore_index must be an integer, got {self.ignore_index!r}")
        if 0 <= self.ignore_index < len(self.classes):
            raise ConfigError(
                f"ignore_index {self.ignore_index} is the index of class "
                f"{self.classes[self.ignore_index]!r}; use a value >= {len(self.classes)}"
            )
        if self.palette is not None:
            self.palette = [_color(c) for c in self.palette]
            if len(self.palette) != len(self.classes):
                raise ConfigError(
                    f"palette has {len(self.palette)} colours for {len(self.classes)} classes"
                )
        if self.name is not None:
            self.name = str(self.name)

    @property
    def num_classes(self) -> int:
        """Number of classes (label values ``0 .. num_classes - 1``)."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable form (palette colours as lists)."""
        return {
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "palette": None if self.palette is None else [list(c) for c in self.palette],
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on unknown or missing keys."""
        if not isinstance(d, dict):
            raise ConfigError(f"a dataset description must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown dataset keys: {', '.join(map(str, unknown))} "
                f"(allowed: {', '.join(_KEYS)})"
            )
        if "classes" not in d:
            raise ConfigError("a dataset description needs 'classes' (a list of class names)")
        kwargs = {k: d[k] for k in _KEYS if k in d and d[k] is not None}
        return cls(**kwargs)


def _color(c: Any) -> Color:
    """Validate one palette entry as an ``(r, g, b)`` tuple of ints in 0..255."""
    if (
        isinstance(c, (list, tuple))
        and len(c) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
    ):
        return (int(c[0]), int(c[1]), int(c[2]))
    raise ConfigError(f"palette colour must be [r, g, b] with values 0..255, got {c!r}")


CAMVID = DatasetInfo(
    classes=[
        "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
        "pedestrian", "bicyclist",
    ],
    ignore_index=11,
    palette=[
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ],
    name="camvid",
)  # fmt: skip

VOC = DatasetInfo(
    classes=[
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
        "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
        "sheep", "sofa", "train", "tvmonitor",
    ],
    ignore_index=255,
    palette=default_palette(21),  # the PASCAL VOC colour map
    name="voc",
)  # fmt: skip

CITYSCAPES = DatasetInfo(
    classes=[
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ],
    ignore_index=255,
    palette=[
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    name="cityscapes",
)  # fmt: skip

PET = DatasetInfo(
    classes=["background", "pet"],
    ignore_index=255,
    palette=[(0, 0, 0), (255, 128, 0)],
    name="oxford-iiit-pet",
)
