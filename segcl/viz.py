"""Palettes, mask colouring, overlays and plots (training curves, confusion matrix, line charts).

matplotlib is imported inside the plotting functions only, and figures are drawn on a bare
:class:`matplotlib.figure.Figure` (Agg canvas) rather than through ``pyplot``: nothing here needs a
display or changes the caller's matplotlib backend. Every PNG is written atomically (a temporary
file in the destination folder, then :func:`os.replace`), so a reader never sees half a file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segcl.fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "colorize",
    "default_palette",
    "mask_rgb",
    "overlay",
    "plot_confusion",
    "plot_curves",
    "plot_lines",
    "prediction_panel",
    "save_png",
]

Palette = Sequence[Sequence[int]]
_MAX_ANNOTATED_CLASSES = 20


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Return ``n`` distinct RGB colours: the PASCAL VOC colour map, the one palette of segcl
    (the VOC layout's class colours, and the colours of any dataset that gives none).

    The bits of the class index are spread over the high bits of the three channels (bit 0 -> red,
    bit 1 -> green, bit 2 -> blue, then the next three bits one level lower, ...). Index 0 is
    black, 1 dark red, 2 dark green, ... and the first 256 colours are all different.
    """
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def _palette_array(palette: Palette) -> np.ndarray:
    """Validate a palette and return it as a ``(K, 3)`` uint8 array."""
    arr = np.asarray(palette, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 3 or not 1 <= arr.shape[0] <= 256:
        raise ValueError(f"palette must be 1..256 RGB triples, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError("palette values must lie in [0, 255]")
    return arr.astype(np.uint8)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    """Validate a 2-D integer label mask with values in [0, 255] and return it as uint8."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
        raise ValueError(f"mask must hold integer class indices, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("mask values must lie in [0, 255] to be stored as a palette image")
    return mask.astype(np.uint8)


def colorize(mask: np.ndarray, palette: Palette) -> Image.Image:
    """Turn a label mask into a palette ("P" mode) image.

    The pixel values stay the class indices, so the saved PNG reads back as the same mask with
    ``np.array(Image.open(path))``; the palette only decides how viewers show them. Indices not
    covered by ``palette`` (for example the ignore index 255) are shown black.

    Args:
        mask: ``(H, W)`` integer class indices in ``[0, 255]``.
        palette: up to 256 RGB triples; entry ``k`` colours class ``k``.
    """
    indices = _check_mask(mask)
    colours = np.zeros((256, 3), dtype=np.uint8)
    pal = _palette_array(palette)
    colours[: len(pal)] = pal
    image = Image.fromarray(indices)  # mode "L"
    image.putpalette(colours.reshape(-1).tolist())  # becomes mode "P", indices unchanged
    return image


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Palette,
    alpha: float = 0.5,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Blend mask colours over an image: ``out = (1 - alpha) * image + alpha * colour``.

    Args:
        image: ``(H, W, 3)`` or ``(H, W)`` uint8 image (a float image in ``[0, 1]`` is scaled).
        mask: ``(H, W)`` integer class indices.
        palette: RGB triples; every index in ``mask`` other than ``ignore_index`` must have one.
        alpha: opacity of the mask colours, in ``[0, 1]``.
        ignore_index: pixels with this label keep the image unchanged.

    Returns:
        ``(H, W, 3)`` uint8 array.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {np.shape(image)}")
    if np.issubdtype(img.dtype, np.floating):
        img = np.clip(img * 255.0 if img.max() <= 1.0 else img, 0, 255)
    img = img.astype(np.float32)
    labels = np.asarray(mask)
    if labels.shape != img.shape[:2]:
        raise ValueError(f"mask shape {labels.shape} does not match image shape {img.shape[:2]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"mask must hold integer class indices, got dtype {labels.dtype}")
    pal = _palette_array(palette)
    keep = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    painted = labels[~keep]
    if painted.size and (painted.min() < 0 or painted.max() >= len(pal)):
        raise ValueError(f"mask holds indices outside the {len(pal)}-colour palette")
    colour = np.zeros_like(img)
    colour[~keep] = pal[painted]
    blended = (1.0 - alpha) * img + alpha * colour
    blended[keep] = img[keep]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def mask_rgb(mask: np.ndarray, palette: Palette) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of a label mask; indices without a colour (the ignore index)
    are black."""
    pal = _palette_array(palette)
    lut = np.zeros((len(pal) + 1, 3), dtype=np.uint8)
    lut[: len(pal)] = pal
    mask = np.asarray(mask)
    return lut[np.where((mask >= 0) & (mask < len(pal)), mask, len(pal))]


def prediction_panel(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, palette: Palette
) -> np.ndarray:
    """One ``(H, 3W, 3)`` uint8 strip: the image, its true mask and the predicted mask, side by
    side, masks in ``palette`` colours (what the loggers show for a validation image)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if np.shape(truth) != img.shape[:2] or np.shape(prediction) != img.shape[:2]:
        raise ValueError("masks must have the image's height and width")
    return np.concatenate([img, mask_rgb(truth, palette), mask_rgb(prediction, palette)], axis=1)


# --------------------------------------------------------------------------------- writing
def save_png(image: Image.Image, out_png: Path | str) -> Path:
    """Save a PIL image as PNG atomically (e.g. ``save_png(colorize(mask, pal), path)``)."""
    return atomic_write(out_png, lambda tmp: image.save(tmp, format="PNG"))


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (its PNG output goes through the Agg renderer)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_figure(fig: Figure, out_png: Path | str) -> Path:
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))


# ----------------------------------------------------------------------------------- plots
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_eval(record: Mapping[str, Any]) -> bool:
    """Evaluation records carry a split other than "train"; training records carry none."""
    split = record.get("split")
    return split is not None and split != "train"


def _series_for_key(
    records: Sequence[Mapping[str, Any]], key: str
) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """Collect ``(x, value)`` points of ``key`` per split and choose the x axis.

    Every panel of a run shares one x axis, the optimiser ``step``, whenever the records carry
    steps: training records at their step, evaluation records at theirs, or (an evaluation
    record without a ``step``) at the last training step of its epoch. Only records without any
    step fall back to ``epoch``.
    """
    train = [r for r in records if not _is_eval(r) and _is_number(r.get(key))]
    evals = [r for r in records if _is_eval(r) and _is_number(r.get(key))]
    lines: dict[str, list[tuple[float, float]]] = {}
    train_ids = {id(r) for r in train}
    if train or any(_is_number(r.get("step")) for r in records):
        x_name = "step"
        end_of_epoch: dict[float, float] = {}
        for i, rec in enumerate(records):
            step, epoch = rec.get("step"), rec.get("epoch")
            if not _is_eval(rec) and _is_number(step) and _is_number(epoch):
                end_of_epoch[epoch] = max(end_of_epoch.get(epoch, step), step)
            if id(rec) in train_ids:
                x = step if _is_number(step) else i
                lines.setdefault("train", []).append((float(x), float(rec[key])))
        for rec in evals:
            x = rec.get("step", end_of_epoch.get(rec.get("epoch")))
            if _is_number(x):
                lines.setdefault(str(rec["split"]), []).append((float(x), float(rec[key])))
    else:
        x_name = "epoch"
        for i, rec in enumerate(evals):
            x = rec.get("epoch", i)
            if _is_number(x):
                lines.setdefault(str(rec["split"]), []).append((float(x), float(rec[key])))
    return x_name, lines


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    out_png: Path | str,
    keys: Sequence[str] | None = None,
) -> Path:
    """Plot a run's JSON-lines metrics, one panel per key.

    Every panel is drawn against the optimiser ``step``: training records (``{"step", "epoch",
    "loss", "lr", ...}`` with no ``split`` or ``split == "train"``) at their step, evaluation
    records (``{"step", "epoch", "split": "val", "miou", ...}``) at theirs, one line per split;
    an evaluation record without a ``step`` sits at the last training step of its epoch. Only
    records that carry no step at all are drawn against ``epoch``. The default keys ``("loss",
    "miou")`` give train loss and val mIoU, both against the step. A key
    with no finite values shows a "no data" panel instead of failing, so a run that has not
    evaluated yet still plots.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.ticker import MaxNLocator

    keys = list(keys) if keys is not None else ["loss", "miou"]
    if not keys:
        raise ValueError("plot_curves needs at least one key")
    fig = _new_figure(5.0 * len(keys), 3.6)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        x_name, lines = _series_for_key(records, key)
        for label, points in lines.items():
            points.sort()
            xs, ys = zip(*points, strict=True)
            marker = None if label == "train" and len(points) >= 30 else "o"
            ax.plot(xs, ys, marker=marker, markersize=4, linewidth=1.3, label=label)
        if lines:
            ax.set_xlabel(x_name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if len(lines) > 1 or next(iter(lines)) != "train":
                ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    return _save_figure(fig, out_png)


def plot_confusion(
    matrix: np.ndarray | Any,
    class_names: Sequence[str],
    out_png: Path | str,
    normalize: bool = True,
) -> Path:
    """Draw a confusion matrix (rows = ground truth, columns = prediction) as a heat map.

    With ``normalize`` each row is divided by its sum, so the diagonal shows per-class recall
    (rows with no pixels stay 0). Cells are annotated when there are at most 20 classes.
    """
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    n = counts.shape[0]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}-class confusion matrix")
    if normalize:
        rows = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    else:
        values = counts
    side = min(max(4.0, 0.55 * n + 2.5), 16.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if n <= _MAX_ANNOTATED_CLASSES:
        for (i, j), v in np.ndenumerate(values):
            text = f"{v:.2f}" if normalize else f"{int(v)}"
            colour = "white" if v > 0.6 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)
    return _save_figure(fig, out_png)


def plot_lines(
    series: Mapping[str, Sequence[tuple[float, float]]],
    out_png: Path | str,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> Path:
    """Generic line chart, one line per named series of ``(x, y)`` or ``(x, y, err)`` points.

    Used for example for mIoU vs number of labelled images, one line per method (``err``: the
    std over seeds, drawn as error bars). Points are sorted by ``x``; ``logx`` uses a logarithmic
    x axis (label budgets often double).
    """
    if not series:
        raise ValueError("plot_lines needs at least one series")
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, points in series.items():
        pts = sorted((float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else 0.0)
                     for p in points)
        if not pts:
            continue
        xs, ys, errs = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", markersize=4,
                    linewidth=1.5, capsize=3, label=str(name))
    if logx:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ticks = sorted({float(p[0]) for points in series.values() for p in points if p[0] > 0})
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return _save_figure(fig, out_png)
