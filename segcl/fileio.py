"""Atomic file writes: a file that exists is complete.

Every output segcl writes (masks, overlays, plots, configs, checkpoint files) goes through
:func:`atomic_write`: the content is written to a temporary file next to the target, flushed, and
renamed over it with ``os.replace`` (atomic on POSIX and Windows). A process killed mid-write
leaves at most a hidden ``.NAME.*.tmp`` file, never a truncated output under the real name.
A folder whose files belong together (a checkpoint) goes through :func:`atomic_write_folder`:
written as ``NAME.tmp`` and swapped in with renames, so it is always the old or the new folder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from segcl.errors import ConfigError


def check_target(path: str | Path, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written as a file (``folder=True``: as a
    folder): it is not a folder (not a file), and no existing folder above it is a file.

    Raises:
        ConfigError: naming the path (or the file in its way).
    """
    out = Path(path)
    try:
        if folder and out.exists() and not out.is_dir():
            raise ConfigError(f"{out}: is a file, expected a folder")
        if not folder and out.is_dir():
            raise ConfigError(f"{out}: is a directory, expected a file path")
        blocker = next((p for p in out.parents if p.exists()), None)
    except OSError as err:  # a name too long for the file system, a loop of links
        raise ConfigError(f"{out}: cannot be used as an output path ({err.strerror})") from None
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{blocker}: is a file, expected a folder (for {out})")
    return out


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path next to ``path``, then rename it into place.

    Raises:
        ConfigError: ``path`` is a directory, or its folder cannot be created or written
            (nothing is left behind).
    """
    out = check_target(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{out.parent}: cannot create the folder ({err.strerror})") from err
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, out)
    except PermissionError as err:
        raise ConfigError(f"{out}: cannot write ({err.strerror})") from err
    finally:
        tmp.unlink(missing_ok=True)
    return out


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, flushed to disk before the rename."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_folder(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on an empty folder ``NAME.tmp`` next to ``folder``, then swap it in.

    The old folder is first renamed to ``NAME.old`` and removed once the new one is in place; a
    process killed between the two renames leaves ``NAME.old``, which :func:`recover_folder`
    puts back. So ``folder`` is always complete: the previous content or the new one. A
    ``write`` that raises (or is interrupted with Ctrl-C) has its ``NAME.tmp`` removed.
    """
    final = Path(folder)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:  # a failed or interrupted write leaves no NAME.tmp behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def recover_folder(folder: str | Path) -> Path:
    """Return ``folder``, restoring it from ``NAME.old`` if a swap was interrupted."""
    final = Path(folder)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)
    return final


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Parse a YAML file with ``yaml.safe_load`` (no code is executed).

    Raises:
        ConfigError: one line naming the file and, for a syntax error, the problem and its
            line and column (``what`` says what the file is).
    """
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        reason = (f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
                  if problem and mark is not None else " ".join(str(err).split()))
        raise ConfigError(f"{path}: cannot read {what} ({reason})") from err
