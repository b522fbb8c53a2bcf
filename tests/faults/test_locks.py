"""One owner per run folder: a live owner's folder is refused (naming the folder and the owner's
process id) and left untouched; a dead owner's lock is taken over; a fresh run never mixes
with the files of another run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from segcl.engine.rundir import LOCK
from tests.conftest import REPO
from tests.faults.checks import TRAIN, case, expect

LIVE = os.getpid()  # this test process: alive while the cases run


def dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def locked(owner: Callable[[], object], crashed: bool = False, copy: bool = False) -> Callable:
    """A run folder ``run/`` whose lock names ``owner()``; with ``crashed``, holding a killed
    run's metrics.jsonl too; with ``copy``, a copy of the tiny run."""

    def setup(folder: Path, run: Path) -> None:
        if copy:
            shutil.copytree(run, folder / "run", ignore=shutil.ignore_patterns(LOCK))
        (folder / "run").mkdir(exist_ok=True)
        if crashed:
            (folder / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
        (folder / "run" / LOCK).write_text(str(owner()))

    return setup


def with_foreign_file(folder: Path, run: Path) -> None:
    """A copy of the tiny run as ``run/`` whose best/ also holds a file no run writes."""
    shutil.copytree(run, folder / "run", ignore=shutil.ignore_patterns(LOCK))
    (folder / "run" / "best" / "notes.txt").write_text("someone else's file")


FINETUNE = ["finetune", "{data}", *TRAIN, "--out", "run"]
PRETRAIN = ["pretrain", "{data}", *TRAIN, "--method", "simclr", "--out", "run"]

#: setup, command, exit status, what the message must name, what may change
CASES = [
    case("finetune on a live owner's folder", locked(lambda: LIVE), FINETUNE, 2,
         ["run", f"in use by process {LIVE}"], []),
    case("pretrain on a live owner's folder", locked(lambda: LIVE), PRETRAIN, 2,
         ["run", f"in use by process {LIVE}"], [], slow=True),
    case("--overwrite of a live owner's folder", locked(lambda: LIVE, crashed=True),
         [*FINETUNE, "--overwrite"], 2, ["run", f"in use by process {LIVE}"], [], slow=True),
    case("--resume of a live owner's run", locked(lambda: LIVE, copy=True),
         ["finetune", "--resume", "--out", "run"], 2, ["run", f"in use by process {LIVE}"], [],
         slow=True),
    # a killed run leaves its lock: the refused run takes the stale lock over, then lets it go
    case("fresh run on a crashed run's files", locked(dead_pid, crashed=True), FINETUNE, 2,
         ["run", "already holds a run", "--overwrite"], [f"run/{LOCK}"], slow=True),
    case("a dead owner's lock is taken over", locked(dead_pid), FINETUNE, 0, [], ["run"]),
    case("--overwrite never deletes a file a run did not write", with_foreign_file,
         [*FINETUNE, "--overwrite"], 2, ["run/best/notes.txt", "--overwrite"], [], slow=True),
    case("a lock without a process id is taken over", locked(lambda: "garbage"), FINETUNE, 0,
         [], ["run"], slow=True),
]


@pytest.mark.parametrize("setup, command, status, names, writes", CASES)
def test_one_owner_per_run_folder(setup: Callable, command: list[str], status: int,
                                  names: list[str], writes: list[str], synthetic_data: Path,
                                  tiny_run: Path, tmp_path: Path) -> None:
    setup(tmp_path, tiny_run)
    args = [a.format(data=synthetic_data) for a in command]
    expect(args, tmp_path, [synthetic_data, tiny_run], names, status, writes)
    if status == 0:  # the run took the folder over, trained, and let it go
        assert (tmp_path / "run" / "last" / "model.safetensors").is_file()
        assert not (tmp_path / "run" / LOCK).exists()


@pytest.mark.slow
def test_a_second_run_is_refused_while_the_first_trains(synthetic_data: Path,
                                                        tmp_path: Path) -> None:
    """Two real ``finetune`` processes on one --out: the second is refused, naming the first."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [a.format(data=synthetic_data) for a in FINETUNE]
    first = subprocess.Popen([sys.executable, "-m", "segcl", *args, "--steps", "100000"],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "run" / "metrics.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended"
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "segcl", *args], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith("Error: run: run directory is in use by process "
                                    f"{first.pid}"), second.stderr
    assert (tmp_path / "run" / LOCK).read_text() == str(first.pid)


@pytest.mark.slow
def test_ctrl_c_says_interrupted_and_lets_the_folder_go(synthetic_data: Path,
                                                        tmp_path: Path) -> None:
    """SIGINT during training: exit 130, one "Interrupted." line, no traceback, no lock and no
    ``.tmp`` left (typer turns the KeyboardInterrupt into Exit(130): the message must show)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [a.format(data=synthetic_data) for a in FINETUNE]
    # a suite started in the background (`pytest &`) inherits SIGINT ignored, and so would the
    # run: give it the default disposition, as in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "segcl", *args, "--steps", "100000"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "run" / "metrics.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Interrupted." in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / LOCK).exists()
    assert not list((tmp_path / "run").rglob("*.tmp"))
