"""The command-line tool end to end on generated data, and its handling of bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from tests.conftest import run_cli


def test_help_has_examples() -> None:
    proc = run_cli("finetune", "--help", check=True)
    assert "Examples" in proc.stdout and "--labeled-fraction" in proc.stdout


def test_finetune_writes_a_complete_run(tiny_run) -> None:
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "best/model.safetensors",
                 "best/config.json", "best/README.md", "last/training_state.json"):
        assert (tiny_run / name).is_file(), name
    records = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "val" for r in records)
    assert any("loss" in r and "lr" in r for r in records)
    config = json.loads((tiny_run / "best/config.json").read_text())
    assert config["model"]["encoder"] == "test_resnet"
    assert config["data"]["classes"][0] == "background"
    assert 0.0 <= config["metrics"]["val"]["miou"] <= 1.0


def test_evaluate_reproduces_training_metric(tiny_run, synthetic_data, tmp_path) -> None:
    out = tmp_path / "eval.json"
    run_cli("evaluate", str(tiny_run), str(synthetic_data), "--json", str(out), "--workers", "0",
            "--confusion", str(tmp_path / "cm.png"), check=True)
    metrics = json.loads(out.read_text())
    best = json.loads((tiny_run / "best/config.json").read_text())["metrics"]["val"]
    assert abs(metrics["miou"] - best["miou"]) < 1e-6
    assert len(metrics["iou"]) == 4 and (tmp_path / "cm.png").stat().st_size > 0


def test_predict_keeps_sizes_paths_and_reports_bad_files(tiny_run, synthetic_data,
                                                          tmp_path) -> None:
    src = tmp_path / "in"
    shutil.copytree(synthetic_data / "val" / "images", src / "a" / "b")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(src / "odd_size.png")
    (src / "a" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    proc = run_cli("predict", str(tiny_run), str(src), "--out", str(tmp_path / "out"),
                   "--overlay", "--batch-size", "3")
    assert proc.returncode == 1, proc.stderr
    assert "corrupt.jpg" in proc.stdout + proc.stderr
    masks = sorted((tmp_path / "out").rglob("*.png"))
    assert len(masks) == 5  # 4 val images + the odd-size one; the corrupt file is skipped
    odd = Image.open(tmp_path / "out" / "odd_size.png")
    assert odd.size == (40, 30) and odd.mode == "P"
    assert (tmp_path / "out" / "a" / "b").is_dir()
    assert list((tmp_path / "out").rglob("*_overlay.jpg"))


def test_resume_continues_a_finished_run(tiny_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    proc = run_cli("finetune", "--resume", "--out", str(run), check=True)
    assert "resumed" in proc.stdout + proc.stderr and "Warning" not in proc.stderr
    # --steps sets the new total; any other option given is named in one warning, not applied
    proc = run_cli("finetune", "x", "--resume", "--out", str(run), "--steps", "8", "--lr", "0.5",
                   "--quiet", check=True)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "ignored: DATA, --lr" in warning[0], proc.stderr
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in x]
    assert steps[-1] == 8
    assert "lr: 0.5" not in (run / "config.yaml").read_text()


def test_bad_inputs_give_one_line_errors(synthetic_data, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    (data / "train" / "masks" / "synth_0000.png").unlink()
    proc = run_cli("finetune", str(data), "--encoder", "test_resnet", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("Error:") and "synth_0000" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1

    proc = run_cli("finetune", str(data), "--encoder", "test_resnet", "--out", str(tmp_path / "r"),
                   env={"SEGCL_DEBUG": "1"})
    assert "Traceback" in proc.stderr

    proc = run_cli("evaluate", str(tmp_path), str(synthetic_data))
    assert proc.returncode == 2 and "Error:" in proc.stderr and "Traceback" not in proc.stderr

    proc = run_cli("predict", str(tmp_path / "nothing-here"), str(synthetic_data))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_label_out_of_range_is_named(synthetic_data, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    mask_path = data / "val" / "masks" / "synth_0001.png"
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = 9
    Image.fromarray(mask).save(mask_path)
    proc = run_cli("finetune", str(data), "--encoder", "test_resnet", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "synth_0001" in proc.stderr and "9" in proc.stderr


def test_demo_runs_end_to_end(tmp_path) -> None:
    proc = run_cli("demo", "--out", str(tmp_path / "demo"), "--encoder", "test_resnet",
                   "--steps", "2", "--device", "cpu", "--quiet", check=True)
    assert "labels only" in proc.stdout and "semi-supervised" in proc.stdout
    assert "gain of the unlabelled images" in proc.stdout
    assert len(list((tmp_path / "demo" / "predictions").rglob("*.png"))) == 16
    again = run_cli("demo", "--out", str(tmp_path / "demo"), "--quiet")
    assert again.returncode == 2 and "already holds a demo" in again.stderr
