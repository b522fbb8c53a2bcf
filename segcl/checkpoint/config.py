"""``config.json``: what a checkpoint says about itself, as one checked dataclass.

:class:`CheckpointConfig` is the only reader and writer of ``config.json``. Its sections:

- ``model``: the architecture (:class:`segcl.models.ModelConfig` as a dict: encoder, decoder,
  number of classes, decoder options), enough to rebuild the network;
- ``data`` (:class:`DataSpec`): class names, ignore index, palette, normalisation mean / std and
  the training image size, enough to pre- and post-process images as training did;
- provenance: ``segcl_version``, ``method``, ``dataset``, the ``command`` that trained it, the
  projection ``heads`` stored with pre-training weights, validation ``metrics``, where the encoder
  started (``encoder_weights``), the job configuration (``train``, and ``pretrain`` for
  pre-training runs) and ``weights_sha256``, the SHA-256 of ``model.safetensors``.

Loading checks every key the inference path reads, with an error naming the file and the key;
keys a newer segcl wrote are kept as they are, so a config read and written again is unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segcl import __version__
from segcl.errors import CheckpointError

CONFIG = "config.json"
WEIGHTS_SHA256 = "weights_sha256"  # config.json key: SHA-256 of model.safetensors

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_colour(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(_is_int(x) and 0 <= x <= 255 for x in v)


Check = tuple[Callable[[Any], Any], str]

#: what the inference path reads: (section, key) -> (check, expected)
CONFIG_SCHEMA: dict[tuple[str, str], Check] = {
    ("model", "encoder"): (lambda v: isinstance(v, str) and v, "a timm model name"),
    ("model", "decoder"): (lambda v: isinstance(v, str) and v, "a decoder name"),
    ("model", "num_classes"): (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("data", "classes"): (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
                          "a list of class names"),
    ("data", "ignore_index"): (_is_int, "an integer"),
    ("data", "image_size"): (lambda v: isinstance(v, list) and len(v) == 2
                             and all(_is_int(x) and x > 0 for x in v),
                             "[height, width] with positive integers"),
    ("data", "mean"): (lambda v: isinstance(v, list) and v and all(map(_is_number, v)),
                       "a list of numbers"),
    ("data", "std"): (lambda v: isinstance(v, list) and v and all(_is_number(x) and x > 0
                                                                    for x in v),
                      "a list of positive numbers"),
}

#: the optional keys: key -> (check, expected); absent keys stay absent on a round trip
OPTIONAL: dict[str, Check] = {
    "segcl_version": (lambda v: isinstance(v, str), "a version string"),
    "method": (lambda v: v is None or isinstance(v, str), "a method name"),
    "dataset": (lambda v: v is None or isinstance(v, str), "a dataset name or null"),
    "command": (lambda v: v is None or isinstance(v, str), "a command line or null"),
    "heads": (lambda v: isinstance(v, list) and all(isinstance(h, str) for h in v),
              "a list of head names"),
    "metrics": (lambda v: isinstance(v, dict), "an object of metrics"),
    "encoder_weights": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "pretrain": (lambda v: isinstance(v, dict), "an object"),
    "train": (lambda v: isinstance(v, dict), "an object"),
    WEIGHTS_SHA256: (lambda v: isinstance(v, str) and _SHA256.fullmatch(v),
                     "the 64-character SHA-256 of model.safetensors"),
}
_PALETTE: Check = (lambda v: v is None or (isinstance(v, list) and all(map(_is_colour, v))),
                   "a list of [r, g, b] colours or null")
#: the order of config.json's keys
_ORDER = ("segcl_version", "method", "dataset", "command", "model", "data", "heads", "metrics",
          "encoder_weights", "pretrain", "train")


@dataclass
class DataSpec:
    """The ``data`` section: how images were prepared and what the classes are."""

    classes: list[str]
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: tuple[int, int]  # (height, width) the model was trained at
    palette: list[tuple[int, int, int]] | None = None  # one RGB colour per class

    @classmethod
    def from_info(cls, info: Any, mean: tuple[float, ...], std: tuple[float, ...],
                  image_size: tuple[int, int]) -> DataSpec:
        """From a :class:`segcl.data.DatasetInfo` and the normalisation and size of a run."""
        palette = [tuple(c) for c in info.palette] if info.palette else None
        return cls(classes=list(info.classes), ignore_index=info.ignore_index, mean=tuple(mean),
                   std=tuple(std), image_size=(image_size[0], image_size[1]),
                   palette=palette)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "palette": [list(c) for c in self.palette] if self.palette else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": list(self.image_size),
        }


@dataclass
class CheckpointConfig:
    """A checkpoint's ``config.json`` (see the module docstring for the sections)."""

    model: dict[str, Any]  # ModelConfig.to_dict()
    data: DataSpec
    method: str | None = None
    dataset: str | None = None
    command: str | None = None
    heads: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    encoder_weights: dict[str, Any] | None = None  # segcl.models.weights.EncoderWeights
    pretrain: dict[str, Any] | None = None  # pre-training runs: losses, steps, final losses
    train: dict[str, Any] | None = None  # the job configuration (segcl.config.to_dict)
    segcl_version: str = __version__
    weights_sha256: str | None = None
    #: keys this version of segcl does not know (written by a newer one), kept as they are
    extra: dict[str, Any] = field(default_factory=dict)
    #: optional keys the file did not hold: left out again by :meth:`to_dict`
    absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def create(cls, model: dict[str, Any], info: Any, mean: tuple[float, ...],
               std: tuple[float, ...], image_size: tuple[int, int],
               **provenance: Any) -> CheckpointConfig:
        """The config of a new checkpoint: ``model`` (``ModelConfig.to_dict()``), the data
        section from ``info`` (a :class:`segcl.data.DatasetInfo`, also giving ``dataset``) and
        the run's normalisation and image size; ``provenance``: the other fields (``method``,
        ``command``, ``metrics``, ``heads``, ``encoder_weights``, ``pretrain``, ``train``)."""
        return cls(model=model, data=DataSpec.from_info(info, mean, std, image_size),
                   dataset=info.name, **provenance)

    def with_weights_sha256(self, digest: str) -> CheckpointConfig:
        """A copy recording ``digest`` as the SHA-256 of ``model.safetensors``."""
        return replace(self, weights_sha256=digest, absent=self.absent - {WEIGHTS_SHA256})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``config.json``, keys in their usual order."""
        values = {"segcl_version": self.segcl_version, "method": self.method,
                  "dataset": self.dataset, "command": self.command, "model": self.model,
                  "data": self.data.to_dict(), "heads": list(self.heads),
                  "metrics": self.metrics, "encoder_weights": self.encoder_weights,
                  "pretrain": self.pretrain, "train": self.train}
        out = {k: values[k] for k in _ORDER
               if k not in self.absent and not (k in ("pretrain", "train") and values[k] is None)}
        out.update(self.extra)
        if self.weights_sha256 is not None:
            out[WEIGHTS_SHA256] = self.weights_sha256
        return out

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path) -> CheckpointConfig:
        """Check ``raw`` (a parsed ``config.json``) and build the config.

        Raises:
            CheckpointError: naming ``source`` (the file) and the key that is missing or wrong.
        """
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        for (section, key), (ok, text) in CONFIG_SCHEMA.items():
            part = raw.get(section)
            if not isinstance(part, dict):
                raise CheckpointError(f"{source}: no '{section}' section; not a segcl checkpoint")
            if key not in part:
                raise CheckpointError(f"{source}: '{section}.{key}' is missing (expected {text})")
            if not ok(part[key]):
                raise CheckpointError(f"{source}: '{section}.{key}' must be {text}, got "
                                      f"{part[key]!r}")
        for key, (ok, text) in (*OPTIONAL.items(), ("data.palette", _PALETTE)):
            section, _, name = key.rpartition(".")
            part = raw[section] if section else raw
            if name in part and not ok(part[name]):
                raise CheckpointError(f"{source}: '{key}' must be {text}, got {part[name]!r}")
        d = raw["data"]
        data = DataSpec(
            classes=list(d["classes"]), ignore_index=d["ignore_index"], mean=tuple(d["mean"]),
            std=tuple(d["std"]), image_size=(d["image_size"][0], d["image_size"][1]),
            palette=[tuple(c) for c in d["palette"]] if d.get("palette") else None,
        )
        known = {*_ORDER, WEIGHTS_SHA256}
        return cls(
            model=raw["model"], data=data, method=raw.get("method"),
            dataset=raw.get("dataset"), command=raw.get("command"),
            heads=list(raw.get("heads") or []), metrics=raw.get("metrics") or {},
            encoder_weights=raw.get("encoder_weights"), pretrain=raw.get("pretrain"),
            train=raw.get("train"), segcl_version=raw.get("segcl_version", __version__),
            weights_sha256=raw.get(WEIGHTS_SHA256),
            extra={k: v for k, v in raw.items() if k not in known},
            absent=frozenset(k for k in OPTIONAL if k not in raw),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> CheckpointConfig:
        """Read and check a ``config.json`` file (errors name the file and the key)."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: invalid JSON ({err})") from err
        return cls.from_dict(raw, path)

    @staticmethod
    def recorded_sha256(path: str | Path) -> str | None:
        """The ``weights_sha256`` a ``config.json`` records, or ``None`` when it records none
        (or cannot be read: :meth:`from_file` reports that where it matters)."""
        try:
            value = json.loads(Path(path).read_text(encoding="utf-8")).get(WEIGHTS_SHA256)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        return value if isinstance(value, str) else None
