"""Atomic writes: an output that exists is complete; failures leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from segcl.data import read_mask, write_mask
from segcl.errors import ConfigError
from segcl.fileio import atomic_write, atomic_write_folder, atomic_write_text


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out.txt"
    if kind == "folder":  # a checkpoint folder: written as out.txt.tmp/, then swapped in
        atomic_write_folder(target, lambda tmp: (tmp / "a").write_text("complete"))
    else:
        atomic_write_text(target, "complete")

    def crash(tmp: Path) -> None:
        (tmp / "a" if kind == "folder" else tmp).write_text("half")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        (atomic_write_folder if kind == "folder" else atomic_write)(target, crash)
    assert (target / "a" if kind == "folder" else target).read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_masks_are_written_atomically(tmp_path: Path) -> None:
    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_mask(tmp_path / "a" / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "a" / "m.png"), mask)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.png"]


def test_bad_targets_give_one_clean_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        atomic_write_text(tmp_path / "dir", "x")
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            atomic_write_text(ro / "f.txt", "x")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_output_paths_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file: is a file, expected a folder"):
        atomic_write_text(tmp_path / "file" / "sub" / "out.json", "{}")
    assert (tmp_path / "file").read_text() == "x"


def test_a_failing_command_exits_with_data_loader_workers_alive(tiny_run, synthetic_data,
                                                                 tmp_path: Path) -> None:
    """An error raised while persistent DataLoader workers are alive must end the process
    (it used to hang at exit), with one Error line and nothing written."""
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / "dir").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SEGCL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "segcl", "evaluate", str(tiny_run), str(synthetic_data),
         "--json", str(tmp_path / "dir"), "--workers", "2", "--quiet"],
        capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ")
    assert "is a directory" in proc.stderr and list((tmp_path / "dir").iterdir()) == []
