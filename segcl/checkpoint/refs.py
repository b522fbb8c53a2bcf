"""Model references: the strings a user can type wherever segcl expects a model.

Three forms are understood (:func:`parse_model_ref`):

- a local checkpoint folder (``model.safetensors`` + ``config.json``) or a training run directory
  (its ``best/`` checkpoint, else ``last/``), e.g. ``runs/camvid-supcon``;
- a Hub repository, optionally pinned: ``hf://user/name``, ``hf://user/name@v1``,
  ``hf://user/name@<40-hex commit sha>``;
- a name from the registry ``checkpoints.yaml``, e.g. ``camvid-resnet18-supcon``.

This module parses them and resolves local ones; :func:`segcl.hub.refs.resolve_model_ref`
downloads the other two. :data:`REPO_ID` is the one spelling of a Hub repository id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from segcl.checkpoint.files import CHECKPOINT_FILES, REQUIRED_FILES
from segcl.errors import CheckpointError, ConfigError

RUN_SUBDIRS = ("best", "last")
HF_PREFIX = "hf://"
#: a Hugging Face Hub repository id, ``user/name``
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` when it is ``user/name``, else raise :class:`ConfigError`."""
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"{repo_id}: a repository id looks like 'user/name'")
    return repo_id


def is_checkpoint_dir(path: Path) -> bool:
    """True when ``path`` is a folder holding ``model.safetensors`` and ``config.json``."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED_FILES)


def _missing(path: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (path / name).is_file()]


def resolve_local(path: Path) -> Path:
    """Return the checkpoint folder that a local path designates.

    ``path`` may be a checkpoint folder, a run directory (``best/`` is preferred, ``last/`` is the
    fallback), or one of the checkpoint's files. Raises :class:`CheckpointError` naming the missing
    file otherwise.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name in CHECKPOINT_FILES and is_checkpoint_dir(path.parent):
            return path.parent
        raise CheckpointError(
            f"{path}: is a file; expected a checkpoint folder with {' and '.join(REQUIRED_FILES)}"
        )
    if is_checkpoint_dir(path):
        return path
    subdirs = [path / name for name in RUN_SUBDIRS if (path / name).is_dir()]
    for sub in subdirs:
        if is_checkpoint_dir(sub):
            return sub
    if subdirs:
        sub = subdirs[0]
        raise CheckpointError(
            f"{sub}: incomplete checkpoint, missing {', '.join(_missing(sub))}"
        )
    raise CheckpointError(
        f"{path}: not a segcl checkpoint (missing {', '.join(_missing(path))}) "
        f"nor a run directory with {' or '.join(n + '/' for n in RUN_SUBDIRS)}"
    )


def parse_hf_ref(ref: str) -> tuple[str, str | None]:
    """Split ``hf://user/name[@revision]`` into ``(repo_id, revision)``.

    >>> parse_hf_ref("hf://alice/camvid-unet@v1")
    ('alice/camvid-unet', 'v1')
    """
    if not ref.startswith(HF_PREFIX):
        raise ConfigError(f"{ref}: a Hub reference must start with {HF_PREFIX}")
    body = ref[len(HF_PREFIX):]
    repo_id, sep, revision = body.partition("@")
    if not REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"{ref}: expected {HF_PREFIX}user/name[@revision]")
    if sep and not _REVISION.fullmatch(revision):
        raise ConfigError(f"{ref}: empty or invalid revision after '@'")
    return repo_id, (revision if sep else None)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or "/" in ref or "\\" in ref


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference.

    Attributes:
        kind: ``local`` (``path``), ``hub`` (``repo_id`` at ``revision``, ``None``: ``main``) or
            ``name`` (a registry name in ``text``; ``revision`` as the caller passed it).
    """

    kind: Literal["local", "hub", "name"]
    text: str
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None


def parse_model_ref(ref: str | Path, revision: str | None = None) -> ModelRef:
    """Tell which of the three forms ``ref`` is (see the module docstring).

    Args:
        ref: an existing local path, ``hf://user/name[@revision]`` or a registry name.
        revision: branch, tag or commit sha for an ``hf://`` reference without ``@revision``.

    Raises:
        ConfigError: a malformed ``hf://`` reference, or ``revision`` given for a local path or
            conflicting with the reference's ``@revision``.
        CheckpointError: a path-like reference that does not exist.
    """
    if isinstance(ref, Path) or Path(str(ref)).expanduser().exists():
        if revision is not None:
            raise ConfigError(f"{ref}: --revision applies to hf:// references, not local paths")
        return ModelRef("local", str(ref), path=Path(ref))
    text = str(ref).strip()
    if text.startswith(HF_PREFIX):
        repo_id, pinned = parse_hf_ref(text)
        if revision is not None and pinned is not None and revision != pinned:
            raise ConfigError(f"{text}: revision '{revision}' conflicts with '@{pinned}'")
        return ModelRef("hub", text, repo_id=repo_id, revision=revision or pinned)
    if _looks_like_path(text):
        hint = ""
        if REPO_ID.fullmatch(text):
            hint = f" (if you meant a Hub repository, write {HF_PREFIX}{text})"
        raise CheckpointError(f"{text}: no such file or directory{hint}")
    return ModelRef("name", text, revision=revision)
