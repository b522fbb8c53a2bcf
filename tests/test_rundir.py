"""Run folders: one owner at a time, no silent mixing of runs, --out is the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segcl.cli.options import saved_config
from segcl.config import FinetuneConfig, load_yaml
from segcl.engine.rundir import LOCK, RunDir, clear_run
from segcl.errors import ConfigError
from tests.conftest import run_cli


def test_a_live_owner_keeps_the_folder(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK).write_text(str(other.pid))
        with pytest.raises(ConfigError, match=f"in use by process {other.pid}"):
            RunDir(tmp_path, resume=False)
        with pytest.raises(ConfigError, match="in use"):
            clear_run(tmp_path)
    finally:
        other.kill()
        other.wait()
    RunDir(tmp_path, resume=False)  # its owner is gone: the stale lock is taken over
    assert (tmp_path / LOCK).read_text() == str(os.getpid())


def test_a_fresh_run_refuses_a_crashed_runs_files(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.jsonl\).*--overwrite"):
        RunDir(tmp_path, resume=False)
    clear_run(tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / "notes.txt").exists()
    RunDir(tmp_path, resume=False)


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunDir(tmp_path / "f", resume=False)


def test_resume_of_a_copy_continues_the_copy(tiny_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns(LOCK))
    cfg = saved_config(FinetuneConfig, copy, resume=True)
    assert cfg is not None and cfg.out == str(copy)
    assert load_yaml(FinetuneConfig, copy / "config.yaml").out == str(tiny_run)
    assert Path(cfg.data.root).is_absolute()  # the same data from any working directory
    # the command itself: tests/faults/test_resume.py


def test_cli_overwrite_and_refusal(synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("finetune", str(synthetic_data), "--encoder", "test_resnet", "--image-size", "48x64",
            "--steps", "1", "--batch-size", "4", "--workers", "0", "--out", str(out), "--quiet")
    run_cli(*args, check=True)
    again = run_cli(*args)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert "Traceback" not in again.stderr
    run_cli(*args, "--overwrite", check=True)
    both = run_cli(*args, "--overwrite", "--resume")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_a_torn_metrics_line_is_dropped(tmp_path: Path) -> None:
    run = RunDir(tmp_path, resume=False)
    run.metrics_path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # killed mid-write
    with pytest.warns(UserWarning, match="torn line"):
        assert [r["step"] for r in run.records()] == [1, 2]
    with pytest.warns(UserWarning, match="torn line"):
        run.truncate_metrics(5)
    assert run.metrics_path.read_text() == '{"step": 1}\n{"step": 2}\n'
