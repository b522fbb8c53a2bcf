"""``finetune --patience N``: stop after N validations without a better val mIoU, resume-safe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from segcl.checkpoint import read_config, read_training_state, read_weights
from segcl.config import DataConfig, FinetuneConfig, OptimConfig
from segcl.engine import finetune as finetune_module
from segcl.engine.callbacks import Callback
from segcl.engine.state import TrainState
from segcl.errors import ConfigError
from tests.conftest import run_cli

#: scripted val mIoU by step (4 steps per epoch, one validation per epoch): the best is at
#: step 8; 12, 16 (a tie is no improvement) and 20 do not beat it, so patience 3 stops at 20
MIOU = {4: 0.10, 8: 0.20, 12: 0.15, 16: 0.20, 20: 0.19, 24: 0.50, 28: 0.60}


class _Recorder(Callback):
    """Keeps the current step (the scripted evaluation reads it) and the messages; can stop
    the process at a step, as a kill would."""

    def __init__(self, kill_at: int | None = None):
        self.step, self.kill_at, self.messages = 0, kill_at, []

    def on_step(self, step: int, logs: dict[str, Any]) -> None:
        self.step = step
        if step == self.kill_at:
            raise KeyboardInterrupt

    def on_message(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture()
def scripted(monkeypatch):
    """Real validation, with its mIoU replaced by :data:`MIOU` at the current step."""
    real = finetune_module.evaluate_loader
    recorder: dict[str, _Recorder] = {}

    def fake(*args, **kwargs):
        return {**real(*args, **kwargs), "miou": MIOU[recorder["cb"].step]}

    monkeypatch.setattr(finetune_module, "evaluate_loader", fake)
    return recorder


def _cfg(data: Path, out: Path, patience: int | None) -> FinetuneConfig:
    return FinetuneConfig(
        data=DataConfig(root=str(data), image_size=(48, 64), labeled_count=8, workers=0),
        optim=OptimConfig(warmup_steps=2), out=str(out), encoder="test_resnet", steps=28,
        batch_size=2, val_every=1, log_every=1, patience=patience, device="cpu", seed=3,
    )


def _run(cfg: FinetuneConfig, recorder: dict, kill_at: int | None = None,
         resume: bool = False) -> tuple[dict[str, Any], _Recorder]:
    cb = recorder["cb"] = _Recorder(kill_at)
    return finetune_module.finetune(cfg, cb, resume=resume), cb


def _records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]


def test_patience_stops_keeps_the_best_and_logs(synthetic_data, tmp_path, scripted) -> None:
    out = tmp_path / "run"
    result, cb = _run(_cfg(synthetic_data, out, patience=3), scripted)
    assert result["stopped_early"] and result["steps"] == 20
    assert result["best_step"] == 8 and result["best_miou"] == pytest.approx(0.20)
    stop = [r for r in _records(out) if r.get("event") == "early_stop"]
    assert stop == [{"step": 20, "epoch": 5, "event": "early_stop", "patience": 3,
                     "best_miou": 0.20, "best_step": 8}]
    assert any("early stopping at step 20" in m for m in cb.messages)
    assert read_config(out / "best").metrics["val"]["miou"] == pytest.approx(0.20)
    assert read_training_state(out / "last")[1]["state"]["stale_evals"] == 3
    assert max(r["step"] for r in _records(out)) == 20  # no training after the stop


def test_without_patience_the_run_goes_on(synthetic_data, tmp_path, scripted) -> None:
    result, _ = _run(_cfg(synthetic_data, tmp_path / "run", patience=0), scripted)
    assert not result["stopped_early"] and result["steps"] == 28 and result["best_step"] == 28


def test_resume_after_a_kill_stops_where_the_full_run_does(synthetic_data, tmp_path,
                                                          scripted) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(_cfg(synthetic_data, full, patience=3), scripted)
    # killed mid-epoch after the validation at step 12 (one stale validation saved in last/)
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(synthetic_data, killed, patience=3), scripted, kill_at=14)
    assert read_training_state(killed / "last")[1]["state"]["stale_evals"] == 1
    result, _ = _run(_cfg(synthetic_data, killed, patience=3), scripted, resume=True)
    assert result["stopped_early"] and result["steps"] == 20 and result["best_step"] == 8
    assert _records(killed) == _records(full)
    a, b = read_weights(full / "last"), read_weights(killed / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming a run that stopped early does not train on
    again, _ = _run(_cfg(synthetic_data, killed, patience=3), scripted, resume=True)
    assert again["steps"] == 20 and again["stopped_early"]
    assert _records(killed) == _records(full)


def test_counter() -> None:
    st = TrainState()
    assert st.record_eval(0.3) and st.stale_evals == 0
    assert not st.record_eval(0.3) and not st.record_eval(None) and st.stale_evals == 2
    assert st.patience_spent(2) and not st.patience_spent(3)
    assert not st.patience_spent(0) and not st.patience_spent(None)
    assert st.record_eval(0.31) and st.stale_evals == 0 and not st.patience_spent(1)


def test_patience_is_checked_like_every_option(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--patience must be a number >= 0, got -1"):
        FinetuneConfig(patience=-1)
    proc = run_cli("finetune", str(tmp_path), "--patience", "-2", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and proc.stderr.startswith("Error: --patience must be")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
