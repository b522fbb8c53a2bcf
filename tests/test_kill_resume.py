"""kill -9 at a random step, then --resume: the same final weights as the uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from segcl.engine.checkpoint import read_weights
from tests.conftest import REPO, run_cli


def _args(data: Path, out: Path, workers: int) -> list[str]:
    return ["finetune", str(data), "--encoder", "test_resnet", "--image-size", "48x64",
            "--labeled-count", "8", "--steps", "12", "--batch-size", "2", "--workers",
            str(workers), "--val-every", "1", "--brightness", "0.3", "--seed", "5",
            "--out", str(out), "--quiet"]


def _last_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines if x.strip().startswith("{")]
    return max(steps, default=0)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_kill_9_then_resume_is_bit_exact(synthetic_data: Path, tmp_path: Path,
                                         workers: int) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cli(*_args(synthetic_data, full, workers), check=True)

    kill_at = random.Random(workers).randint(3, 9)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "segcl", *_args(synthetic_data, killed,
                                                                    workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while _last_step(killed) < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its DataLoader workers, mid-step
    proc.wait()
    assert _last_step(killed) < 12, "the run finished before it could be killed"

    run_cli("finetune", "--resume", "--out", str(killed), "--quiet", check=True)
    a, b = read_weights(full / "last"), read_weights(killed / "last")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()
             if '"split"' not in x]
    assert steps == sorted(set(steps))  # no step logged twice
