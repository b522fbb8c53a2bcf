"""Encoder weights trained elsewhere: timm's pretrained weights, a ``.safetensors`` file or a Hub
repository.

``--encoder-weights`` accepts

- ``imagenet``: timm's default pretrained weights of the encoder (``resnet18`` ->
  ``timm/resnet18.a1_in1k``), as in segmentation_models_pytorch's ``encoder_weights="imagenet"``;
- ``imagenet:TAG``: any other of timm's pretrained tags of the encoder (``imagenet:augreg_in21k``
  for ``vit_base_patch16_224``; ``timm.list_pretrained("resnet18.*")`` lists them);
- ``path/to/weights.safetensors``: a timm state dict (or a segcl checkpoint's ``encoder.*`` keys);
- ``hf://user/name[@revision]`` or timm's ``hf-hub:user/name``: the repository's
  ``model.safetensors``.

timm's weights are found through timm's pretrained configuration of the tag (its ``hf_hub_id``)
and downloaded once from the Hugging Face Hub into the usual cache (``HF_HOME``); offline
(``HF_HUB_OFFLINE=1``) they are served from it. timm's own state-dict filters (position
embeddings, first convolution for ``in_chans``) are applied as when timm loads them itself.
Only safetensors files are read, never pickles: loading never executes code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from segcl.checkpoint import WEIGHTS, file_sha256, parse_hf_ref, read_safetensors
from segcl.errors import CheckpointError, ConfigError, HubError

if TYPE_CHECKING:
    from segcl.models.encoder import TimmEncoder

#: ``--encoder-weights`` value (optionally ``imagenet:TAG``) naming timm's pretrained weights
TIMM_WEIGHTS = "imagenet"


@dataclass(frozen=True)
class EncoderWeights:
    """What :func:`load_encoder_weights` loaded; stored in a checkpoint's ``config.json``
    (``encoder_weights``) as the provenance of the encoder's starting point."""

    source: str  # the --encoder-weights value
    sha256: str  # of the safetensors file that was read
    tensors: int  # encoder tensors loaded
    timm_name: str | None = None  # architecture.tag (timm weights)
    repo_id: str | None = None  # Hub repository (timm weights, hf:// or hf-hub: sources)
    revision: str | None = None  # its commit sha
    filename: str | None = None  # the file in that repository

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timm_tag(source: str | None) -> str | None:
    """``""`` for ``imagenet``, ``TAG`` for ``imagenet:TAG``, ``None`` for any other source."""
    if source == TIMM_WEIGHTS:
        return ""
    if source is not None and source.startswith(TIMM_WEIGHTS + ":"):
        return source[len(TIMM_WEIGHTS) + 1:]
    return None


def timm_pretrained_name(encoder: str, source: str) -> str:
    """The timm ``architecture.tag`` that ``--encoder-weights imagenet[:TAG]`` names for
    ``encoder``, checked against timm's registry (no network needed).

    Raises:
        ConfigError: an encoder timm does not know, or a tag it has no weights for (the message
            lists the tags it has).
    """
    from timm.models import get_pretrained_cfg, is_model, list_pretrained, split_model_name_tag

    tag = timm_tag(source)
    if tag is None:
        raise ConfigError(f"--encoder-weights {source}: not a timm tag (imagenet or imagenet:TAG)")
    if encoder.startswith("hf-hub:"):
        raise ConfigError(f"--encoder-weights {source} needs a timm model name as --encoder, got "
                          f"'{encoder}'; for a Hub encoder pass --encoder-weights {encoder}")
    arch, name_tag = split_model_name_tag(encoder)
    if not is_model(arch):
        raise ConfigError(f"unknown timm encoder '{encoder}'")
    if tag and name_tag and tag != name_tag:
        raise ConfigError(f"--encoder-weights {source} contradicts the tag of --encoder "
                          f"{encoder}; give the tag once")
    tag = tag or name_tag
    tags = [name.split(".", 1)[1] for name in list_pretrained(f"{arch}.*")]
    if not tag:
        default = get_pretrained_cfg(arch)
        if default is None or not tags:
            raise ConfigError(f"--encoder-weights {source}: timm has no pretrained weights for "
                              f"'{arch}'")
        tag = default.tag or tags[0]
    if tag not in tags:
        known = ", ".join(tags) if tags else "none"
        raise ConfigError(f"--encoder-weights {source}: timm has no '{tag}' weights for '{arch}' "
                          f"(its tags: {known})")
    return f"{arch}.{tag}"


def timm_pretrained_cfg(encoder: str, source: str) -> Any:
    """timm's ``PretrainedCfg`` of the weights ``source`` names (mean, std, Hub location)."""
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(timm_pretrained_name(encoder, source))


def _safetensors_name(filename: str) -> str:
    """The safetensors file timm publishes next to (or instead of) a pickle file name."""
    if filename.endswith(".safetensors"):
        return filename
    if filename == "pytorch_model.bin":
        return "model.safetensors"
    if filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors"
    return filename.rsplit(".", 1)[0] + ".safetensors"


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    """One file of a Hub repository, from the Hugging Face cache or downloaded into it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    what = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    hint = (f"copy the weights into the Hugging Face cache ({constants.HF_HUB_CACHE}) or pass a "
            ".safetensors file as --encoder-weights")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = ("offline mode is on (HF_HUB_OFFLINE=1)" if constants.is_offline_mode()
               else f"the Hub at {constants.ENDPOINT} cannot be reached")
        raise HubError(f"cannot download {what}: not in the local cache and {why}; "
                       f"{hint}") from None
    except EntryNotFoundError:
        raise HubError(f"cannot download {what}: the repository has no such file (segcl reads "
                       f"safetensors only); pass a .safetensors file as --encoder-weights") \
            from None
    except RepositoryNotFoundError:
        raise HubError(f"cannot download {what}: repository not found on {constants.ENDPOINT}; "
                       f"{hint}") from None
    except (HfHubHTTPError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"cannot download {what} ({first}); {hint}") from None


def _locate(source: str) -> tuple[Path, str | None]:
    """The safetensors file of an ``hf://``, ``hf-hub:`` or path source (and its repository)."""
    if source.startswith(("hf://", "hf-hub:")):
        from segcl.hub.remote import fetch_file

        ref = source if source.startswith("hf://") else "hf://" + source[len("hf-hub:"):]
        repo_id, revision = parse_hf_ref(ref)
        return fetch_file(repo_id, WEIGHTS, revision), repo_id
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{source}: encoder weights not found (imagenet[:TAG], a .safetensors "
                          "file, hf://user/name or hf-hub:user/name)")
    return path, None


def _snapshot_revision(path: Path) -> str | None:
    """The commit sha of a file in the Hugging Face cache (``.../snapshots/<sha>/file``)."""
    parent = path.parent
    return parent.name if parent.parent.name == "snapshots" else None


def encoder_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as the timm model inside :class:`TimmEncoder` names them (``encoder.model.`` and
    ``encoder.`` prefixes of segcl checkpoints are stripped)."""
    for prefix in ("encoder.model.", "encoder."):
        if any(k.startswith(prefix) for k in weights):
            return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return weights


def load_timm_weights(encoder: TimmEncoder, source: str = TIMM_WEIGHTS) -> EncoderWeights:
    """Load timm's pretrained weights ``imagenet[:TAG]`` into ``encoder``.

    The tag's ``hf_hub_id`` (timm's pretrained configuration) gives the Hub repository; its
    safetensors file is downloaded into the Hugging Face cache (or read from it offline), and
    timm builds the same feature extractor from that state dict, applying its own filters,
    before the weights are copied into ``encoder``.
    """
    name = timm_pretrained_name(encoder.name, source)
    cfg = timm_pretrained_cfg(encoder.name, source)
    if not cfg.hf_hub_id:
        where = f" (only {cfg.url})" if cfg.url else ""
        raise ConfigError(f"--encoder-weights {source}: timm's {name} weights are not on the "
                          f"Hugging Face Hub{where} and segcl reads safetensors only; pass a "
                          ".safetensors file")
    if cfg.custom_load == "hf":  # (custom_load=True means .npz at the url; the Hub has safetensors)
        raise ConfigError(f"--encoder-weights {source}: timm's {name} weights need timm's custom "
                          "loader (not a safetensors state dict); pass a .safetensors file")
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = _safetensors_name(cfg.hf_hub_filename or "pytorch_model.bin")
    path = _download(repo_id, filename, revision or None)
    state = read_safetensors(path)
    try:
        encoder.model.load_state_dict(encoder.timm_model(name, state).state_dict())
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: timm's {name} weights do not fit encoder "
                              f"'{encoder.name}' ({first})") from err
    return EncoderWeights(source=source, sha256=file_sha256(path),
                          tensors=len(encoder.model.state_dict()), timm_name=name,
                          repo_id=repo_id, revision=_snapshot_revision(path) or revision or None,
                          filename=filename)


def load_encoder_weights(encoder: TimmEncoder, source: str) -> EncoderWeights:
    """Load weights from ``source`` (see the module docstring) into ``encoder``.

    For a file or repository, keys the feature extractor does not have (a classifier head)
    are skipped; a shape mismatch or no matching key at all is a :class:`CheckpointError`.

    Returns:
        where the weights came from (:class:`EncoderWeights`, for the checkpoint's provenance).
    """
    if timm_tag(source) is not None:
        return load_timm_weights(encoder, source)
    path, repo_id = _locate(source)
    weights = encoder_state(read_safetensors(path))
    own = encoder.model.state_dict()
    matched = {k: v for k, v in weights.items() if k in own}
    bad = [k for k, v in matched.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: weights do not fit encoder '{encoder.name}' (e.g. "
                              f"'{bad[0]}' {tuple(matched[bad[0]].shape)} vs "
                              f"{tuple(own[bad[0]].shape)})")
    if not matched:
        raise CheckpointError(f"{source}: no tensor matches encoder '{encoder.name}'")
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} encoder tensors missing, e.g. "
                              f"'{missing[0]}'")
    encoder.model.load_state_dict(matched, strict=False)
    return EncoderWeights(source=source, sha256=file_sha256(path), tensors=len(matched),
                          repo_id=repo_id,
                          revision=_snapshot_revision(path) if repo_id else None,
                          filename=WEIGHTS if repo_id else None)
