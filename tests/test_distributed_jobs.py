"""Several training jobs in one process under torchrun share one process group.

``scripts/bench_train.py --nproc 2`` runs the fine-tuning loop twice per process (replayed
batches, then from disk). The process group used to be destroyed at the end of each job and
created again by the next: under torchrun the new group rendezvoused through the launcher's
store under the same keys as the old one, and a process that arrived first read its peer's stale
address -- gloo "Connection reset by peer" or a hang (seen on CamVid, whose processes reach the
next job seconds apart). Here rank 1 arrives late on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segcl.engine import distributed
from segcl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

#: two fine-tuning jobs in each process; rank 1 starts the second one 3 s after rank 0
DRIVER = textwrap.dedent("""
    import os, sys, time
    import torch.distributed as dist
    from segcl.config import DataConfig, FinetuneConfig
    from segcl.engine.finetune import finetune

    data, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    groups = []
    for job in range(2):
        if rank == 1 and job == 1:
            time.sleep(3)
        cfg = FinetuneConfig(data=DataConfig(root=data, image_size=(48, 64), workers=1),
                             encoder="test_resnet", batch_size=2, steps=2, val_every=100,
                             device="cpu", out=f"{out}/job{job}", log_every=1)
        summary = finetune(cfg)
        groups.append(id(dist.group.WORLD))
        print(f"rank {rank} job {job} done, best {summary['best_miou']:.4f}", flush=True)
    print(f"rank {rank} one group: {groups[0] == groups[1]}", flush=True)
""")


def test_two_jobs_in_one_torchrun_process(synthetic_data, tmp_path) -> None:
    script = tmp_path / "two_jobs.py"
    script.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "SEGCL_DEBUG"}
    # a collective stuck on a dead peer fails after 30 s instead of the default 30 minutes
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                distributed.TIMEOUT_ENV: "30"})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(synthetic_data), str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rank in (0, 1):
        for job in (0, 1):
            assert f"rank {rank} job {job} done" in proc.stdout, out
        assert f"rank {rank} one group: True" in proc.stdout, out
    for job in (0, 1):  # rank 0 wrote both runs, each to its end
        records = [json.loads(line) for line in
                   (tmp_path / "runs" / f"job{job}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r.get("split") == "val"] == [2]
        assert (tmp_path / "runs" / f"job{job}" / "last" / "model.safetensors").is_file()


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_timeout_variable_is_checked(monkeypatch, value) -> None:
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=distributed.TIMEOUT_ENV):
        distributed.dist_timeout_s()


def test_timeout_variable_default_and_value(monkeypatch) -> None:
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.dist_timeout_s() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "45")
    assert distributed.dist_timeout_s() == 45
