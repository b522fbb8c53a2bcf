"""Job configurations: dataclasses with documented defaults and a YAML round trip.

The CLI builds one of these from its flags and hands it to the library; a run directory keeps the
effective configuration as ``config.yaml`` so the run can be inspected, repeated and resumed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from segcl.errors import ConfigError
from segcl.fileio import read_yaml

T = TypeVar("T")

#: ``finetune --loss``: the labelled images' loss (:mod:`segcl.losses.segmentation`)
SUPERVISED_LOSSES = ("ce", "dice", "focal", "ce+dice")
#: ``--logger``: where the scalars (and validation previews) go (:mod:`segcl.loggers`). ``jsonl``
#: (the run's ``metrics.jsonl``) is always written: ``--resume`` and the plots read it.
LOGGERS = ("jsonl", "tensorboard", "mlflow", "wandb")
#: ``--decoder``: the names of :data:`segcl.models.DECODERS` (kept here so that a config is
#: checked without importing torch; tests/test_decoders.py keeps the two equal)
DECODER_NAMES = ("unet", "deeplabv3plus", "fpn", "segformer")
#: ``--layout``: the dataset layouts :func:`segcl.data.load_samples` reads
LAYOUTS = ("auto", "folder", "camvid", "voc", "cityscapes", "pet")
#: ``--mode``: the inference policies for image sizes (:mod:`segcl.engine.inference`)
EVAL_MODES = ("resize", "slide")
#: ``--optimizer`` (:func:`segcl.engine.optim.build_optimizer`)
OPTIMIZERS = ("sgd", "adamw")
#: ``--init-parts``: what ``finetune --init`` takes from the checkpoint
INIT_PARTS = ("auto", "encoder", "all")
#: ``pretrain --losses``: the contrastive terms (:mod:`segcl.methods.terms`)
PRETRAIN_LOSSES = ("global", "local", "pixel")
#: ``pretrain --variant``: pixel contrast per image or over the batch
#: (:class:`segcl.losses.PixelContrastLoss`)
PIXEL_VARIANTS = ("single", "batch")
#: ``--cache``: the decoded-image cache settings
CACHE_MODES = ("auto", "on", "off")


def _pretrain_methods() -> tuple[str, ...]:
    """``pretrain --method``: the registered pre-training methods, looked up on use (the
    registry imports no torch, and importing the configuration never imports the methods)."""
    from segcl.methods import names

    return names("pretrain")


#: Fields that are tuples even where their default is ``None`` (YAML stores lists).
TUPLE_FIELDS = ("image_size", "scale", "grid", "crop_scale")

#: The value checks of every numeric field, by config class and field: ``positive`` (> 0),
#: ``nonneg`` (>= 0), ``fraction`` (0 < x <= 1), ``probability`` (0 <= x <= 1), ``below1``
#: (0 <= x < 1), ``size`` (two positive integers) or ``device`` (:func:`check_device`).
#: ``None`` always passes (= unset). Every config checks itself on construction
#: (:func:`check_fields`), so flags, config.yaml files and Python callers all get the same
#: one-line :class:`ConfigError` naming the option.
CHECKS: dict[str, dict[str, str]] = {
    "DataConfig": {"image_size": "size", "labeled_fraction": "fraction",
                   "labeled_count": "positive", "workers": "nonneg"},
    "OptimConfig": {"lr": "positive", "momentum": "below1", "weight_decay": "nonneg",
                    "warmup_steps": "nonneg", "min_lr_ratio": "probability",
                    "grad_clip": "positive"},
    "ContrastConfig": {"weight": "nonneg", "temperature": "positive",
                       "base_temperature": "positive", "max_samples": "positive",
                       "max_views": "positive", "memory_size": "positive",
                       "warmup_steps": "nonneg", "dim": "positive"},
    "SemiConfig": {"threshold": "below1", "weight": "nonneg", "strong_views": "positive",
                   "cutmix": "probability", "warmup_steps": "nonneg", "batch_size": "positive",
                   "threshold_momentum": "below1"},
    "FinetuneConfig": {"epochs": "positive", "steps": "positive", "batch_size": "positive",
                       "val_every": "positive", "log_every": "positive",
                       "pseudo_threshold": "probability",
                       "pseudo_background_threshold": "probability",
                       "brightness": "nonneg", "contrast_jitter": "nonneg", "seed": "nonneg",
                       "patience": "nonneg", "log_images": "nonneg", "ema": "below1",
                       "device": "device"},
    "LossConfig": {"focal_gamma": "nonneg", "ohem_threshold": "probability",
                   "ohem_min_kept": "nonneg"},
    "PretrainConfig": {"epochs": "positive", "steps": "positive", "batch_size": "positive",
                       "temperature": "positive", "grid": "size", "max_pixels": "positive",
                       "local_grid": "positive", "proj_dim": "positive", "pixel_dim": "positive",
                       "queue_size": "positive", "key_momentum": "below1",
                       "strength": "nonneg", "pseudo_threshold": "probability",
                       "pseudo_background_threshold": "probability", "log_every": "positive",
                       "save_every_s": "positive", "seed": "nonneg", "device": "device"},
    "ExportConfig": {"check_count": "positive", "max_diff": "positive", "batch_size": "positive"},
}

#: where ``--semi`` takes its pseudo-labels from (SemiConfig.teacher)
SEMI_TEACHERS = ("student", "ema")

#: how ``--semi`` decides which pseudo-labels count (SemiConfig.threshold_mode): one fixed
#: confidence threshold, or FreeMatch's self-adaptive class-wise thresholds
SEMI_THRESHOLD_MODES = ("fixed", "adaptive")

#: Fields whose value is one name from a vocabulary (for a list field: each item); a function
#: gives a vocabulary that is looked up when checked (a registry). The CLI's choice options are
#: checked against the same table as they are parsed (:func:`check_choice`, used by
#: ``segcl.cli.options``), so an unknown name fails before torch is imported.
CHOICES: dict[str, dict[str, tuple[str, ...] | Callable[[], tuple[str, ...]]]] = {
    "DataConfig": {"layout": LAYOUTS, "cache": CACHE_MODES},
    "OptimConfig": {"name": OPTIMIZERS},
    "LossConfig": {"name": SUPERVISED_LOSSES},
    "FinetuneConfig": {"loggers": LOGGERS, "decoder": DECODER_NAMES, "init_parts": INIT_PARTS,
                       "eval_mode": EVAL_MODES},
    "SemiConfig": {"teacher": SEMI_TEACHERS, "threshold_mode": SEMI_THRESHOLD_MODES},
    "PretrainConfig": {"loggers": LOGGERS, "method": _pretrain_methods,
                       "decoder": DECODER_NAMES, "losses": PRETRAIN_LOSSES,
                       "variant": PIXEL_VARIANTS, "eval_mode": EVAL_MODES},
}

#: CLI spellings that differ from ``--field-name``
OPTION_NAMES = {"LossConfig.name": "--loss", "FinetuneConfig.loggers": "--logger",
                "PretrainConfig.loggers": "--logger", "OptimConfig.name": "--optimizer",
                "FinetuneConfig.eval_mode": "--mode",
                "SemiConfig.threshold": "--semi-threshold", "SemiConfig.weight": "--semi-weight",
                "SemiConfig.strong_views": "--semi-views", "SemiConfig.cutmix": "--semi-cutmix",
                "SemiConfig.warmup_steps": "--semi-warmup",
                "SemiConfig.batch_size": "--unlabeled-batch-size",
                "SemiConfig.teacher": "--semi-teacher",
                "SemiConfig.threshold_mode": "--semi-threshold-mode",
                "SemiConfig.threshold_momentum": "--semi-threshold-momentum",
                "ContrastConfig.weight": "--contrast-weight",
                "ContrastConfig.warmup_steps": "--contrast-warmup",
                "ContrastConfig.temperature": "--contrast-temperature"}

_RULES = {
    "positive": ("> 0", lambda v: v > 0),
    "nonneg": (">= 0", lambda v: v >= 0),
    "fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
    "probability": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "below1": ("in [0, 1)", lambda v: 0 <= v < 1),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_every(spec: str | None) -> tuple[int | None, float | None]:
    """``"500"`` -> (500, None); ``"90s"`` -> (None, 90.0); ``None`` -> (None, None)."""
    if spec is None:
        return None, None
    text = str(spec).strip().lower()
    try:
        if text.endswith("s"):
            seconds = float(text[:-1])
            if seconds > 0 and math.isfinite(seconds):
                return None, seconds
        else:
            steps = int(text)
            if steps > 0:
                return steps, None
    except ValueError:
        pass
    raise ConfigError(f"--checkpoint-every must be a number of steps (500) or of seconds (90s), "
                      f"got {spec!r}")


#: the largest ``--tta`` scale (a typo such as ``scales=75`` should not exhaust the memory)
MAX_TTA_SCALE = 4.0
_TTA_HELP = "e.g. 'flip', 'scales=0.75,1,1.25' or 'flip,scales=0.75,1,1.25'"


@dataclass(frozen=True)
class TTAConfig:
    """Test-time augmentation: every view's softmax probabilities, averaged.

    Attributes:
        flip: also predict the horizontally flipped image (and flip the prediction back).
        scales: factors in ``(0, 4]`` the network input is resized by (bilinear) before the
            forward pass; each view's logits are resized back before the softmax. ``(1.0,)`` =
            no rescaling.

    Built from the ``--tta`` text by :meth:`parse`, which checks it (the only place that does).
    """

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        scales = tuple(self.scales)
        if not scales:
            raise ConfigError(f"--tta scales need at least one value ({_TTA_HELP})")
        for s in scales:
            if not _number(s) or not 0 < s <= MAX_TTA_SCALE:
                raise ConfigError(f"--tta scales must be numbers in (0, {MAX_TTA_SCALE:g}], "
                                  f"got {s!r} ({_TTA_HELP})")
        if len(set(scales)) != len(scales):
            raise ConfigError(f"--tta lists a scale twice: "
                              f"scales={','.join(f'{s:g}' for s in scales)}")
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))

    @property
    def views(self) -> int:
        """Forward passes per image (scales x flips)."""
        return len(self.scales) * (2 if self.flip else 1)

    def __str__(self) -> str:
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales=" + ",".join(f"{s:g}" for s in self.scales))
        return ",".join(parts) or "none"

    @property
    def identity(self) -> bool:
        """One view of the image as it is: the same as no test-time augmentation."""
        return not self.flip and self.scales == (1.0,)

    @classmethod
    def parse(cls, spec: str | TTAConfig | None) -> TTAConfig | None:
        """``--tta`` text -> config; ``None``, ``"none"`` and ``"scales=1"`` -> None (off).

        Grammar (case-insensitive, comma-separated): ``flip`` and/or ``scales=S1,S2,...``; the
        numbers after ``scales=`` run up to the next word. ``"flip,scales=0.75,1,1.25"`` gives
        six views.

        Raises:
            ConfigError: one line naming ``--tta``, the bad part and an example.
        """
        if spec is None or isinstance(spec, TTAConfig):
            return None if spec is None or spec.identity else spec
        text = re.sub(r"\s*=\s*", "=", str(spec).strip().lower())
        if text == "none":
            return None
        flip, scales, in_scales = False, None, False
        for raw in text.split(","):
            token = raw.strip()
            if not token:
                raise ConfigError(f"--tta has an empty part in {spec!r} ({_TTA_HELP})")
            if token == "flip" or token.startswith("scales="):
                if (flip if token == "flip" else scales is not None):
                    raise ConfigError(f"--tta repeats {token.split('=')[0]!r} in {spec!r}")
                if token == "flip":
                    flip, in_scales = True, False
                else:
                    scales, in_scales = [], True
                    token = token[len("scales="):].strip()
                    if token:
                        scales.append(_tta_number(token, spec))
            elif in_scales:
                scales.append(_tta_number(token, spec))  # type: ignore[union-attr]
            else:
                raise ConfigError(f"--tta has an unknown part {token!r} in {spec!r} "
                                  f"({_TTA_HELP})")
        return cls.parse(cls(flip=flip, scales=(1.0,) if scales is None else tuple(scales)))


def _tta_number(token: str, spec: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise ConfigError(f"--tta has an unknown part {token!r} in {spec!r} ({_TTA_HELP})") \
            from None


def check_choice(key: str, value: Any) -> None:
    """Check ``value`` (each item of a list) against the vocabulary of ``key``
    (``"Class.field"`` in :data:`CHOICES`); ConfigError naming the option and the choices."""
    cls, name = key.split(".")
    allowed = CHOICES[cls][name]
    allowed = allowed() if callable(allowed) else allowed
    option = OPTION_NAMES.get(key, "--" + name.replace("_", "-"))
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item not in allowed:
            raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {item!r}")


def _check_choices(cfg: Any) -> None:
    cls = type(cfg).__name__
    for name in CHOICES.get(cls, {}):
        check_choice(f"{cls}.{name}", getattr(cfg, name))


def check_fields(cfg: Any) -> None:
    """Check ``cfg``'s numeric fields against :data:`CHECKS` and its names against
    :data:`CHOICES` (ConfigError naming the option)."""
    _check_choices(cfg)
    cls = type(cfg).__name__
    for name, rule in CHECKS.get(cls, {}).items():
        value = getattr(cfg, name)
        if value is None:
            continue
        option = OPTION_NAMES.get(f"{cls}.{name}", "--" + name.replace("_", "-"))
        if rule == "device":
            check_device(value)
            continue
        if rule == "size":
            ok = (isinstance(value, (tuple, list)) and len(value) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                          for v in value))
            if not ok:
                shown = "x".join(map(str, value)) if isinstance(value, (tuple, list)) else value
                raise ConfigError(f"{option} must be HxW with two positive integers, got {shown}")
            continue
        text, test = _RULES[rule]
        if not _number(value) or not test(value):
            raise ConfigError(f"{option} must be a number {text}, got {value!r}")


#: ``--device``: ``auto`` or a device spelled the way torch names it; whether it exists here
#: (CUDA available, index in range) is checked when the run opens it
DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def check_device(value: str) -> None:
    """``--device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu[:N]``."""
    if not DEVICE.fullmatch(value):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N, mps or xpu[:N], "
                          f"got {value!r}")


def check_encoder_weights(encoder: str, weights: str | None) -> None:
    """``--encoder-weights imagenet[:TAG]`` must name weights timm has for ``--encoder``
    (timm's registry, no network); files and Hub references are checked when loaded."""
    if weights is None:
        return
    from segcl.models.weights import timm_pretrained_name, timm_tag

    if timm_tag(weights) is not None:
        timm_pretrained_name(encoder, weights)


@dataclass
class DataConfig:
    """Where the images are and how they are read.

    Attributes:
        root: dataset folder (see ``segcl.data.load_samples`` for the known layouts).
        layout: ``auto``, ``folder``, ``camvid``, ``voc``, ``cityscapes`` or ``pet``.
        train_split / val_split: split names inside ``root``.
        image_size: (height, width) the model sees during training and inference.
        labeled_fraction / labeled_count: a deterministic, nested labelled subset of the
            training split (``--seed`` picks it); both unset means all labels.
        classes / ignore_index: override or supply the class description.
        workers: DataLoader worker processes.
        unlabeled: extra unlabelled images (a folder) for the semi-supervised stage.
        cache: keep the decoded images in memory (``on``), read them from disk every time
            (``off``), or cache the datasets whose decoded size fits a memory bound (``auto``,
            see :func:`segcl.data.cache.should_cache`). Results are identical either way.
    """

    root: str = ""
    layout: str = "auto"
    train_split: str = "train"
    val_split: str = "val"
    image_size: tuple[int, int] = (192, 256)
    labeled_fraction: float | None = None
    labeled_count: int | None = None
    classes: list[str] | None = None
    ignore_index: int | None = None
    workers: int = 2
    unlabeled: str | None = None
    cache: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.labeled_fraction is not None and self.labeled_count is not None:
            raise ConfigError("--labeled-fraction and --labeled-count exclude each other "
                              "(give one)")


@dataclass
class OptimConfig:
    """Optimiser and schedule: SGD (momentum) or AdamW, linear warm-up then cosine decay."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ContrastConfig:
    """Cross-image pixel contrast as an auxiliary fine-tuning loss (Wang et al., ICCV 2021)."""

    enabled: bool = False
    weight: float = 0.1
    temperature: float = 0.1
    base_temperature: float = 0.07
    max_samples: int = 1024
    max_views: int = 100
    memory_bank: bool = False
    memory_size: int = 5000
    warmup_steps: int = 0
    dim: int = 256

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SemiConfig:
    """Online semi-supervised fine-tuning on the unlabelled images (UniMatch / FixMatch).

    Attributes:
        enabled: train on an unlabelled batch next to every labelled batch.
        threshold: confidence above which a weak-view prediction becomes a pseudo-label (with
            ``threshold_mode`` ``adaptive``: the upper bound of the class thresholds).
        weight: weight of the unlabelled loss next to the supervised cross-entropy.
        strong_views: colour-distorted, CutMixed views per unlabelled image (UniMatch: 2).
        feature_perturbation: UniMatch's extra branch (dropout 0.5 on the encoder features of
            the weak view, trained to the same pseudo-labels).
        cutmix: probability of a CutMix box in each strong view.
        warmup_steps: supervised-only steps before the unlabelled loss starts.
        batch_size: unlabelled images per step and process (``None``: the labelled batch size).
        shared_forward: the weak views share the labelled images' forward pass and every
            forward updates the batch-norm running statistics (UniMatch); by default the
            unlabelled views have forwards of their own that leave those statistics alone.
        teacher: where the pseudo-labels come from: ``student`` (the model being trained, in
            training mode: UniMatch, FixMatch) or ``ema`` (the moving average of its weights
            in evaluation mode, a mean teacher; needs ``FinetuneConfig.ema``).
        threshold_mode: ``fixed`` (``threshold`` for every pixel) or ``adaptive`` (FreeMatch's
            self-adaptive class-wise thresholds, moving averages of the weak views'
            confidences, capped at ``threshold``; :class:`segcl.engine.semi.ClassThresholds`).
        threshold_momentum: momentum of those moving averages (FreeMatch: 0.999).
    """

    enabled: bool = False
    threshold: float = 0.95
    weight: float = 1.0
    strong_views: int = 2
    feature_perturbation: bool = True
    cutmix: float = 0.5
    warmup_steps: int = 0
    batch_size: int | None = None
    shared_forward: bool = False
    teacher: str = "student"
    threshold_mode: str = "fixed"
    threshold_momentum: float = 0.999

    def __post_init__(self) -> None:
        check_fields(self)


def _class_weights(value: Any) -> str | list[float] | None:
    """``None``, ``"auto"``, or one weight >= 0 per class (a list, or the flag's ``"1,2.5,1"``)."""
    if value is None or value == "auto":
        return value
    bad = ConfigError("--class-weights must be 'auto' or comma-separated numbers >= 0, one per "
                      f"class (not all 0), got {value!r}")
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise bad
    try:
        weights = [float(v) for v in items]
    except (TypeError, ValueError):
        raise bad from None
    if (any(isinstance(v, bool) for v in items) or not all(math.isfinite(w) and w >= 0
                                                           for w in weights)
            or not any(weights)):
        raise bad
    return weights


def _logger_list(value: Any) -> list[str]:
    """``--logger`` names as a list (``"jsonl,tensorboard"`` is split); ``jsonl`` always first."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    return ["jsonl", *dict.fromkeys(n for n in names if n != "jsonl")]


@dataclass
class LossConfig:
    """The supervised loss of ``segcl finetune`` on the labelled images
    (:class:`segcl.losses.SegmentationLoss`; the semi-supervised branch keeps cross-entropy on
    its pseudo-labels).

    Attributes:
        name: ``ce`` (cross-entropy), ``dice`` (soft Dice, Milletari et al. 2016), ``focal``
            (Lin et al. 2017) or ``ce+dice`` (their sum).
        class_weights: ``None`` (all 1), ``auto`` (median-frequency balancing over the labelled
            subset, as SegNet on CamVid) or one weight per class.
        ohem: online hard example mining on the pixel-wise term (Shrivastava et al. 2016): only
            the pixels whose true-class probability is below ``ohem_threshold`` count, and at
            least the ``ohem_min_kept`` hardest pixels per image (10000: about a fifth of a
            192x256 crop, the share of mmsegmentation's 100000 at 512x1024).
        focal_gamma: the focusing parameter ``gamma`` of the focal loss.
    """

    name: str = "ce"
    class_weights: str | list[float] | None = None
    ohem: bool = False
    ohem_threshold: float = 0.7
    ohem_min_kept: int = 10000
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        self.class_weights = _class_weights(self.class_weights)
        check_fields(self)
        if self.ohem and self.name == "dice":
            raise ConfigError("--ohem needs a pixel-wise loss (--loss ce, focal or ce+dice); "
                              "the Dice loss is one ratio over all pixels")


@dataclass
class FinetuneConfig:
    """``segcl finetune``: supervised training of encoder + decoder + classifier.

    ``loss`` is the labelled images' loss (:class:`LossConfig`, cross-entropy by default);
    ``loggers`` the places scalars go besides ``metrics.jsonl`` (:mod:`segcl.loggers`), which
    also get ``log_images`` fixed validation images with their predicted masks.
    ``patience``: early stopping -- stop after this many validations in a row without a higher
    val mIoU (``None`` or 0: off). ``best/`` keeps the best model either way.
    ``ema``: decay of an exponential moving average of the weights (:mod:`segcl.engine.ema`;
    ``None``: off); when set, the average is the model validated, kept and exported.
    """

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    out: str = "runs/finetune"
    encoder: str = "resnet18"
    decoder: str = "unet"
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None
    init: str | None = None
    init_parts: str = "auto"
    pseudo_labels: str | None = None
    pseudo_threshold: float = 0.8
    pseudo_background_threshold: float = 0.97
    background_class: int | None = None
    epochs: int = 30
    steps: int | None = None
    batch_size: int = 8
    val_every: int = 1
    eval_mode: str = "resize"
    scale: tuple[float, float] = (0.5, 2.0)
    brightness: float = 0.0
    contrast_jitter: float = 0.0
    amp: bool = True
    channels_last: bool = True
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    log_images: int = 4
    checkpoint_every: str | None = None
    patience: int | None = None
    ema: float | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        self.loggers = _logger_list(self.loggers)
        check_fields(self)
        if self.semi.teacher == "ema" and self.ema is None:
            raise ConfigError("--semi-teacher ema needs --ema DECAY (e.g. --ema 0.99)")
        parse_every(self.checkpoint_every)
        check_encoder_weights(self.encoder, self.encoder_weights)
        if self.init_parts != "auto" and not self.init:
            raise ConfigError("--init-parts needs --init (the checkpoint to take the parts from)")


def __getattr__(name: str) -> Any:
    # ``PRETRAIN_METHODS``: the registered pre-training methods (segcl.methods), looked up on
    # use so that importing the configuration never imports the methods.
    if name == "PRETRAIN_METHODS":
        return _pretrain_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pretrain_optim() -> OptimConfig:
    # Zhao et al. (ICCV 2021) pre-train with SGD lr 0.1, momentum 0.9, weight decay 4e-5, cosine.
    return OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=4e-5)


@dataclass
class PretrainConfig:
    """``segcl pretrain``: contrastive pre-training of an encoder (+ decoder) with projection heads.

    Attributes:
        method: a registered pre-training method (``PRETRAIN_METHODS``; one module each in
            :mod:`segcl.methods`, whose docstring gives the paper and the loss).
        losses: the terms of a method that lets you choose them (subset of ``global``,
            ``local``, ``pixel``); the pixel term needs labelled (or pseudo-labelled) images and
            is dropped without them.
        variant: pixel contrast over each image (``single``) or over the batch (``batch``).
        temperature: ``None`` = each term's paper default (0.1 global/local, 0.07 pixel; moco
            0.2); a number sets it for every term.
        grid: ``(h, w)`` the pixel embeddings are resized to; ``None`` = the decoder's native
            resolution (affordable with the linear-memory loss).
        max_pixels: random subsample of valid pixels for ``variant="batch"``.
        local_grid: ``S`` of the local head (``S x S`` regions per image).
        proj_dim / pixel_dim: output sizes of the global/local heads and of the pixel head.
        strength: colour-distortion strength of the second view / copy (SimCLR's ``s``).
        crop_scale: area range of SimCLR's random resized crops.
        queue_size / key_momentum: ``moco`` only: the keys kept as negatives, and the momentum
            of the key encoder's moving average.
        scale: random scale range of the shared geometry of an image and its copy.
        pseudo_labels: teacher model; the unlabelled images get pseudo-masks and join the
            labelled set (for the pixel term).
        batch_size: images per batch and process (under torchrun the global batch is
            ``batch_size * world_size``).
        loggers: where the scalars go besides ``metrics.jsonl`` (:mod:`segcl.loggers`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_pretrain_optim)
    out: str = "runs/pretrain"
    method: str = "supcon"
    encoder: str = "resnet18"
    decoder: str = "unet"
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    encoder_weights: str | None = None
    losses: list[str] = field(default_factory=lambda: list(PRETRAIN_LOSSES))
    variant: str = "single"
    temperature: float | None = None
    grid: tuple[int, int] | None = None
    max_pixels: int | None = None
    local_grid: int = 4
    proj_dim: int = 128
    pixel_dim: int = 256
    strength: float = 0.5
    crop_scale: tuple[float, float] = (0.2, 1.0)
    queue_size: int = 256
    key_momentum: float = 0.99
    scale: tuple[float, float] = (0.5, 2.0)
    pseudo_labels: str | None = None
    pseudo_threshold: float = 0.8
    pseudo_background_threshold: float = 0.97
    background_class: int | None = None
    eval_mode: str = "resize"
    epochs: int = 100
    steps: int | None = None
    batch_size: int = 8
    amp: bool = True
    channels_last: bool = True
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    save_every_s: float = 300.0
    checkpoint_every: str | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        self.loggers = _logger_list(self.loggers)
        check_fields(self)
        parse_every(self.checkpoint_every)
        check_encoder_weights(self.encoder, self.encoder_weights)
        if self.max_pixels is not None and self.variant != "batch":
            raise ConfigError("--max-pixels only applies to --variant batch")
        from segcl.methods import get  # the registry imports no torch

        get(self.method, kind="pretrain").check(self)  # combinations the method refuses


EXPORT_FORMATS = ("onnx",)
#: opsets the exporter writes: 11 is the first with the dynamic-size Resize the decoders need,
#: 20 the last that torch's TorchScript-based ONNX exporter supports
EXPORT_OPSETS = (11, 20)


@dataclass
class ExportConfig:
    """``segcl export``: a trained model as a file for inference outside PyTorch.

    Attributes:
        model: run or checkpoint folder, ``hf://user/name[@revision]`` or a registry name.
        out: the file to write (``.onnx``; ``predict`` recognises ONNX models by the suffix).
        format: ``onnx``.
        opset: the ONNX opset of the graph (:data:`EXPORT_OPSETS`).
        check: run the exported model with onnxruntime next to PyTorch and compare the logits.
        check_images: image files / a folder for the check; ``None``: the validation images of
            the checkpoint's dataset when they are found, else generated images.
        check_count: how many images the check uses.
        max_diff: largest accepted max |logit difference| between onnxruntime and PyTorch.
        batch_size: images per forward pass of the check.
    """

    model: str = ""
    out: str = "model.onnx"
    format: str = "onnx"
    opset: int = 17
    check: bool = True
    check_images: str | None = None
    check_count: int = 8
    max_diff: float = 1e-3
    batch_size: int = 4

    def __post_init__(self) -> None:
        check_fields(self)
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"--format must be one of: {', '.join(EXPORT_FORMATS)}; got "
                              f"'{self.format}'")
        low, high = EXPORT_OPSETS
        if (isinstance(self.opset, bool) or not isinstance(self.opset, int)
                or not low <= self.opset <= high):
            raise ConfigError(f"--opset must be an integer from {low} to {high}, got "
                              f"{self.opset!r}")
        if not str(self.out).lower().endswith(".onnx"):
            raise ConfigError(f"--out must name an .onnx file (predict recognises ONNX models by "
                              f"the suffix), got '{self.out}'")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-friendly dictionary of a config dataclass (tuples become lists)."""

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return fix(dataclasses.asdict(cfg))


#: what a config file must give for a field whose default is of one of these types (numbers
#: are checked by :data:`CHECKS`; lists and fields that default to ``None`` are normalised or
#: checked by their config)
_KINDS = {dict: "a mapping of settings", bool: "true or false", str: "a string"}


def from_dict(cls: type[T], d: dict[str, Any], section: str = "") -> T:
    """Build a (nested) config dataclass from a dictionary, rejecting unknown keys and values
    of the wrong kind (:data:`_KINDS`); ``section`` prefixes the keys named in messages."""
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - set(hints)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        f = hints[name]
        proto = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = dict if dataclasses.is_dataclass(proto) else type(proto)
        if kind in _KINDS and not isinstance(value, kind):
            raise ConfigError(f"'{section}{name}' must be {_KINDS[kind]}, got {value!r}")
        if dataclasses.is_dataclass(proto):
            value = from_dict(type(proto), value, f"{section}{name}.")
        elif isinstance(value, list) and (isinstance(proto, tuple) or name in TUPLE_FIELDS):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML."""
    from segcl.fileio import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a config dataclass from YAML (``yaml.safe_load``: no code is executed)."""
    d = read_yaml(path)
    if not isinstance(d, dict):
        got = "an empty file" if d is None else type(d).__name__
        raise ConfigError(f"{path}: expected a mapping of settings, got {got}")
    try:
        return from_dict(cls, d)
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{path}: {err}") from err
