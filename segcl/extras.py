"""Optional dependencies (the ``segcl[...]`` extras): imported where they are used, with one
clear error when they are not installed."""

from __future__ import annotations

import importlib
from types import ModuleType

from segcl.errors import ConfigError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise a :class:`ConfigError` naming the extra that installs it.

    >>> ort = require("onnxruntime", "onnx", "predicting with an .onnx model")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{feature} needs the optional package '{module}', which is not "
                          f"installed: pip install 'segcl[{extra}]'") from err
