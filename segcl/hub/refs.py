"""Model references: the strings a user can type wherever segcl expects a model.

Three forms are understood (see ``resolve_model_ref``):

- a local checkpoint folder (``model.safetensors`` + ``config.json``) or a training run directory
  (its ``best/`` checkpoint, else ``last/``), e.g. ``runs/camvid-supcon``;
- a Hub repository, optionally pinned: ``hf://user/name``, ``hf://user/name@v1``,
  ``hf://user/name@<40-hex commit sha>``;
- a name from the registry ``checkpoints.yaml``, e.g. ``camvid-resnet18-supcon``.
"""

from __future__ import annotations

import re
from pathlib import Path

from segcl.errors import CheckpointError, ConfigError, HubError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE)
RUN_SUBDIRS = ("best", "last")

HF_PREFIX = "hf://"
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


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
    if not _REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"{ref}: expected {HF_PREFIX}user/name[@revision]")
    if sep and not _REVISION.fullmatch(revision):
        raise ConfigError(f"{ref}: empty or invalid revision after '@'")
    return repo_id, (revision if sep else None)


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or "/" in ref or "\\" in ref


def resolve_model_ref(
    ref: str | Path,
    revision: str | None = None,
    *,
    registry: Path | None = None,
) -> Path:
    """Return the local folder holding the checkpoint that ``ref`` designates.

    Args:
        ref: a local run directory or checkpoint folder, ``hf://user/name[@revision]``, or a
            registry name from ``checkpoints.yaml``.
        revision: branch, tag or commit sha for an ``hf://`` reference without ``@revision``.
        registry: registry file to look names up in (default: see ``load_registry``).

    Hub and registry references are downloaded into the Hugging Face cache (offline mode is
    honoured) and the sha256 of ``model.safetensors`` is verified.

    Raises:
        CheckpointError: a local path is missing or is not a checkpoint.
        ConfigError: a malformed reference, or ``revision`` conflicting with the reference.
        HubError: unknown repository, revision or registry name, an unpublished registry entry,
            offline and not cached, or a sha256 mismatch.
    """
    if isinstance(ref, Path) or Path(str(ref)).expanduser().exists():
        if revision is not None:
            raise ConfigError(f"{ref}: --revision applies to hf:// references, not local paths")
        return resolve_local(Path(ref))
    text = str(ref).strip()
    from segcl.hub.remote import pull  # late import: remote imports this module

    if text.startswith(HF_PREFIX):
        repo_id, pinned = parse_hf_ref(text)
        if revision is not None and pinned is not None and revision != pinned:
            raise ConfigError(f"{text}: revision '{revision}' conflicts with '@{pinned}'")
        return pull(repo_id, revision or pinned)
    if _looks_like_path(text):
        hint = ""
        if _REPO_ID.fullmatch(text):
            hint = f" (if you meant a Hub repository, write {HF_PREFIX}{text})"
        raise CheckpointError(f"{text}: no such file or directory{hint}")

    from segcl.hub.registry import REGISTRY_ENV, default_registry_path, load_registry

    if registry is None and default_registry_path() is None:
        raise HubError(
            f"'{text}' is not a local path, an {HF_PREFIX} reference or a registry name "
            f"(no checkpoints.yaml found; set {REGISTRY_ENV})"
        )
    entries = load_registry(registry)
    entry = entries.get(text)
    if entry is None:
        known = ", ".join(sorted(entries)) or "none yet"
        raise HubError(
            f"'{text}' is not a local path, an {HF_PREFIX} reference or a registry name "
            f"(registry names: {known})"
        )
    if revision is not None:
        raise ConfigError(f"{text}: a registry entry is pinned; --revision is not allowed")
    if not entry.published or entry.repo_id is None or entry.revision is None:
        raise HubError(
            f"registry entry '{text}' is not published yet; rebuild it from its recipe with "
            f"`segcl hub build {text} --data PATH`"
        )
    return pull(entry.repo_id, entry.revision, sha256=entry.sha256)
