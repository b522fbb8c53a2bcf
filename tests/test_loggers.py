"""Experiment loggers: what TensorBoard event files and a local MLflow store hold after a run
(read back), resume into the same TensorBoard folder / MLflow run without duplicate steps, W&B
through a stand-in module (and offline when installed), and one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from segcl.config import DataConfig, FinetuneConfig, OptimConfig, PretrainConfig
from segcl.engine.finetune import finetune
from segcl.engine.pretrain import pretrain
from segcl.engine.rundir import clear_run
from segcl.errors import ConfigError
from segcl.loggers import LOGGERS, build_loggers
from segcl.loggers.base import metric_name, scalars
from segcl.viz import default_palette, mask_rgb, prediction_panel
from tests.conftest import StopAt, run_cli

CLASSES = ["background", "disc", "square", "triangle"]  # the synthetic dataset's


def _cfg(data: Path, out: Path, loggers: list[str], steps: int = 6) -> FinetuneConfig:
    """4 labelled images, batch 2: 2 steps an epoch, validation (+ checkpoint) every 2 steps."""
    return FinetuneConfig(
        data=DataConfig(root=str(data), image_size=(48, 64), labeled_count=4, workers=0),
        encoder="test_resnet", out=str(out), steps=steps, batch_size=2, log_every=1,
        optim=OptimConfig(warmup_steps=1), loggers=loggers, log_images=2)


def _records(out: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    return ({r["step"]: r for r in rows if "loss" in r},
            {r["step"]: r for r in rows if r.get("split") == "val"})


def _killed_and_resumed(cfg: FinetuneConfig) -> None:
    """Stop at step 6 (the last checkpoint is step 4; the loggers have seen step 5), resume."""
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, StopAt(6))
    finetune(cfg, resume=True)


# ---- TensorBoard -------------------------------------------------------------------------------


def _events(folder: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_the_scalars_lr_and_prediction_strips(synthetic_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    finetune(_cfg(synthetic_data, out, ["tensorboard"]))
    train, val = _records(out)
    acc = _events(out / "tensorboard")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == sorted(train) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([e.value for e in loss], [train[s]["loss"] for s in sorted(train)],
                               rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("train/lr")],
                               [train[s]["lr"] for s in sorted(train)], rtol=1e-6)
    assert [e.step for e in acc.Scalars("val/miou")] == sorted(val) == [2, 4, 6]
    np.testing.assert_allclose([e.value for e in acc.Scalars("val/iou/square")],
                               [val[s]["iou"][2] for s in sorted(val)], rtol=1e-6)
    assert {"train/ce", "train/images_per_s", "val/pixel_accuracy"} <= set(acc.Tags()["scalars"])
    images = acc.Tags()["images"]
    assert len(images) == 2 and all(t.startswith("val/prediction/synth_") for t in images)
    for tag in images:
        strips = acc.Images(tag)
        assert [e.step for e in strips] == [2, 4, 6]
        assert (strips[0].width, strips[0].height) == (3 * 64, 48)  # image | truth | prediction

    # a fresh run in the same folder (--overwrite) starts a fresh TensorBoard log
    clear_run(out)
    finetune(_cfg(synthetic_data, out, ["tensorboard"], steps=2))
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in _events(out / "tensorboard").Scalars("train/loss")] == [1, 2]


def test_tensorboard_resume_continues_the_folder_without_duplicate_steps(synthetic_data,
                                                                          tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb-resume"
    _killed_and_resumed(_cfg(synthetic_data, out, ["tensorboard"]))
    train, _ = _records(out)
    acc = _events(out / "tensorboard")
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]  # step 5 of the killed run is purged
    np.testing.assert_allclose([e.value for e in loss], [train[s]["loss"] for s in range(1, 7)],
                               rtol=1e-6)
    assert [e.step for e in acc.Scalars("val/miou")] == [2, 4, 6]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # same folder


def test_pretrain_logs_its_loss_terms_and_lr(synthetic_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "pre"
    cfg = PretrainConfig(data=DataConfig(root=str(synthetic_data), image_size=(48, 64),
                                         workers=0),
                         method="simclr", encoder="test_resnet", out=str(out), steps=2,
                         batch_size=4, log_every=1, loggers=["tensorboard"])
    pretrain(cfg)
    train, _ = _records(out)
    acc = _events(out / "tensorboard")
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    np.testing.assert_allclose([e.value for e in acc.Scalars("train/global")],
                               [train[s]["global"] for s in (1, 2)], rtol=1e-6)
    assert "train/lr" in acc.Tags()["scalars"] and acc.Tags()["images"] == []


# ---- MLflow ------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A local ``file:`` tracking store under tmp_path (MLflow 3 wants the opt-in variable)."""
    pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "segcl-test")
    return uri


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _image_steps(store: str, run_id: str, key: str) -> list[int]:
    """Steps of the PNGs MLflow stored for image ``key`` (file names ``key+step+N+...png``)."""
    from mlflow.tracking import MlflowClient

    folder = Path(MlflowClient(store).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    prefix = key.replace("/", "~") + "+step+"
    return sorted(int(p.name[len(prefix):].split("+")[0])
                  for p in (folder / "images").glob("*.png") if p.name.startswith(prefix)
                  and not p.name.endswith("compressed.png"))


def test_mlflow_file_store_holds_the_metrics_params_and_images(synthetic_data, tmp_path,
                                                               mlflow_store):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "ml"
    finetune(_cfg(synthetic_data, out, ["mlflow"]))
    state = json.loads((out / "mlflow.json").read_text())
    assert state["tracking_uri"] == mlflow_store
    client = MlflowClient(mlflow_store)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "ml"
    assert client.get_experiment(run.info.experiment_id).name == "segcl-test"
    train, val = _records(out)
    assert _history(client, state["run_id"], "train/loss") == pytest.approx(
        [(s, train[s]["loss"]) for s in sorted(train)])
    assert [s for s, _ in _history(client, state["run_id"], "train/lr")] == [1, 2, 3, 4, 5, 6]
    assert _history(client, state["run_id"], "val/iou/triangle") == pytest.approx(
        [(s, val[s]["iou"][3]) for s in sorted(val)])
    assert run.data.params["loss.name"] == "ce" and run.data.params["optim.lr"] == "0.01"
    for key in ("val/prediction/synth_0000", "val/prediction/synth_0003"):
        assert _image_steps(mlflow_store, state["run_id"], key) == [2, 4, 6]


def test_mlflow_resume_continues_the_run_without_duplicate_steps(synthetic_data, tmp_path,
                                                                 mlflow_store):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "ml-resume"
    cfg = _cfg(synthetic_data, out, ["mlflow"])
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg, StopAt(6))
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    client = MlflowClient(mlflow_store)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert [s for s, _ in _history(client, run_id, "train/loss")] == [1, 2, 3, 4, 5]
    finetune(cfg, resume=True)
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run_id
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [s for s, _ in _history(client, run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in _history(client, run_id, "val/miou")] == [2, 4, 6]
    assert _image_steps(mlflow_store, run_id, "val/prediction/synth_0000") == [2, 4, 6]


def test_mlflow_store_errors_are_one_line(synthetic_data, tmp_path, monkeypatch, mlflow_store):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # MLflow 3 refuses file stores without it
    import mlflow

    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("MLflow 2 accepts file stores")
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match="--logger mlflow: tracking store file:"):
        finetune(_cfg(synthetic_data, out, ["mlflow"], steps=1))
    assert not (out / "config.yaml").exists()  # the folder holds no run: try again as it is


# ---- Weights & Biases --------------------------------------------------------------------------


class _FakeWandbRun:
    def __init__(self, **kwargs) -> None:
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data: dict, step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        self.finished = True


def test_wandb_logger_through_a_stand_in_module(synthetic_data, tmp_path, monkeypatch):
    runs: list[_FakeWandbRun] = []

    def init(**kwargs):
        runs.append(_FakeWandbRun(**kwargs))
        return runs[-1]

    fake = types.SimpleNamespace(init=init, Settings=lambda **kw: kw,
                                 Image=lambda a: ("image", a.shape),
                                 errors=types.SimpleNamespace(Error=RuntimeError))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "wb"
    _killed_and_resumed(_cfg(synthetic_data, out, ["wandb"]))
    first, second = runs
    run_id = json.loads((out / "wandb.json").read_text())["id"]
    assert first.kwargs["id"] == second.kwargs["id"] == run_id
    assert first.kwargs["mode"] == "offline" and first.kwargs["dir"] == str(out)
    assert second.kwargs["resume"] == "allow" and first.kwargs["config"]["loggers"] == [
        "jsonl", "wandb"]
    assert second.finished
    steps = [s for s, d in first.logged + second.logged if "train/loss" in d]
    assert steps == [1, 2, 3, 4, 5, 5, 6]  # W&B drops the repeated step 5 (below its step)
    images = [(s, k, v) for s, d in first.logged + second.logged for k, v in d.items()
              if k.startswith("val/prediction/")]
    assert [s for s, _, _ in images] == [2, 2, 4, 4, 6, 6]
    assert images[0][2] == ("image", (48, 3 * 64, 3))


def test_wandb_offline_run_lands_in_the_run_folder(synthetic_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "wb-real"
    finetune(_cfg(synthetic_data, out, ["wandb"], steps=2))
    run_id = json.loads((out / "wandb.json").read_text())["id"]
    offline = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


# ---- names, errors, helpers --------------------------------------------------------------------


def test_logger_names_are_checked_and_jsonl_is_always_kept() -> None:
    from segcl.config import LOGGERS as CONFIG_LOGGERS

    assert set(CONFIG_LOGGERS) == set(LOGGERS)
    assert FinetuneConfig(loggers="tensorboard, mlflow").loggers == ["jsonl", "tensorboard",
                                                                     "mlflow"]
    assert PretrainConfig(loggers=["mlflow", "jsonl", "mlflow"]).loggers == ["jsonl", "mlflow"]
    with pytest.raises(ConfigError, match="--logger must be one of jsonl, tensorboard, mlflow, "
                                          "wandb, got 'tb'"):
        FinetuneConfig(loggers="jsonl,tb")
    assert build_loggers(["jsonl"]) == []


@pytest.mark.parametrize("module, logger", [("torch.utils.tensorboard", "tensorboard"),
                                            ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_package_is_a_one_line_error(monkeypatch, module, logger) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=rf"^--logger {logger} needs the \w+ package: "
                                          rf"pip install 'segcl\[{logger}\]'$"):
        build_loggers(["jsonl", logger])


def test_cli_names_the_extra_before_any_work(synthetic_data, tmp_path) -> None:
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    out = tmp_path / "run"
    from tests.conftest import REPO

    proc = run_cli("finetune", str(synthetic_data), "--logger", "jsonl,mlflow", "--out", str(out),
                   env={"PYTHONPATH": f"{shadow.parent}:{REPO}"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("Error: --logger mlflow needs the mlflow package: "
                                   "pip install 'segcl[mlflow]'")
    assert not out.exists()
    proc = run_cli("pretrain", str(synthetic_data), "--logger", "csv", "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.startswith("Error: --logger must be one of")


def test_scalars_flatten_records_and_per_class_lists() -> None:
    record = {"step": 4, "epoch": 2, "split": "val", "miou": 0.5, "iou": [0.1, None, 0.3, 0.9],
              "loss": float("nan"), "flag": True, "name": "x"}
    assert scalars("val", record, CLASSES) == {
        "val/miou": 0.5, "val/iou/background": 0.1, "val/iou/square": 0.3,
        "val/iou/triangle": 0.9}
    assert metric_name("val", "iou", "traffic light (x)") == "val/iou/traffic light _x_"


def test_prediction_panel_puts_image_truth_and_prediction_side_by_side() -> None:
    palette = default_palette(3)
    image = np.full((2, 3, 3), 7, np.uint8)
    truth = np.array([[0, 1, 2], [255, 1, 0]])
    pred = np.array([[2, 2, 2], [0, 1, 1]])
    panel = prediction_panel(image, truth, pred, palette)
    assert panel.shape == (2, 9, 3) and panel.dtype == np.uint8
    assert (panel[:, :3] == 7).all()
    assert panel[0, 5].tolist() == list(palette[2]) and panel[1, 3].tolist() == [0, 0, 0]
    assert np.array_equal(panel[:, 6:], mask_rgb(pred, palette))
    with pytest.raises(ValueError, match="height and width"):
        prediction_panel(image, truth[:1], pred, palette)
