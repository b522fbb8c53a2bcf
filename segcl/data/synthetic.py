"""A small generated segmentation dataset (textured shapes) for ``segcl demo`` and for tests.

Each image shows a textured background and one to four shapes. Every class has a characteristic
texture *and* a preferred colour range, but the colour ranges overlap (and the background may
take any colour), so colour alone does not solve the task; shape and texture do:

==========  ======================================  ===============================
class       texture                                 colour (HSV hue)
==========  ======================================  ===============================
background  soft diagonal waves or smooth blobs     any hue, low to mid saturation
disc        fine checkerboard (2-pixel cells)       0 deg +- 75 deg
square      sharp stripes along one side (6-9 px)   120 deg +- 75 deg
triangle    strong per-pixel speckle noise          240 deg +- 75 deg
==========  ======================================  ===============================

About a third of the shapes get a 2-pixel band of the ignore index (255) along their border,
which exercises ignore handling in losses and metrics. The output is a plain folder dataset::

    root/dataset.yaml                       classes, ignore_index, palette, name
    root/{train,val}/images/synth_0000.png  RGB
    root/{train,val}/masks/synth_0000.png   8-bit class indices (grayscale PNG)

Generation is deterministic: image ``i`` of a split depends only on ``(seed, split, i, size)``,
so the same arguments give byte-identical files and a larger ``n_train`` keeps the first images.
"""

from __future__ import annotations

import colorsys
import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segcl.errors import ConfigError
from segcl.viz import default_palette

__all__ = [
    "IGNORE_INDEX",
    "SYNTHETIC_CLASSES",
    "make_synthetic_dataset",
    "render_sample",
]

SYNTHETIC_CLASSES = ["background", "disc", "square", "triangle"]
IGNORE_INDEX = 255

_SPLIT_CODES = {"train": 1, "val": 2}
_FILE_RE = re.compile(r"^synth_\d{4,}\.png$")
_HUE_CENTRE = {1: 0.0, 2: 120.0, 3: 240.0}  # degrees, per object class
_HUE_SPREAD = 75.0  # neighbouring classes share 30 degrees of hue on each side
_MIN_SIZE = 32


def _hsv(
    rng: np.random.Generator, hue_deg: float, sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    """An RGB colour in [0, 255] from a hue (degrees) and random saturation / value ranges."""
    rgb = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Any hue, muted; soft diagonal waves or smooth low-frequency blobs, light noise."""
    h, w = yy.shape
    base = _hsv(rng, rng.uniform(0, 360), (0.05, 0.6), (0.3, 0.9))
    if rng.random() < 0.5:
        period = rng.uniform(12, 24)
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        texture = rng.uniform(10, 25) * np.sin(phase + rng.uniform(0, 2 * np.pi))
    else:
        coarse = rng.normal(0.0, 1.0, size=(4, 5)).astype(np.float32)
        rows = np.linspace(0, 3, h, dtype=np.float32)
        cols = np.linspace(0, 4, w, dtype=np.float32)
        # separable linear interpolation of the coarse grid to full size
        r0 = np.minimum(rows.astype(int), 2)
        c0 = np.minimum(cols.astype(int), 3)
        fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
        top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c0 + 1] * fc
        bottom = coarse[r0 + 1][:, c0] * (1 - fc) + coarse[r0 + 1][:, c0 + 1] * fc
        texture = rng.uniform(15, 30) * (top * (1 - fr) + bottom * fr)
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    img = base[None, None, :] + texture[:, :, None] * tint[None, None, :]
    return img + rng.normal(0.0, rng.uniform(3, 8), size=img.shape).astype(np.float32)


def _shape_mask(
    cls: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean region of one shape and the along-side coordinate used by the stripe texture."""
    h, w = yy.shape
    r = rng.uniform(0.13, 0.27) * min(h, w)
    cx, cy = rng.uniform(0.5 * r, w - 0.5 * r), rng.uniform(0.5 * r, h - 0.5 * r)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if cls == 1:  # disc
        region = dx * dx + dy * dy <= r * r
    elif cls == 2:  # square (rotated)
        half = 0.85 * r
        region = (np.abs(u) <= half) & (np.abs(v) <= half)
    else:  # triangle: jittered vertices around the centre, inside = same side of every edge
        angles = theta + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        radii = 1.2 * r * rng.uniform(0.85, 1.15, 3)
        px, py = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
        sides = [
            (px[(k + 1) % 3] - px[k]) * (yy - py[k]) - (py[(k + 1) % 3] - py[k]) * (xx - px[k])
            for k in range(3)
        ]
        region = ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | (
            (sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0)
        )
    return region, u


def _object_pixels(
    cls: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, along: np.ndarray
) -> np.ndarray:
    """Full-size RGB layer with the colour and texture of one object of class ``cls``."""
    base = _hsv(
        rng, _HUE_CENTRE[cls] + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD), (0.3, 1.0), (0.35, 1.0)
    )
    if cls == 1:  # fine checkerboard
        checker = ((xx.astype(np.int32) // 2 + yy.astype(np.int32) // 2) % 2) * 2.0 - 1.0
        texture = rng.uniform(22, 40) * checker
    elif cls == 2:  # sharp stripes that follow the square's orientation
        period = rng.uniform(6, 9)
        texture = rng.uniform(25, 45) * np.sign(np.sin(along * (2 * np.pi / period)))
    else:  # speckle
        texture = rng.normal(0.0, rng.uniform(22, 35), size=yy.shape)
    img = base[None, None, :] + texture[:, :, None].astype(np.float32)
    return img + rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)


def _border(region: np.ndarray) -> np.ndarray:
    """Pixels within one pixel of the region's boundary, on either side (a 2-pixel band)."""
    padded = np.pad(region, 1, mode="edge")
    h, w = region.shape
    shifts = [
        padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    ]
    dilated = np.logical_or.reduce(shifts)
    eroded = np.logical_and.reduce(shifts)
    return dilated & ~eroded


def render_sample(
    rng: np.random.Generator, size: tuple[int, int] = (96, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask.

    Args:
        rng: the random generator (its state decides everything).
        size: ``(height, width)``.

    Returns:
        ``(image, mask)``: ``(H, W, 3)`` uint8 RGB and ``(H, W)`` uint8 labels in
        ``{0, 1, 2, 3, 255}``.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _background(rng, yy, xx)
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        region, along = _shape_mask(cls, rng, yy, xx)
        if not region.any():
            continue
        pixels = _object_pixels(cls, rng, yy, xx, along)
        image[region] = pixels[region]
        mask[region] = cls
        if rng.random() < 0.35:
            mask[_border(region)] = IGNORE_INDEX
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _check_args(n_train: int, n_val: int, size: tuple[int, int], seed: int) -> tuple[int, int]:
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ConfigError(f"n_train must be an integer >= 1, got {n_train!r}")
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 0:
        raise ConfigError(f"n_val must be an integer >= 0, got {n_val!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"size must be (height, width), got {size!r}") from e
    if h < _MIN_SIZE or w < _MIN_SIZE:
        raise ConfigError(f"size must be at least {_MIN_SIZE}x{_MIN_SIZE} pixels, got {h}x{w}")
    return h, w


def _check_root(root: Path) -> None:
    """Refuse to write into a non-empty folder that is not a synthetic dataset."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a folder")
    if not root.is_dir() or not any(root.iterdir()):
        return
    description = root / "dataset.yaml"
    try:
        data = yaml.safe_load(description.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None
    if not (isinstance(data, dict) and data.get("name") == "synthetic"):
        raise ConfigError(
            f"{root}: folder is not empty and holds no synthetic dataset; choose another folder"
        )


def make_synthetic_dataset(
    root: str | Path,
    n_train: int = 64,
    n_val: int = 16,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """Write the synthetic dataset to ``root`` and return ``root``.

    ``root`` must be missing, empty, or an earlier synthetic dataset (which is then rewritten;
    its surplus ``synth_*.png`` files are removed so the folder matches the new arguments).

    Args:
        root: destination folder.
        n_train: number of training images (>= 1).
        n_val: number of validation images (>= 0).
        size: ``(height, width)`` of every image, at least 32x32.
        seed: random seed; the same arguments give byte-identical files.

    Raises:
        ConfigError: invalid arguments, or ``root`` holds something else.
    """
    root = Path(root)
    h, w = _check_args(n_train, n_val, size, seed)
    _check_root(root)
    for split, count in (("train", n_train), ("val", n_val)):
        image_dir, mask_dir = root / split / "images", root / split / "masks"
        names = {f"synth_{i:04d}.png" for i in range(count)}
        for folder in (image_dir, mask_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.iterdir():
                if stale.is_file() and _FILE_RE.match(stale.name) and stale.name not in names:
                    stale.unlink()
        for i in range(count):
            rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], i])
            image, mask = render_sample(rng, (h, w))
            Image.fromarray(image).save(image_dir / f"synth_{i:04d}.png", format="PNG")
            Image.fromarray(mask).save(mask_dir / f"synth_{i:04d}.png", format="PNG")
    description = {
        "name": "synthetic",
        "classes": list(SYNTHETIC_CLASSES),
        "ignore_index": IGNORE_INDEX,
        "palette": [list(c) for c in default_palette(len(SYNTHETIC_CLASSES))],
    }
    (root / "dataset.yaml").write_text(
        "# Generated by segcl.data.synthetic.make_synthetic_dataset("
        f"n_train={n_train}, n_val={n_val}, size=({h}, {w}), seed={seed})\n"
        + yaml.safe_dump(description, sort_keys=False, default_flow_style=None),
        encoding="utf-8",
    )
    return root
