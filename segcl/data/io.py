"""Reading images and class-index masks, writing masks, and finding images to predict on."""

from __future__ import annotations

import io
import os
import threading
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segcl.errors import DataError
from segcl.fileio import atomic_write

# segcl parallelises over images (DataLoader workers, reader threads), never inside one OpenCV
# call. OpenCV's own thread pool also deadlocks in DataLoader workers forked after it started.
cv2.setNumThreads(0)

_POOL: tuple[int, ThreadPoolExecutor] | None = None


def reader_pool() -> ThreadPoolExecutor:
    """This process's threads for decoding many images at once (validation, the cache).

    The threads live as long as the process. Threads that used OpenCV must not end just before
    a fork: a thread that ends cleans up OpenCV's thread-local storage under a global mutex, and
    a DataLoader worker forked at that moment inherits the mutex locked and hangs at its first
    OpenCV call (seen with ``segcl evaluate`` under load). A forked child gets a pool of its own.
    """
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        threads = min(8, os.cpu_count() or 1)
        _POOL = (os.getpid(), ThreadPoolExecutor(threads, thread_name_prefix="segcl-reader"))
    return _POOL[1]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: Pillow's PNG settings for masks: zlib's run-length strategy (``Z_RLE``: matches only with
#: the previous byte). A class mask is long runs of one value, which is what RLE encodes; the
#: default (level 6 with its search for longer matches) spends 3-4x the CPU time for files
#: about 20% smaller (CamVid masks, 480x360: 1.8 vs 0.5 ms, 5.2 vs 6.3 KiB). Lossless either
#: way: the decoded pixels and palette are the same. (With ``Z_RLE`` the level only matters at
#: 0, which stores without compressing.)
MASK_PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}

# PIL modes that hold one channel of integer class indices.
_INDEX_MODES = ("P", "L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")


#: OpenCV 4.11+ decodes straight to RGB: the same pixels as BGR + ``cvtColor`` (checked on
#: JPEG, PNG (8/16-bit, grey, RGBA), WebP, BMP and TIFF files), without the extra pass over the
#: image (about a tenth of a JPEG's decoding time)
_DECODE_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an ``HxWx3`` uint8 RGB array.

    Grayscale and 16-bit files are converted to 8-bit RGB by OpenCV. EXIF orientation is
    ignored (pixels as stored, like masks). Raises :class:`DataError` naming the file when it is
    missing, cannot be decoded, is a truncated JPEG (which OpenCV would silently decode with its
    missing part grey), or announces more than :func:`max_image_pixels` pixels.
    """
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):  # a pipe would block the read
        raise DataError(f"{path}: not a regular file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, IsADirectoryError):
        raise DataError(f"{path}: image not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err.strerror})") from None
    if data[:2].tobytes() == _JPEG_SOI and _JPEG_EOI not in data[-1024:].tobytes():
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    _check_pixels(path, data)
    # EXIF orientation is ignored: the pixels are used as stored, like the mask's (which PIL
    # never rotates), so an image and its mask always line up
    flags = (_DECODE_RGB or cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(data, flags) if data.size else None
    except cv2.error as err:  # OpenCV's own checks (its size limit, ...) raise assertions
        raise DataError(f"{path}: unreadable image ({str(err).strip().splitlines()[-1]})") \
            from None
    if image is None:
        raise DataError(f"{path}: unreadable image")
    return image if _DECODE_RGB else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def max_image_pixels() -> int:
    """The largest image (width x height) segcl decodes: ``SEGCL_MAX_IMAGE_PIXELS``, default
    2**28 (16384 x 16384)."""
    try:
        return int(os.environ.get("SEGCL_MAX_IMAGE_PIXELS", 1 << 28))
    except ValueError:
        return 1 << 28


#: ``warnings.catch_warnings`` swaps the process-wide filter list: reader threads entering and
#: leaving it at once could restore each other's "ignore" and silence every later warning
_WARNINGS_LOCK = threading.Lock()


def _check_pixels(path: Path, data: np.ndarray) -> None:
    """Refuse an image whose header announces more than :func:`max_image_pixels` pixels, before
    any decoder allocates them (a forged header must not abort a whole run)."""
    limit = max_image_pixels()
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own size warning: the limit here decides
            with Image.open(io.BytesIO(data.tobytes())) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError:
        size = "its header announces a size that"
    except Exception:  # a format PIL does not know: OpenCV decides
        return
    else:
        if w * h <= limit:
            return
        size = f"{w}x{h} pixels"
    raise DataError(f"{path}: {size} is more than the limit of {limit} pixels "
                    "(set SEGCL_MAX_IMAGE_PIXELS to raise it)")


# JPEG start/end-of-image markers; 0xFF is byte-stuffed inside entropy-coded data, so an EOI
# marker can only be a marker.
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def read_mask(path: str | Path) -> np.ndarray:
    """Read a class-index mask as an ``HxW`` integer array.

    Palette PNGs (VOC style) give their palette *indices*, not colours; 8-bit, 16-bit and
    32-bit single-channel images give their values. The result is uint8 when every value fits,
    else int32. An RGB file whose three channels are equal is read as its first channel; a true
    colour mask is rejected, because masks must hold class indices.

    Raises:
        DataError: naming the file, when it is missing, unreadable, or not index data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask not found")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            data = np.array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable mask ({e})") from e
    if mode in ("RGB", "RGBA") and data.ndim == 3:
        rgb = data[..., :3]
        if (rgb == rgb[..., :1]).all():
            data, mode = rgb[..., 0], "L"
        else:
            raise DataError(
                f"{path}: this is a colour (RGB) mask; masks must be class-index images "
                "(one channel, pixel value = class index, e.g. a grayscale or palette PNG)"
            )
    if mode not in _INDEX_MODES or data.ndim != 2:
        raise DataError(
            f"{path}: mask has image mode {mode!r}; masks must be single-channel class-index "
            "images (grayscale or palette PNG)"
        )
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.uint8:
        return data
    if data.size and data.min() < 0:
        raise DataError(f"{path}: mask has negative values; class indices must be >= 0")
    if data.size == 0 or data.max() <= 255:
        return data.astype(np.uint8)
    return data.astype(np.int32)


def write_mask(
    path: str | Path, mask: np.ndarray, palette: Sequence[tuple[int, int, int]] | None = None
) -> None:
    """Write an ``HxW`` class-index mask as PNG (atomically); a palette PNG when ``palette`` is
    given.

    With a palette the file still stores indices (:func:`read_mask` reads them back) but image
    viewers show the class colours. Values above 255 need ``palette=None`` (16-bit PNG).
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"{path}: mask to write must be HxW, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 65535):
        raise DataError(f"{path}: mask values must be in 0..65535 to be written as PNG")
    if mask.size == 0 or mask.max() <= 255:
        im = Image.fromarray(mask.astype(np.uint8))
        if palette is not None:
            flat = [int(v) for color in palette for v in color][: 256 * 3]
            im.putpalette(flat + [0] * (256 * 3 - len(flat)))  # "L" -> "P", indices kept
    else:
        if palette is not None:
            raise DataError(f"{path}: a palette PNG holds at most 256 labels")
        im = Image.fromarray(mask.astype(np.uint16))
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG", **MASK_PNG_OPTIONS))


def _folder_images(root: Path) -> list[Path]:
    """Image files below ``root`` (hidden ones skipped), sorted. Dangling symlinks with an image
    extension and sub-folders that cannot be listed are returned too, so that the caller's
    reader reports them as unreadable instead of skipping them silently."""
    out: list[Path] = []

    def unreadable(err: OSError) -> None:
        if err.filename:
            out.append(Path(err.filename))

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            f = Path(folder) / name
            if not name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
                out.append(f)  # a dangling link stays in: reading it reports it
    return sorted(out)


def find_images(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Collect the images named by files and folders, for prediction.

    Folders are searched recursively (hidden files and folders skipped), in sorted order; a
    dangling symlink or a sub-folder that cannot be listed is returned like an image, so that
    reading it reports the problem (``predict`` then exits with status 1).

    Returns:
        ``(file, output)`` pairs: ``output`` is the path to write results to, relative and
        without extension -- relative to the folder argument, or just the stem for a file.

    Raises:
        DataError: a path does not exist, two inputs would write the same output, or no image
            was found at all.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found.append((p, Path(p.stem)))
        elif p.is_dir():
            found += [(f, f.relative_to(p).with_suffix("")) for f in _folder_images(p)]
        else:
            raise DataError(f"{p}: no such file or folder")
    if not found:
        raise DataError(f"{', '.join(str(i) for i in inputs) or '(no inputs)'}: no images found")
    seen: dict[Path, Path] = {}
    for file, out in found:
        if out in seen:
            raise DataError(
                f"{file}: would write the same output '{out}' as {seen[out]}; "
                "predict them in separate runs or rename one"
            )
        seen[out] = file
    return found
