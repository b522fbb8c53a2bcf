"""Atomic writes: an output that exists is complete; failures leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from segcl.data import read_mask, write_mask
from segcl.errors import ConfigError
from segcl.fileio import atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "complete")

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "complete"
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
