"""Push checkpoints to the Hugging Face Hub and pull them back, verified.

Only the three files of a checkpoint travel: ``model.safetensors``, ``config.json`` and a
``README.md`` model card regenerated from ``config.json``. Pulls go through the Hugging Face cache
(``HF_HOME``; ``HF_HUB_OFFLINE=1`` is honoured) and the sha256 of ``model.safetensors`` is checked
against the registry's pin or the Hub's LFS metadata.

Tokens come from the ``token`` argument, ``HF_TOKEN`` or the saved login; they are never printed,
logged or included in an error message.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from segcl.checkpoint import (
    CARD,
    CONFIG,
    WEIGHTS,
    CheckpointConfig,
    check_repo_id,
    check_safetensors_header,
    file_sha256,
    render_model_card,
    resolve_local,
)
from segcl.errors import ConfigError, HubError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection / timeout exception classes of whichever HTTP client huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, n) for n in names if hasattr(module, n)]
    return tuple(found)


_NETWORK_ERRORS = _network_errors()


@dataclass(frozen=True)
class PushResult:
    """What a push did.

    Attributes:
        repo_id: the Hub repository.
        commit_sha: the commit holding the pushed files -- the revision to pin. When nothing
            changed this is the existing head commit (``changed`` is False).
        changed: False when the Hub already had identical files and no commit was made.
        url: the repository's web address.
        tag: the tag pointing at ``commit_sha``, if one was requested.
        sha256: sha256 of ``model.safetensors`` (what ``checkpoints.yaml`` pins).
    """

    repo_id: str
    commit_sha: str
    changed: bool
    url: str
    tag: str | None
    sha256: str

    @property
    def hf_ref(self) -> str:
        """The pinned reference, usable anywhere segcl expects a model."""
        return f"hf://{self.repo_id}@{self.commit_sha}"


def _known_tokens(token: str | None) -> list[str]:
    tokens = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    return [t for t in tokens if t]


def _scrub(message: str, token: str | None) -> str:
    """Remove any token from a message; keep its first line only."""
    first = message.strip().splitlines()[0] if message.strip() else message
    for secret in _known_tokens(token):
        first = first.replace(secret, "***")
    return first


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


def _unreachable(endpoint: str | None) -> str:
    """Why the Hub was not asked: offline mode, or no connection."""
    if constants.is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    return f"the Hub at {_endpoint(endpoint)} cannot be reached"


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, *, token: str | None,
                endpoint: str | None, action: str) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one-line :class:`HubError` messages."""
    where = f"{repo_id}@{revision}" if revision else repo_id
    hub = _endpoint(endpoint)
    try:
        yield
    except RevisionNotFoundError:
        raise HubError(f"{action} {repo_id}: revision '{revision}' not found "
                       f"(check the tag, branch or commit sha)") from None
    except GatedRepoError:
        raise HubError(f"{action} {repo_id}: the repository is gated; request access on "
                       f"{hub}/{repo_id} and use a token that has it") from None
    except RepositoryNotFoundError:
        raise HubError(f"{action} {repo_id}: repository not found on {hub} (or it is private and "
                       f"the token cannot read it)") from None
    except LocalEntryNotFoundError:
        raise HubError(f"{action} {where}: not in the local cache ({constants.HF_HUB_CACHE}) and "
                       f"{_unreachable(endpoint)}") from None
    except OfflineModeIsEnabled:
        raise HubError(f"{action} {where}: offline mode is on (HF_HUB_OFFLINE=1)") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise HubError(f"{action} {where}: authentication failed at {hub}: the token was "
                           f"rejected (set HF_TOKEN or run `hf auth login`)") from None
        if status == 403:
            raise HubError(f"{action} {where}: permission denied at {hub}: the token may not "
                           f"write to this repository") from None
        raise HubError(f"{action} {where}: Hub request failed ({status}): "
                       f"{_scrub(str(exc), token)}") from None
    except _NETWORK_ERRORS as exc:
        raise HubError(f"{action} {where}: cannot reach the Hub at {hub} "
                       f"({type(exc).__name__})") from None


def _default_message(config: CheckpointConfig) -> str:
    dataset = config.dataset if "dataset" not in config.absent else "?"
    return (f"segcl {config.segcl_version}: {config.method or 'model'} "
            f"{config.model['encoder']}+{config.model['decoder']} on {dataset}")


def push(
    checkpoint: Path,
    repo_id: str,
    *,
    private: bool = False,
    tag: str | None = None,
    message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Publish a checkpoint (folder or run directory) to a Hub model repository.

    Creates the repository if needed, then commits ``model.safetensors``, ``config.json`` and a
    model card regenerated from ``config.json``. Identical files make no new commit
    (``PushResult.changed`` is False and ``commit_sha`` is the existing head). With ``tag``, the
    commit is tagged too (an existing tag must already point at it).
    """
    check_repo_id(repo_id)
    if tag is not None and not _TAG.fullmatch(tag):
        raise ConfigError(f"{tag}: a tag may hold letters, digits, '.', '_' and '-'")
    folder = resolve_local(Path(checkpoint))
    weights = folder / WEIGHTS
    check_safetensors_header(weights)
    config = CheckpointConfig.from_file(folder / CONFIG)
    if constants.is_offline_mode():
        raise HubError(f"push {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); cannot push")
    card = render_model_card(config.to_dict(), repo_id=repo_id)
    digest = file_sha256(weights)
    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, None, token=token, endpoint=endpoint, action="push"):
        repo_url = api.create_repo(repo_id, exist_ok=True, private=private)
        before = _head(api, repo_id)
        operations = [
            CommitOperationAdd(path_in_repo=WEIGHTS, path_or_fileobj=str(weights)),
            CommitOperationAdd(path_in_repo=CONFIG, path_or_fileobj=str(folder / CONFIG)),
            CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode("utf-8")),
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No files have been modified": reported via `changed`
            info = api.create_commit(
                repo_id, operations, commit_message=message or _default_message(config)
            )
        commit_sha = str(info.oid)
        if tag is not None:
            _tag(api, repo_id, tag, commit_sha)
    return PushResult(repo_id=repo_id, commit_sha=commit_sha, changed=commit_sha != before,
                      url=str(repo_url), tag=tag, sha256=digest)


def _head(api: HfApi, repo_id: str) -> str | None:
    """Commit sha of ``main``; ``None`` for an empty repository."""
    try:
        return api.repo_info(repo_id, revision="main").sha
    except RevisionNotFoundError:
        return None


def _tag(api: HfApi, repo_id: str, tag: str, commit_sha: str) -> None:
    existing = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).tags}
    if tag in existing:
        if existing[tag] != commit_sha:
            raise HubError(f"push {repo_id}: tag '{tag}' already points at {existing[tag][:12]}; "
                           f"choose a new tag (tags are never moved)")
        return
    api.create_tag(repo_id, tag=tag, revision=commit_sha)


def _lfs_sha256_from_cache(path: Path) -> str | None:
    """The sha256 the Hub reported for a cached LFS file: the cache names blobs by it."""
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and _SHA256.fullmatch(target.name):
        return target.name
    return None


def pull(
    repo_id: str,
    revision: str | None = None,
    *,
    sha256: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Download a checkpoint into the Hugging Face cache and return its folder (verified).

    ``revision`` is a branch, tag or commit sha (default ``main``); the three files are fetched
    from the one commit it resolves to. ``sha256`` (the registry's pin) is checked against
    ``model.safetensors``; without it the Hub's LFS sha256 is used.
    """
    check_repo_id(repo_id)
    rev = revision or "main"
    where = f"{repo_id}@{rev}"
    kwargs: dict[str, Any] = {"endpoint": endpoint, "token": token,
                              "cache_dir": str(cache_dir) if cache_dir else None}
    with _hub_errors(repo_id, rev, token=token, endpoint=endpoint, action="pull"):
        config_path = _download(repo_id, CONFIG, rev, where, kwargs)
        commit = config_path.parent.name  # snapshots/<commit sha>/config.json
        weights = _download(repo_id, WEIGHTS, commit, where, kwargs)
        with contextlib.suppress(EntryNotFoundError):  # the card is optional for loading
            hf_hub_download(repo_id, CARD, revision=commit, **kwargs)
    folder = config_path.parent
    _verify(weights, repo_id, commit, sha256, api_kwargs={"endpoint": endpoint, "token": token})
    return folder


def _download(repo_id: str, filename: str, revision: str, where: str,
              kwargs: dict[str, Any]) -> Path:
    """``hf_hub_download`` one file; a file the repository lacks becomes a HubError."""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, **kwargs))
    except LocalEntryNotFoundError:
        cache = kwargs.get("cache_dir") or constants.HF_HUB_CACHE
        raise HubError(f"pull {where}: {filename} is not in the local cache ({cache}) and "
                       f"{_unreachable(kwargs.get('endpoint'))}") from None
    except EntryNotFoundError:
        raise HubError(f"pull {where}: the repository has no {filename}; "
                       f"it is not a segcl checkpoint") from None


def _verify(weights: Path, repo_id: str, commit: str, expected: str | None,
            api_kwargs: dict[str, Any]) -> None:
    source = "the registry (checkpoints.yaml)"
    if expected is None:
        expected = _lfs_sha256_from_cache(weights)
        source = "the Hub's LFS metadata"
    if expected is None and not constants.is_offline_mode():
        with _hub_errors(repo_id, commit, token=api_kwargs.get("token"),
                         endpoint=api_kwargs.get("endpoint"), action="pull"):
            infos = HfApi(**api_kwargs).get_paths_info(repo_id, [WEIGHTS], revision=commit)
        lfs = infos[0].lfs if infos else None
        expected = lfs.sha256 if lfs is not None else None
    if expected is None:
        warnings.warn(f"{repo_id}@{commit[:12]}: no sha256 to verify {WEIGHTS} against",
                      stacklevel=3)
        return
    actual = file_sha256(weights)
    if actual != expected.lower():
        location = os.path.realpath(weights)
        raise HubError(
            f"pull {repo_id}@{commit[:12]}: sha256 mismatch for {WEIGHTS}: expected "
            f"{expected[:16]}... from {source}, got {actual[:16]}...; the copy at {location} is "
            f"corrupted or was modified -- delete it and pull again"
        )


def fetch_file(repo_id: str, filename: str, revision: str | None = None, *,
               endpoint: str | None = None, token: str | None = None) -> Path:
    """Download one file of any Hub repository (e.g. timm weights) into the HF cache."""
    check_repo_id(repo_id)
    rev = revision or "main"
    kwargs: dict[str, Any] = {"endpoint": endpoint, "token": token}
    with _hub_errors(repo_id, rev, token=token, endpoint=endpoint, action="fetch"):
        try:
            return Path(hf_hub_download(repo_id, filename, revision=rev, **kwargs))
        except EntryNotFoundError:
            raise HubError(f"fetch {repo_id}@{rev}: the repository has no {filename}") from None
