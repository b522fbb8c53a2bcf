"""The checkpoint format: one folder, three files, one owner.

A checkpoint is a folder holding

- ``model.safetensors``: the weights (:func:`save_checkpoint`, :func:`read_weights`; safetensors,
  so loading never executes code; checked against the SHA-256 recorded in ``config.json``);
- ``config.json``: a :class:`CheckpointConfig` (architecture, :class:`DataSpec`, provenance),
  checked on load with errors that name the file and the key;
- ``README.md``: a model card generated from ``config.json`` (:func:`render_model_card`);

plus, for a checkpoint a run can resume from, ``training_state.safetensors`` / ``.json``.
Folders are written atomically. Model references (a local folder or run directory,
``hf://user/name[@rev]``, a registry name) are parsed by :func:`parse_model_ref`;
:func:`segcl.hub.refs.resolve_model_ref` fetches the remote ones.

Modules: ``config`` (config.json), ``files`` (file names, reading and writing; the only code that
opens a safetensors file), ``refs`` (model references), ``card`` (the model card). This package
imports nothing of segcl but ``errors`` and ``fileio``; ``models``, ``hub`` and ``engine`` use it.
"""

from segcl.checkpoint.card import render_model_card
from segcl.checkpoint.config import CONFIG, WEIGHTS_SHA256, CheckpointConfig, DataSpec
from segcl.checkpoint.files import (
    CARD,
    CHECKPOINT_FILES,
    REQUIRED_FILES,
    STATE_META,
    STATE_TENSORS,
    WEIGHTS,
    check_safetensors_header,
    file_sha256,
    flatten_optimizer_state,
    load_prefixed_state,
    load_state_into,
    read_config,
    read_safetensors,
    read_training_state,
    read_weights,
    recover,
    save_checkpoint,
    unflatten_optimizer_state,
)
from segcl.checkpoint.refs import (
    HF_PREFIX,
    REPO_ID,
    RUN_SUBDIRS,
    ModelRef,
    check_repo_id,
    is_checkpoint_dir,
    parse_hf_ref,
    parse_model_ref,
    resolve_local,
)

__all__ = [
    "CARD",
    "CHECKPOINT_FILES",
    "CONFIG",
    "HF_PREFIX",
    "REPO_ID",
    "REQUIRED_FILES",
    "RUN_SUBDIRS",
    "STATE_META",
    "STATE_TENSORS",
    "WEIGHTS",
    "WEIGHTS_SHA256",
    "CheckpointConfig",
    "DataSpec",
    "ModelRef",
    "check_repo_id",
    "check_safetensors_header",
    "file_sha256",
    "flatten_optimizer_state",
    "is_checkpoint_dir",
    "load_prefixed_state",
    "load_state_into",
    "parse_hf_ref",
    "parse_model_ref",
    "read_config",
    "read_safetensors",
    "read_training_state",
    "read_weights",
    "recover",
    "render_model_card",
    "resolve_local",
    "save_checkpoint",
    "unflatten_optimizer_state",
]
