"""Shared fixtures: a small generated dataset and a tiny trained run."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from segcl.data.synthetic import make_synthetic_dataset
from segcl.engine.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"

torch.set_num_threads(min(2, torch.get_num_threads()))


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m segcl ARGS`` in a subprocess (the way a user runs it)."""
    full_env = {k: v for k, v in os.environ.items() if k != "SEGCL_DEBUG"}
    full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "segcl", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"segcl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def forged_png(side: int) -> bytes:
    """A tiny valid PNG whose header claims ``side`` x ``side`` pixels (a decompression bomb's
    header, without the bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def run_torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC -m segcl ARGS`` on the CPU (gloo), one
    thread per process; fails with both processes' output."""
    env = {k: v for k, v in os.environ.items() if k != "SEGCL_DEBUG"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc), "-m", "segcl", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A generated folder dataset: 12 train + 4 val images of 48x64, 4 classes."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", n_train=12, n_val=4,
                                  size=(48, 64), seed=0)


@pytest.fixture(scope="session")
def tiny_run(synthetic_data, tmp_path_factory) -> Path:
    """A run directory fine-tuned for a few steps with a tiny timm encoder."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_cli("finetune", str(synthetic_data), "--encoder", "test_resnet", "--image-size", "48x64",
            "--steps", "6", "--batch-size", "4", "--workers", "0", "--warmup-steps", "2",
            "--val-every", "1", "--out", str(out), "--quiet", check=True)
    return out


class StopAt(Callback):
    """Kill a run (as an exception) when it reaches ``step``, before later callbacks (the
    loggers) hear of that step: the in-process stand-in for kill -9 in resume tests."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, step: int, logs: dict) -> None:
        if step == self.step:
            raise KeyboardInterrupt
