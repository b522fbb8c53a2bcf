"""Resolve a model reference to a local checkpoint folder, downloading Hub ones.

The grammar of references (a local folder or run directory, ``hf://user/name[@rev]``, a registry
name) is :func:`segcl.checkpoint.parse_model_ref`; this module fetches what it names.
"""

from __future__ import annotations

from pathlib import Path

from segcl.checkpoint.refs import HF_PREFIX, parse_model_ref, resolve_local
from segcl.errors import ConfigError, HubError
from segcl.hub import registry as _registry


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
    parsed = parse_model_ref(ref, revision)
    if parsed.kind == "local":
        assert parsed.path is not None
        return resolve_local(parsed.path)
    from segcl.hub.remote import pull  # huggingface_hub is imported only to download

    if parsed.kind == "hub":
        assert parsed.repo_id is not None
        return pull(parsed.repo_id, parsed.revision)
    text = parsed.text
    if registry is None and _registry.default_registry_path() is None:
        raise HubError(
            f"'{text}' is not a local path, an {HF_PREFIX} reference or a registry name "
            f"(no checkpoints.yaml found; set {_registry.REGISTRY_ENV})"
        )
    entries = _registry.load_registry(registry)
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
