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

from segcl.checkpoint import read_weights
from tests.conftest import REPO, run_cli


def _steps(kind: str) -> int:
    # pretrain logs every 10 steps: with 12 steps the last two ran between two polls of
    # metrics.jsonl on a fast machine, so it gets enough steps after its first log to be killed
    return 40 if kind.startswith("pretrain") else 12


def _args(kind: str, data: Path, out: Path, workers: int) -> list[str]:
    common = ["--encoder", "test_resnet", "--image-size", "48x64", "--steps", str(_steps(kind)),
              "--batch-size", "2", "--workers", str(workers), "--seed", "5", "--out", str(out),
              "--quiet"]
    if kind == "finetune":  # a checkpoint at every epoch end (4 steps)
        return ["finetune", str(data), "--labeled-count", "8", "--val-every", "1",
                "--brightness", "0.3", *common]
    if kind == "finetune-mid-epoch":  # 6-step epochs, no epoch-end checkpoint: mid-epoch only
        return ["finetune", str(data), "--labeled-count", "12", "--val-every", "100",
                "--checkpoint-every", "1", *common]
    method = "moco" if kind == "pretrain-moco" else "simclr"  # moco: a queue and a key branch
    return ["pretrain", str(data), "--method", method, "--checkpoint-every", "1",
            "--queue-size", "16", *common]


def _last_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines if x.strip().startswith("{")]
    return max(steps, default=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind, workers", [("finetune", 0), ("finetune", 2),
                                           ("finetune-mid-epoch", 2), ("pretrain", 2),
                                           ("pretrain-moco", 0)])
def test_kill_9_then_resume_is_bit_exact(synthetic_data: Path, tmp_path: Path, kind: str,
                                         workers: int) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cli(*_args(kind, synthetic_data, full, workers), check=True)

    kill_at = random.Random(f"{kind}{workers}").randint(3, 9)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "segcl", *_args(kind, synthetic_data,
                                                                    killed, workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while _last_step(killed) < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its DataLoader workers, mid-step
    proc.wait()
    assert _last_step(killed) < _steps(kind), "the run finished before it could be killed"

    run_cli(kind.split("-")[0], "--resume", "--out", str(killed), "--quiet", check=True)
    a, b = read_weights(full / "last"), read_weights(killed / "last")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()
             if '"split"' not in x]
    assert steps == sorted(set(steps))  # no step logged twice
