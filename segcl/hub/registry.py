"""The registry of named checkpoints (``checkpoints.yaml``): load, validate, rebuild, compare.

Each entry says where a checkpoint lives (a Hub ``repo_id`` pinned to a commit ``revision`` with
the ``sha256`` of its weights), what it is, the metrics measured for it, and the ``recipe`` -- the
segcl commands that rebuild it from the public dataset -- so that a checkpoint whose hosted copy is
gone can still be rebuilt and checked (``segcl hub build NAME``).

Where the registry file is looked up, first match wins:

1. the ``path`` argument;
2. the ``SEGCL_REGISTRY`` environment variable;
3. ``checkpoints.yaml`` shipped inside the package (``segcl/checkpoints.yaml``, package data);
4. ``checkpoints.yaml`` at the top of the source tree (editable installs).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segcl.checkpoint.refs import REPO_ID
from segcl.errors import ConfigError, HubError
from segcl.fileio import read_yaml

REGISTRY_FILENAME = "checkpoints.yaml"
REGISTRY_ENV = "SEGCL_REGISTRY"
PLACEHOLDERS = frozenset({"data", "out"})
DEFAULT_EVALUATION = "{out}/eval.json"

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

_REQUIRED = ("encoder", "decoder", "method", "dataset", "classes", "image_size", "metrics",
             "recipe")
_OPTIONAL = ("repo_id", "revision", "sha256", "published", "notes", "evaluation",
             "encoder_weights")
#: ``encoder_weights`` of an entry whose recipe starts the encoder from random weights
RANDOM_INIT = "random"


@dataclass(frozen=True)
class RegistryEntry:
    """One named checkpoint of the registry (field meanings: see the header of checkpoints.yaml)."""

    name: str
    repo_id: str | None
    revision: str | None
    sha256: str | None
    encoder: str
    decoder: str
    method: str
    dataset: str
    classes: list[str]
    image_size: tuple[int, int]
    metrics: dict[str, dict[str, float]]
    recipe: list[str]
    published: bool = False
    notes: str = ""
    evaluation: str = DEFAULT_EVALUATION
    encoder_weights: str = RANDOM_INIT

    @property
    def hf_ref(self) -> str | None:
        """``hf://repo@revision`` when published, else ``None``."""
        if not self.published or self.repo_id is None or self.revision is None:
            return None
        return f"hf://{self.repo_id}@{self.revision}"

    def headline_metric(self) -> tuple[str, str, float] | None:
        """The first ``(split, metric, value)`` listed, used in summaries."""
        for split, values in self.metrics.items():
            for metric, value in values.items():
                return split, metric, value
        return None


@dataclass(frozen=True)
class MetricCheck:
    """A registry metric compared with the value a rebuild measured."""

    split: str
    metric: str
    expected: float
    measured: float | None
    tolerance: float
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        # 1e-9 absorbs float rounding: 0.81 - 0.80 must count as within a 0.01 tolerance
        ok = (self.measured is not None
              and abs(self.measured - self.expected) <= self.tolerance + 1e-9)
        object.__setattr__(self, "ok", ok)


def default_registry_path() -> Path | None:
    """The registry file used when none is given, or ``None`` when there is none."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return Path(env).expanduser()
    try:
        packaged = importlib.resources.files("segcl").joinpath(REGISTRY_FILENAME)
        if packaged.is_file():
            return Path(str(packaged))
    except (ModuleNotFoundError, TypeError):
        pass
    import segcl

    source_tree = Path(segcl.__file__).resolve().parents[1] / REGISTRY_FILENAME
    return source_tree if source_tree.is_file() else None


def load_registry(path: Path | None = None) -> dict[str, RegistryEntry]:
    """Load and validate the registry; returns ``{name: RegistryEntry}`` in file order.

    Raises:
        ConfigError: the file is missing or unreadable, or an entry is invalid (the message names
            the file, the entry and the field).
    """
    path = Path(path) if path is not None else default_registry_path()
    if path is None:
        raise ConfigError(
            f"no {REGISTRY_FILENAME} found: pass a path or set "
            f"{REGISTRY_ENV}=/path/to/{REGISTRY_FILENAME}"
        )
    if not path.exists():
        raise ConfigError(f"{path}: registry file not found")
    document = read_yaml(path, "the registry")  # names the file, the line and the column
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'checkpoints' key")
    unknown = set(document) - {"version", "checkpoints"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    if document.get("version", 1) != 1:
        raise ConfigError(f"{path}: unsupported registry version {document.get('version')!r}")
    checkpoints = document.get("checkpoints") or {}
    if not isinstance(checkpoints, dict):
        raise ConfigError(f"{path}: 'checkpoints' must be a mapping of name -> entry")
    return {str(name): _parse_entry(path, str(name), raw) for name, raw in checkpoints.items()}


def _parse_entry(path: Path, name: str, raw: Any) -> RegistryEntry:
    def fail(field_name: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: entry '{name}': field '{field_name}' {problem}")

    if not _NAME.fullmatch(name):
        raise ConfigError(f"{path}: entry '{name}': name must match [a-z0-9][a-z0-9._-]*")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: entry '{name}': expected a mapping of fields")
    unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise fail(sorted(unknown)[0], "is not a registry field")
    for key in _REQUIRED:
        if raw.get(key) in (None, "", [], {}):
            raise fail(key, "is required")

    for key in ("encoder", "decoder", "method", "dataset"):
        if not isinstance(raw[key], str):
            raise fail(key, "must be a string")
    classes = raw["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise fail("classes", "must be a list of class names")
    size = raw["image_size"]
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise fail("image_size", "must be [height, width] with positive integers")
    metrics = _parse_metrics(raw["metrics"], fail)
    recipe = _parse_recipe(raw["recipe"], fail)

    published = raw.get("published", False)
    if not isinstance(published, bool):
        raise fail("published", "must be true or false")
    repo_id, revision, sha256 = raw.get("repo_id"), raw.get("revision"), raw.get("sha256")
    if repo_id is not None and (not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id)):
        raise fail("repo_id", "must look like 'user/name'")
    if revision is not None and (not isinstance(revision, str) or not _SHA1.fullmatch(revision)):
        raise fail("revision", "must be a full 40-character commit sha (lowercase hex)")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
        raise fail("sha256", "must be the 64-character sha256 of model.safetensors")
    if published:
        for key, value in (("repo_id", repo_id), ("revision", revision), ("sha256", sha256)):
            if value is None:
                raise fail(key, "is required when published is true")
    notes = raw.get("notes") or ""
    if not isinstance(notes, str):
        raise fail("notes", "must be a string")
    evaluation = raw.get("evaluation") or DEFAULT_EVALUATION
    if not isinstance(evaluation, str):
        raise fail("evaluation", "must be a path template such as '{out}/eval.json'")
    _check_placeholders(evaluation, lambda problem: fail("evaluation", problem))
    encoder_weights = _parse_encoder_weights(raw.get("encoder_weights"), recipe, fail)
    return RegistryEntry(
        name=name, repo_id=repo_id, revision=revision, sha256=sha256,
        encoder=raw["encoder"], decoder=raw["decoder"], method=raw["method"],
        dataset=raw["dataset"], classes=list(classes), image_size=(size[0], size[1]),
        metrics=metrics, recipe=recipe, published=published, notes=notes,
        evaluation=evaluation, encoder_weights=encoder_weights,
    )


def recipe_encoder_weights(recipe: list[str]) -> str | None:
    """The first ``--encoder-weights`` value the recipe's commands pass, if any."""
    for command in recipe:
        argv = shlex.split(command)
        for i, arg in enumerate(argv):
            if arg == "--encoder-weights" and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith("--encoder-weights="):
                return arg.split("=", 1)[1]
    return None


def _parse_encoder_weights(raw: Any, recipe: list[str], fail: Any) -> str:
    """Where the recipe's encoder starts: ``random`` or its ``--encoder-weights`` (e.g.
    ``imagenet``); a value that contradicts the recipe is refused."""
    used = recipe_encoder_weights(recipe)
    if raw is None:
        return used or RANDOM_INIT
    if not isinstance(raw, str) or not raw.strip():
        raise fail("encoder_weights", "must be 'random' or the recipe's --encoder-weights value "
                                      "(e.g. imagenet)")
    if raw != (used or RANDOM_INIT):
        passed = f"passes --encoder-weights {used}" if used else "passes no --encoder-weights"
        raise fail("encoder_weights", f"is '{raw}' but the recipe {passed}")
    return raw


def _parse_metrics(raw: Any, fail: Any) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise fail("metrics", "must map a split to {metric: value}, e.g. {val: {miou: 0.41}}")
    metrics: dict[str, dict[str, float]] = {}
    for split, values in raw.items():
        if not isinstance(values, dict) or not values:
            raise fail("metrics", f"split '{split}' must map metric names to numbers")
        for metric, value in values.items():
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value)):
                raise fail("metrics", f"'{split}.{metric}' must be a finite number")
        metrics[str(split)] = {str(k): float(v) for k, v in values.items()}
    return metrics


def _check_placeholders(text: str, fail: Any) -> set[str]:
    try:
        names = {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}
    except ValueError as exc:
        raise fail(f"has a malformed placeholder ({exc})") from None
    unknown = names - PLACEHOLDERS
    if unknown:
        raise fail(f"uses unknown placeholder(s) {sorted(unknown)}; allowed: {{data}}, {{out}}")
    return names


def _parse_recipe(raw: Any, fail: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(c, str) and c.strip() for c in raw):
        raise fail("recipe", "must be a list of command strings")
    used: set[str] = set()
    for command in raw:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise fail("recipe", f"has an unparsable command ({exc}): {command}") from None
        if not argv or argv[0] != "segcl":
            raise fail("recipe", f"commands must start with 'segcl': {command}")
        used |= _check_placeholders(command, lambda problem: fail("recipe", problem))
    if "data" not in used:
        raise fail("recipe", "must use the {data} placeholder for the dataset path")
    return [c.strip() for c in raw]


def recipe_argv(entry: RegistryEntry, data: Path, out: Path) -> list[list[str]]:
    """The recipe's commands with ``{data}`` / ``{out}`` filled in, as argv lists after ``segcl``.

    >>> # "segcl finetune --data {data} --out {out}" -> ["finetune", "--data", "/d", "--out", "/o"]
    """
    values = {"data": shlex.quote(str(data)), "out": shlex.quote(str(out))}
    commands = []
    for command in entry.recipe:
        argv = shlex.split(command.format(**values))
        commands.append(argv[1:])
    return commands


def evaluation_path(entry: RegistryEntry, data: Path, out: Path) -> Path:
    """Where the recipe writes its evaluation JSON."""
    return Path(entry.evaluation.format(data=str(data), out=str(out)))


def read_evaluation(path: Path) -> dict[str, Any]:
    """Read the evaluation JSON a recipe wrote."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HubError(f"{path}: the recipe did not write its evaluation JSON") from None
    except (OSError, ValueError) as exc:
        raise HubError(f"{path}: unreadable evaluation JSON ({exc})") from None
    if not isinstance(document, dict):
        raise HubError(f"{path}: evaluation JSON must be an object")
    return document


def _lookup(document: dict[str, Any], split: str, metric: str) -> float | None:
    """Find ``metric`` of ``split`` in the usual layouts of an evaluation JSON."""
    nested = document.get("metrics")
    candidates: list[Any] = [
        nested.get(split) if isinstance(nested, dict) else None,
        document.get(split),
    ]
    declared = document.get("split")
    if declared is None or declared == split:  # flat layouts, e.g. `segcl evaluate --json`
        candidates += [nested, document]
    for candidate in candidates:
        if isinstance(candidate, dict):
            value = candidate.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def compare_metrics(
    entry: RegistryEntry, evaluation: dict[str, Any], tolerance: float = 0.01
) -> list[MetricCheck]:
    """Compare every registry metric with the rebuilt one (absolute ``tolerance``).

    The evaluation JSON may hold metrics under ``metrics.<split>``, under the split name, or flat
    (``{"split": "val", "miou": ...}``, what ``segcl evaluate --json`` writes; a flat file that
    declares another ``split`` is not used for this one).
    """
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    return [
        MetricCheck(split, metric, expected, _lookup(evaluation, split, metric), tolerance)
        for split, values in entry.metrics.items()
        for metric, expected in values.items()
    ]
