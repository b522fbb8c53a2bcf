"""One exception hierarchy. The CLI turns every :class:`SegclError` into a one-line message."""

from __future__ import annotations


class SegclError(Exception):
    """Base class of every error segcl raises on purpose (bad input, bad checkpoint, ...)."""


class DataError(SegclError):
    """A dataset, image or mask cannot be used (missing, unreadable, wrong size, bad labels)."""


class ConfigError(SegclError):
    """An option or configuration value is invalid."""


class CheckpointError(SegclError):
    """A checkpoint is missing, incomplete, or does not match the model it is loaded into."""


class HubError(SegclError):
    """A Hugging Face Hub operation or registry lookup failed."""
