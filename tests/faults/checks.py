"""What every fault case asserts: the exit status, one line naming the culprit, and folders
left as they were apart from what the command should write."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from tests.conftest import run_cli

#: the common options of a training command that would otherwise run (tiny sizes, one step)
TRAIN = ("--encoder", "test_resnet", "--image-size", "48x64", "--workers", "0", "--steps", "1",
         "--batch-size", "4", "--quiet")


def case(name: str, *values: object, slow: bool = False, skip: str | None = None) -> object:
    """One parametrised case named ``name``; ``slow``: it starts a model-loading process (left
    out of quick runs with ``-m "not slow"``); ``skip``: why it cannot run here."""
    marks = [pytest.mark.slow] if slow else []
    if skip:
        marks.append(pytest.mark.skip(reason=skip))
    return pytest.param(*values, id=name, marks=marks)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots`` (hidden ones too; links not followed): path -> what it is
    (folder, link target, or file size and modification time)."""
    entries: dict[str, tuple] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder, name)
                st = path.lstat()
                if path.is_symlink():
                    entries[str(path)] = ("link", os.readlink(path))
                elif path.is_dir():
                    entries[str(path)] = ("folder",)
                else:
                    entries[str(path)] = ("file", st.st_size, st.st_mtime_ns)
    return entries


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """The paths added, removed or modified between two snapshots."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The ``Error:`` lines a command printed (stdout and stderr)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error:")]


def expect(args: Sequence[str | Path], cwd: Path, watched: Iterable[Path],
           names: Sequence[str] = (), status: int = 2, writes: Iterable[Path] = (),
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``segcl ARGS`` in ``cwd`` and assert how it ends.

    - the exit status is ``status``;
    - no traceback; with ``status`` 2 (refused), exactly one ``Error:`` line, holding every one
      of ``names`` (the option, the file, the key); otherwise no ``Error:`` line;
    - nothing under ``cwd`` and ``watched`` changed except the paths in ``writes`` (and what
      lies under them), and no ``*.tmp`` file is left anywhere there.
    """
    roots = [cwd, *watched]
    before = snapshot(*roots)
    proc = run_cli(*map(str, args), cwd=cwd, env=env)
    shown = f"segcl {' '.join(map(str, args))}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == status, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    if status == 2:
        lines = error_lines(proc)
        assert len(lines) == 1, shown
        for name in names:
            assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    else:
        assert not error_lines(proc), shown
    after = snapshot(*roots)
    allowed = [str(cwd / p) for p in writes]
    unexpected = {p for p in changes(before, after)
                  if not any(p == a or p.startswith(a + os.sep) for a in allowed)}
    assert not unexpected, f"{shown}\nchanged: {sorted(unexpected)}"
    assert not [p for p in after if p.endswith(".tmp")], f"{shown}\nleft: {sorted(after)}"
    return proc
