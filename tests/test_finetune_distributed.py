"""``torchrun -m segcl finetune``: two CPU processes (gloo) against one, same global batch."""

from __future__ import annotations

import json
import math

import pytest

from segcl.checkpoint import read_training_state, read_weights
from tests.conftest import run_cli, run_torchrun

ARGS = ["--encoder", "test_resnet", "--image-size", "48x64", "--steps", "3", "--workers", "0",
        "--device", "cpu", "--contrast", "cross-image", "--memory-bank", "--contrast-warmup", "1",
        "--val-every", "100", "--quiet"]


@pytest.fixture(scope="module")
def runs(synthetic_data, tmp_path_factory):
    """The same 3 steps of 4 images: one process with batch 4, two processes with batch 2."""
    root = tmp_path_factory.mktemp("ddp-finetune")
    run_torchrun("finetune", str(synthetic_data), *ARGS, "--batch-size", "2",
                 "--out", str(root / "ddp"))
    run_cli("finetune", str(synthetic_data), *ARGS, "--batch-size", "4",
            "--out", str(root / "single"), env={"OMP_NUM_THREADS": "1"}, check=True)
    return root / "ddp", root / "single"


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rank_zero_alone_writes_one_complete_run(runs) -> None:
    ddp, _ = runs
    assert sorted(p.name for p in ddp.iterdir()) == ["best", "config.yaml", "confusion_val.png",
                                                     "curves.png", "last", "metrics.jsonl"]
    records = _records(ddp)
    train = [r for r in records if "split" not in r]
    val = [r for r in records if r.get("split") == "val"]
    # each step logged once (not once per process), one validation at the end
    assert [r["step"] for r in val] == [3]
    assert len({r["step"] for r in train}) == len(train) and train[-1]["step"] == 3
    assert all(math.isfinite(r["loss"]) for r in train)
    _, meta = read_training_state(ddp / "last")
    assert meta["state"]["step"] == 3
    assert not any(k.startswith("heads.") for k in read_weights(ddp / "best"))


def test_memory_bank_holds_the_entries_of_both_processes(runs) -> None:
    """Both runs see the same 4 images per step (rank r takes every other image of the shuffled
    epoch), so a bank that enqueues every process's entries ends with the single run's counts.
    A bank fed by rank 0 alone would hold about half of them."""
    ddp, single = runs
    counts = {}
    for name, run in (("ddp", ddp), ("single", single)):
        w = read_weights(run / "last")
        counts[name] = {k: w[f"heads.memory.{k}"].tolist() for k in ("pixel_count",
                                                                      "region_count")}
    assert sum(counts["single"]["region_count"]) > 0
    assert counts["ddp"] == counts["single"]
