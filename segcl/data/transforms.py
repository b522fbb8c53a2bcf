"""Joint image + mask transforms: NumPy/OpenCV in, torch tensors out.

Every random transform takes an explicit ``np.random.Generator`` so augmentation is reproducible
and independent of how samples are spread over DataLoader workers. Each transform class says
what it returns through ``keys`` (the dataset zips them with the outputs) and whether it uses the
mask through ``needs_mask``.

Images are ``HxWx3`` uint8 RGB arrays; masks are ``HxW`` integer class-index arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from segcl.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# argument checks


def _check_size(size: Sequence[int], name: str = "size") -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
        or min(size) < 1
    ):
        raise ConfigError(f"{name} must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _check_range(
    r: Sequence[float], name: str, low: float = 0.0, high: float = math.inf
) -> tuple[float, float]:
    if (
        not isinstance(r, (tuple, list))
        or len(r) != 2
        or not low < float(r[0]) <= float(r[1]) <= high
    ):
        raise ConfigError(f"{name} must be (min, max) with {low} < min <= max <= {high}, got {r!r}")
    return float(r[0]), float(r[1])


def _check_nonneg(value: float, name: str, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ConfigError(f"{name} must be a number in [0, {high}], got {value!r}")
    return float(value)


def _check_mask(image: np.ndarray, mask: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")


# --------------------------------------------------------------------------------------------
# building blocks


def to_tensor(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``HxWx3`` uint8 image -> ``3xHxW`` float32 tensor, scaled to [0, 1] and normalised."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    # (converted in NumPy: a fresh writable float32 array, also for read-only cached images)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    m, s = _normalisation(mean, std)
    return x.sub_(m).div_(s).contiguous()


def to_tensor_batch(
    images: Sequence[np.ndarray],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Same-size ``HxWx3`` uint8 images -> one ``Bx3xHxW`` float32 batch, equal value for value
    to stacking :func:`to_tensor` of each image.

    One uint8 copy (the stack) and one pass that converts, reorders to channels-first and
    normalises; no per-image tensors. ``segcl predict`` keeps images uint8 until this call in
    its main thread, so its reader threads run no torch operations (each thread that does
    starts an OpenMP team of its own, which competes with the model's threads for the cores).
    """
    if not images:
        raise ValueError("to_tensor_batch needs at least one image")
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected HxWx3 images, got shape {image.shape}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    m, s = _normalisation(mean, std)
    return x.sub_(m).div_(s)


def _normalisation(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(3, 1, 1)`` float32 mean and std on the 0..255 scale (shared by the tensor converters,
    so that they compute the same values)."""
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return m, s


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(mask, dtype=np.int64, order="C"))  # (a writable copy)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for a nearest-neighbour resize (pixel centres aligned)."""
    idx = ((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


@dataclass(frozen=True)
class _Geometry:
    """One random scale + crop/pad + flip, shared by an image, its mask and its copies."""

    resized: tuple[int, int]  # (h, w) of the scaled image
    top: int  # window origin in scaled coordinates; negative = padding before the image
    left: int
    out: tuple[int, int]  # (h, w) of the output
    flip: bool

    @staticmethod
    def sample(
        shape: tuple[int, int],
        size: tuple[int, int],
        scale: tuple[float, float],
        hflip: bool,
        rng: np.random.Generator,
    ) -> _Geometry:
        h, w = shape
        th, tw = size
        factor = max(th / h, tw / w) * rng.uniform(scale[0], scale[1])
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        top = _offset(nh, th, rng)
        left = _offset(nw, tw, rng)
        flip = bool(hflip and rng.random() < 0.5)
        return _Geometry((nh, nw), top, left, size, flip)

    def window(self) -> tuple[slice, slice, int, int]:
        """Rows/cols of the scaled image inside the output, and where they land in it."""
        (nh, nw), (th, tw) = self.resized, self.out
        y0, y1 = max(0, self.top), min(nh, self.top + th)
        x0, x1 = max(0, self.left), min(nw, self.left + tw)
        return slice(y0, y1), slice(x0, x1), y0 - self.top, x0 - self.left

    def crop_image(self, image: np.ndarray) -> np.ndarray:
        rows, cols, _, _ = self.window()
        return _resize_image(image, *self.resized)[rows, cols]

    def crop_mask(self, mask: np.ndarray) -> np.ndarray:
        rows, cols, _, _ = self.window()
        r = _nearest_index(mask.shape[0], self.resized[0])[rows]
        c = _nearest_index(mask.shape[1], self.resized[1])[cols]
        return mask[r[:, None], c[None, :]]

    def paste(self, crop: np.ndarray, fill: int, dtype: type) -> np.ndarray:
        """Place a crop on a ``fill`` canvas of the output size, then flip if drawn."""
        _, _, dy, dx = self.window()
        canvas = np.full(self.out + crop.shape[2:], fill, dtype=dtype)
        canvas[dy : dy + crop.shape[0], dx : dx + crop.shape[1]] = crop
        if self.flip:
            canvas = canvas[:, ::-1]
        return np.ascontiguousarray(canvas)


def _offset(n: int, target: int, rng: np.random.Generator) -> int:
    d = n - target
    return int(rng.integers(min(0, d), max(0, d) + 1))


def _gray(x: np.ndarray) -> np.ndarray:
    """Luma of a float ``HxWx3`` RGB array, shape ``HxWx1``."""
    return (x @ _GRAY_WEIGHTS)[..., None]


def _brightness_contrast(
    image: np.ndarray, brightness: float, contrast: float, rng: np.random.Generator
) -> np.ndarray:
    if brightness <= 0 and contrast <= 0:
        return image
    x = image.astype(np.float32)
    if brightness > 0:
        x *= rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    if contrast > 0:
        m = float(_gray(x).mean())
        x = (x - m) * rng.uniform(max(0.0, 1 - contrast), 1 + contrast) + m
    return _to_uint8(x)


class ColorDistortion:
    """SimCLR colour distortion of a uint8 ``HxWx3`` RGB image.

    With probability ``p_jitter``: brightness, contrast, saturation (each a factor drawn from
    ``[1 - 0.8 s, 1 + 0.8 s]``) and hue (shift in ``[-0.2 s, 0.2 s]`` of the colour circle) in a
    random order; then grayscale with probability ``p_gray``; then, when ``blur``, a Gaussian
    blur (sigma in [0.1, 2.0], kernel 10% of the shorter side) with probability ``p_blur``.
    ``s = strength``; SimCLR uses 0.5 for ImageNet. ``hue`` overrides the hue range ``0.2 s``.
    ``strength=0`` disables every distortion (the image is returned unchanged).
    """

    def __init__(
        self,
        strength: float = 0.5,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        p_blur: float = 0.5,
        blur: bool = True,
        hue: float | None = None,
    ) -> None:
        self.strength = _check_nonneg(strength, "colour distortion strength")
        self.p_jitter = _check_nonneg(p_jitter, "p_jitter", 1.0)
        self.p_gray = _check_nonneg(p_gray, "p_gray", 1.0)
        self.p_blur = _check_nonneg(p_blur, "p_blur", 1.0)
        self.blur = bool(blur)
        self.jitter = 0.8 * self.strength
        self.hue = min(0.2 * self.strength, 0.5) if hue is None else _check_nonneg(hue, "hue", 0.5)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.strength == 0:
            return image
        x = image.astype(np.float32) / 255.0
        if rng.random() < self.p_jitter:
            for op in rng.permutation(4):
                x = self._jitter(x, int(op), rng)
        if rng.random() < self.p_gray:
            x = np.repeat(_gray(x), 3, axis=2)
        if self.blur and rng.random() < self.p_blur:
            sigma = rng.uniform(0.1, 2.0)
            k = max(3, int(0.1 * min(x.shape[:2])) // 2 * 2 + 1)
            x = cv2.GaussianBlur(x, (k, k), sigma)
        return _to_uint8(x * 255.0)

    def _jitter(self, x: np.ndarray, op: int, rng: np.random.Generator) -> np.ndarray:
        """One of brightness (0), contrast (1), saturation (2), hue (3); ``x`` in [0, 1]."""
        if op == 3:
            shift = rng.uniform(-self.hue, self.hue)
            hsv = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0] + 360.0 * shift) % 360.0
            return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)
        f = rng.uniform(max(0.0, 1 - self.jitter), 1 + self.jitter)
        if op == 0:
            return np.clip(x * f, 0.0, 1.0)
        target = float(_gray(x).mean()) if op == 1 else _gray(x)
        return np.clip((x - target) * f + target, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# transforms used by the datasets


class TrainTransform:
    """Supervised training augmentation of an image and its mask.

    The image is resized so that it covers ``size * s`` (``s`` drawn from ``scale``), a window of
    ``size`` is cut at random (padding with zeros / ``ignore_index`` where the scaled image is
    smaller), then flipped horizontally with probability 0.5 when ``hflip``, then brightness and
    contrast are jittered by factors in ``[1 - b, 1 + b]`` / ``[1 - c, 1 + c]``. The image is
    resized bilinearly, the mask by nearest neighbour.

    Returns ``(image, mask)``: a ``3xHxW`` float32 tensor and an ``HxW`` int64 tensor (all
    ``ignore_index`` when ``mask`` is None).
    """

    keys = ("image", "mask")
    needs_mask = True

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        brightness: float = 0.0,
        contrast: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
    ) -> None:
        self.size = _check_size(size)
        self.scale = _check_range(scale, "scale")
        self.hflip = bool(hflip)
        self.brightness = _check_nonneg(brightness, "brightness")
        self.contrast = _check_nonneg(contrast, "contrast")
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_mask(image, mask)
        geo = _Geometry.sample(image.shape[:2], self.size, self.scale, self.hflip, rng)
        crop = _brightness_contrast(geo.crop_image(image), self.brightness, self.contrast, rng)
        out_image = geo.paste(crop, 0, np.uint8)
        if mask is None:
            out_mask = np.full(self.size, self.ignore_index, dtype=np.int64)
        else:
            out_mask = geo.paste(geo.crop_mask(mask), self.ignore_index, np.int64)
        return to_tensor(out_image, self.mean, self.std), _mask_tensor(out_mask)


class EvalTransform:
    """Evaluation: resize the image (bilinear) to ``size`` when given; keep the mask as it is.

    Metrics are computed at the mask's full resolution after upsampling the logits, so the mask
    is never resized. Returns ``(image, mask)``; ``mask`` is None when none is given.
    """

    keys = ("image", "mask")
    needs_mask = True

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = None if size is None else _check_size(size)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _check_mask(image, mask)
        image = self.resize(image)
        return to_tensor(image, self.mean, self.std), None if mask is None else _mask_tensor(mask)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The uint8 image resized to ``size`` (unchanged without one): the network input
        before :func:`to_tensor` / :func:`to_tensor_batch`."""
        return image if self.size is None else _resize_image(image, *self.size)


class TwoViewTransform:
    """SimCLR views: two independent random resized crops (area share in ``crop_scale``, aspect
    ratio in ``ratio``), each resized to ``size``, flipped with probability 0.5 and colour
    distorted (:class:`ColorDistortion` with ``strength``). The mask is not used.

    Returns ``(view1, view2)``, two ``3xHxW`` float32 tensors.
    """

    keys = ("view1", "view2")
    needs_mask = False

    def __init__(
        self,
        size: tuple[int, int],
        crop_scale: tuple[float, float] = (0.2, 1.0),
        strength: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        self.size = _check_size(size)
        self.crop_scale = _check_range(crop_scale, "crop_scale", 0.0, 1.0)
        self.ratio = _check_range(ratio, "ratio")
        self.hflip = bool(hflip)
        self.distort = ColorDistortion(strength)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_mask(image, mask)
        return self._view(image, rng), self._view(image, rng)

    def _view(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        top, left, h, w = self._crop_box(image.shape[:2], rng)
        view = _resize_image(image[top : top + h, left : left + w], *self.size)
        if self.hflip and rng.random() < 0.5:
            view = view[:, ::-1]
        return to_tensor(self.distort(np.ascontiguousarray(view), rng), self.mean, self.std)

    def _crop_box(
        self, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random crop; centre crop when ten draws do not fit."""
        h, w = shape
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = h * w * rng.uniform(*self.crop_scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        aspect = min(max(w / h, self.ratio[0]), self.ratio[1])
        if w / h < aspect:
            cw, ch = w, min(h, round(w / aspect))
        else:
            cw, ch = min(w, round(h * aspect)), h
        return (h - ch) // 2, (w - cw) // 2, ch, cw


class PairTransform:
    """An image and a colour-distorted copy with the SAME geometry (multi-scale / supervised
    pixel contrast): the :class:`TrainTransform` scale / crop / flip is drawn once and applied to
    image, copy and mask; only the copy goes through :class:`ColorDistortion` (``strength=0``
    makes the two images equal).

    Returns ``(image, image2, mask)``; the mask is all ``ignore_index`` when none is given.
    """

    keys = ("image", "image2", "mask")
    needs_mask = True

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        strength: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
        hflip: bool = True,
    ) -> None:
        self.size = _check_size(size)
        self.scale = _check_range(scale, "scale")
        self.hflip = bool(hflip)
        self.distort = ColorDistortion(strength)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_mask(image, mask)
        geo = _Geometry.sample(image.shape[:2], self.size, self.scale, self.hflip, rng)
        crop = geo.crop_image(image)
        first = geo.paste(crop, 0, np.uint8)
        second = geo.paste(self.distort(crop, rng), 0, np.uint8)
        if mask is None:
            out_mask = np.full(self.size, self.ignore_index, dtype=np.int64)
        else:
            out_mask = geo.paste(geo.crop_mask(mask), self.ignore_index, np.int64)
        return (
            to_tensor(first, self.mean, self.std),
            to_tensor(second, self.mean, self.std),
            _mask_tensor(out_mask),
        )


def cutmix_box(
    size: tuple[int, int], p: float, rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 0.4), aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> np.ndarray:
    """A random CutMix rectangle as an ``HxW`` bool array (all False with probability ``1 - p``).

    The box covers a fraction ``U(area)`` of the image with height/width ratio ``U(aspect)``
    (clipped to the image) at a uniform position -- UniMatch's sampling (Yang et al. 2023).
    """
    h, w = size
    box = np.zeros(size, dtype=bool)
    if rng.random() >= p:
        return box
    a = rng.uniform(*area) * h * w
    r = rng.uniform(*aspect)
    bh, bw = min(h, max(1, round(math.sqrt(a * r)))), min(w, max(1, round(math.sqrt(a / r))))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    box[top : top + bh, left : left + bw] = True
    return box


class WeakStrongTransform:
    """Views of an UNLABELLED image for online semi-supervised training (FixMatch / UniMatch).

    One geometry (the :class:`TrainTransform` scale, crop and flip) is drawn and shared by every
    view, so that a pixel of the weak view and of each strong view is the same scene point:

    - ``image``: the weak view (geometry only), from which pseudo-labels are predicted;
    - ``strong1`` ... ``strongK``: independent colour distortions of the same crop
      (:class:`ColorDistortion`: jitter 0.5/0.5/0.5/0.25 with p 0.8, grayscale p 0.2, Gaussian blur
      p 0.5 -- UniMatch's strong augmentation);
    - ``box1`` ... ``boxK``: one CutMix rectangle per strong view (:func:`cutmix_box`, applied
      with probability ``cutmix``); the training step pastes that region from another
      unlabelled image of the batch, and mixes the pseudo-labels the same way;
    - ``valid``: ``HxW`` bool, False where the crop is padding (no pseudo-label there).

    Drawing the boxes here, from the sample's generator, keeps the whole unlabelled branch a
    function of ``(seed, epoch, index)``.
    """

    needs_mask = False

    def __init__(
        self,
        size: tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        strong_views: int = 2,
        cutmix: float = 0.5,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = _check_size(size)
        self.scale = _check_range(scale, "scale")
        if not isinstance(strong_views, int) or strong_views < 1:
            raise ConfigError(f"strong_views must be a positive integer, got {strong_views!r}")
        self.strong_views = strong_views
        self.cutmix = _check_nonneg(cutmix, "cutmix probability", 1.0)
        self.hflip = bool(hflip)
        self.distort = ColorDistortion(strength=0.625, hue=0.25)  # 0.8 * 0.625 = 0.5
        self.mean, self.std = tuple(mean), tuple(std)
        views = range(1, strong_views + 1)
        self.keys = ("image", *(f"strong{k}" for k in views), *(f"box{k}" for k in views),
                     "valid")

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[torch.Tensor, ...]:
        _check_mask(image, mask)
        geo = _Geometry.sample(image.shape[:2], self.size, self.scale, self.hflip, rng)
        crop = geo.crop_image(image)
        weak = to_tensor(geo.paste(crop, 0, np.uint8), self.mean, self.std)
        strong = [to_tensor(geo.paste(self.distort(crop, rng), 0, np.uint8), self.mean, self.std)
                  for _ in range(self.strong_views)]
        boxes = [torch.from_numpy(cutmix_box(self.size, self.cutmix, rng))
                 for _ in range(self.strong_views)]
        valid = geo.paste(np.ones(crop.shape[:2], dtype=bool), 0, bool)
        return (weak, *strong, *boxes, torch.from_numpy(valid))
