"""Checkpoints on the Hugging Face Hub and the registry of named checkpoints.

Public API (imported lazily, so that ``import segcl.hub`` does not pull in huggingface_hub):

- :func:`resolve_model_ref` (``refs``); :func:`is_checkpoint_dir`, :func:`parse_hf_ref` and
  :func:`render_model_card` (re-exported from :mod:`segcl.checkpoint`, which owns the format)
- :func:`push`, :func:`pull`, :class:`PushResult` (``remote``)
- :func:`load_registry`, :class:`RegistryEntry`, :func:`default_registry_path` (``registry``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "resolve_model_ref": "segcl.hub.refs",
    "is_checkpoint_dir": "segcl.checkpoint.refs",
    "parse_hf_ref": "segcl.checkpoint.refs",
    "push": "segcl.hub.remote",
    "pull": "segcl.hub.remote",
    "PushResult": "segcl.hub.remote",
    "load_registry": "segcl.hub.registry",
    "RegistryEntry": "segcl.hub.registry",
    "default_registry_path": "segcl.hub.registry",
    "render_model_card": "segcl.checkpoint.card",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segcl.hub' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return list(__all__)
