"""A run directory: effective config, metrics as JSON lines, plots, ``best/`` and ``last/``."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from segcl.checkpoint import CHECKPOINT_FILES, STATE_META, STATE_TENSORS, recover
from segcl.errors import ConfigError
from segcl.fileio import atomic_write_text, check_target

#: what a run writes into its folder (a folder holding any of these holds a run)
RUN_FILES = ("config.yaml", "metrics.jsonl", "curves.png", "confusion_val.png", "best", "last")
LOCK = "run.lock"
#: what a run writes into its checkpoint folders (``best/``, ``last/``)
CHECKPOINT_ENTRIES = (*CHECKPOINT_FILES, STATE_TENSORS, STATE_META)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def clear_run(path: str | Path) -> None:
    """Remove the files of a run from ``path`` (``--overwrite``); other files are kept.

    Raises ConfigError, before anything is removed, when another live process holds the
    folder, or when a checkpoint folder (``best/``, ``last/``) holds an entry a run does not
    write (someone else's file: never deleted).
    """
    path = Path(path)
    owner = _lock_owner(path)
    if owner is not None and owner != os.getpid():
        raise ConfigError(f"{path}: run directory is in use by process {owner} ({path / LOCK})")
    foreign = sorted(entry for name in RUN_FILES if (path / name).is_dir()
                     for entry in (path / name).iterdir() if entry.name not in CHECKPOINT_ENTRIES)
    if foreign:
        raise ConfigError(f"{foreign[0]}: not written by a segcl run; --overwrite would delete "
                          "it (move it, or choose another --out)")
    for name in RUN_FILES:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _lock_owner(path: Path) -> int | None:
    """The live process holding ``path``'s lock, or None (no lock, or a killed owner's)."""
    try:
        pid = int((path / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _alive(pid) else None


def _release(lock: Path, created: list[Path]) -> None:
    """At exit: remove the lock, and the folders the run created (innermost first) if it
    left them empty, so that a run that failed before writing anything leaves no trace."""
    lock.unlink(missing_ok=True)
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours to remove): keep it and its parents
            return


class RunDir:
    """Owns the files of one training run.

    Layout: ``config.yaml`` (effective configuration), ``metrics.jsonl`` (one JSON object per
    logged step / evaluation), ``curves.png``, ``best/`` (checkpoint with the best validation
    mIoU) and ``last/`` (latest checkpoint + optimiser state for ``--resume``).

    One owner at a time: the writing process holds ``run.lock`` (its process id, created
    exclusively) until it exits; a second run on the same folder is refused with the owner's
    id. A lock left by a killed process is taken over (its process no longer exists). A fresh
    run refuses a folder that already holds run files (``--resume`` continues them,
    ``--overwrite`` clears them first: :func:`clear_run`).
    """

    def __init__(self, path: str | Path, resume: bool, write: bool = True):
        self.path = Path(path)
        self.write = write
        if write:
            self._lock()
        self.best = recover(self.path / "best")
        self.last = recover(self.path / "last")
        if resume and not (self.last / STATE_META).is_file():
            raise ConfigError(f"{self.path}: nothing to resume (no last/ checkpoint)")
        present = [n for n in RUN_FILES if (self.path / n).exists()]
        if write and not resume and present:
            raise ConfigError(
                f"{self.path}: run directory already holds a run ({', '.join(present)}); pass "
                "--resume to continue it, --overwrite to start again, or choose another --out"
            )
        self.metrics_path = self.path / "metrics.jsonl"

    def _lock(self) -> None:
        check_target(self.path, folder=True)
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{self.path}: cannot create the run directory ({err})") from err
        lock = self.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _lock_owner(self.path)
                if owner == os.getpid():
                    return  # this process already owns it (an earlier run in the same process)
                if owner is not None:
                    raise ConfigError(f"{self.path}: run directory is in use by process {owner} "
                                      f"({lock}); wait for it or choose another --out") from None
                lock.unlink(missing_ok=True)  # stale: its process was killed
                continue
            except OSError as err:
                raise ConfigError(f"{self.path}: cannot write to the run directory "
                                  f"({err.strerror})") from err
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            atexit.register(_release, lock, created)
            return
        raise ConfigError(f"{self.path}: cannot take the run directory's lock ({lock})")

    def _lines(self) -> list[tuple[str, dict[str, Any]]]:
        """The parsed records with their text; a torn line (a kill mid-write) is skipped."""
        out = []
        for line in self.metrics_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                out.append((line, json.loads(line)))
            except json.JSONDecodeError:
                warnings.warn(f"{self.metrics_path}: dropped a torn line ({line[:40]!r})",
                              stacklevel=2)
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drop records logged after ``step`` (the run resumes from there and logs them again)
        and any torn line."""
        if not self.write or not self.metrics_path.exists():
            return
        kept = [line for line, record in self._lines() if record.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line."""
        if self.write:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """All JSON-lines records logged so far."""
        if not self.metrics_path.exists():
            return []
        return [record for _, record in self._lines()]
