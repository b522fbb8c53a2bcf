"""``segcl export --format onnx`` and ``segcl predict model.onnx`` (onnxruntime) on a tiny run.

Skipped when the ``onnx`` extra (onnx + onnxruntime) is not installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install "
                                          "'segcl[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install "
                                                "'segcl[onnx]')")

from segcl.config import ExportConfig  # noqa: E402
from segcl.engine.checkpoint import load_model  # noqa: E402
from segcl.engine.export import export  # noqa: E402
from segcl.engine.onnx_model import META_CONFIG, META_DYNAMIC, META_OPSET  # noqa: E402
from segcl.engine.predict import predict  # noqa: E402
from segcl.errors import CheckpointError, ConfigError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return out, export(ExportConfig(model=str(tiny_run), out=str(out)))


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_checks_parity_on_the_checkpoints_val_images(exported, tiny_run) -> None:
    path, result = exported
    assert path.is_file() and result.size_bytes == path.stat().st_size
    assert result.dynamic_axes == ["batch", "height", "width"]
    assert "val split" in result.images_source  # the checkpoint's dataset was found
    assert [c.size for c in result.checks] == [(48, 64), (80, 128)]  # two input sizes
    for check in result.checks:
        assert check.images == 4
        assert check.max_abs_diff < 1e-4
        assert check.argmax_agreement >= 0.999
    assert result.ok


def test_metadata_holds_the_config_and_the_opset(exported, tiny_run) -> None:
    path, _ = exported
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    meta = _metadata(path)
    assert meta[META_OPSET] == "17" and meta[META_DYNAMIC] == "batch,height,width"
    config = json.loads(meta[META_CONFIG])
    assert config == json.loads((tiny_run / "best" / "config.json").read_text())
    assert config["data"]["classes"][0] == "background" and config["data"]["palette"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dims[1].dim_value == 3


def test_onnxruntime_logits_match_pytorch_at_two_sizes(exported, tiny_run) -> None:
    path, _ = exported
    model, _ = load_model(str(tiny_run))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 48, 64), (3, 3, 64, 96)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
        (logits,) = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            reference = model(x).numpy()
        assert logits.shape == reference.shape == (shape[0], 4, shape[2], shape[3])
        assert np.abs(logits - reference).max() < 1e-4
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.999


def test_predict_with_onnx_writes_the_pytorch_masks(exported, tiny_run, synthetic_data,
                                                    tmp_path) -> None:
    path, _ = exported
    src = tmp_path / "in"
    shutil.copytree(synthetic_data / "val" / "images", src)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 91, 3), dtype=np.uint8)).save(src / "odd.png")
    for mode in ("resize", "slide"):
        masks = {}
        for name, ref in (("torch", str(tiny_run)), ("onnx", str(path))):
            result = predict(ref, [src], tmp_path / f"{name}-{mode}", mode=mode, device="cpu",
                             batch_size=2)
            assert result.ok and len(result.written) == 5
            masks[name] = {p.name: np.array(Image.open(p)) for p in result.written}
        assert masks["torch"].keys() == masks["onnx"].keys()
        for key, mask in masks["torch"].items():
            assert mask.shape == masks["onnx"][key].shape
            assert np.array_equal(mask, masks["onnx"][key]), (mode, key)
        assert masks["onnx"]["odd.png"].shape == (37, 91)


def test_evaluate_an_onnx_model_gives_the_pytorch_metrics(exported, tiny_run,
                                                          synthetic_data) -> None:
    from segcl.engine.evaluate import evaluate

    path, _ = exported
    a = evaluate(str(tiny_run), str(synthetic_data), device="cpu", workers=0)
    b = evaluate(str(path), str(synthetic_data), device="cpu", workers=0)
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-9)
    assert np.array_equal(np.asarray(a["confusion_matrix"]), np.asarray(b["confusion_matrix"]))


def test_cli_export_prints_the_check_and_predicts(tiny_run, synthetic_data, tmp_path) -> None:
    out = tmp_path / "deploy" / "m.onnx"
    proc = run_cli("export", str(tiny_run), "--format", "onnx", "--out", str(out), "--opset",
                   "13", "--check-images", str(synthetic_data / "val" / "images"),
                   "--check-count", "3", check=True)
    assert "ONNX opset 13" in proc.stdout and "dynamic axes: batch, height, width" in proc.stdout
    assert proc.stdout.count("max |logit diff|") == 2
    assert "on 3 images" in proc.stdout and "argmax agreement 100.0000%" in proc.stdout
    assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == 13
    assert not [p for p in out.parent.iterdir() if p.name != "m.onnx"]  # no temporary left
    proc = run_cli("predict", str(out), str(synthetic_data / "val" / "images"), "--out",
                   str(tmp_path / "masks"), "--device", "cpu", check=True)
    assert len(list((tmp_path / "masks").glob("*.png"))) == 4


def test_check_images_fall_back_to_generated_ones(tiny_run, tmp_path) -> None:
    run = tmp_path / "moved"
    shutil.copytree(tiny_run / "best", run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["data"]["root"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    result = export(ExportConfig(model=str(run), out=str(tmp_path / "m.onnx"), check_count=2))
    assert result.images_source == "generated images" and result.checks[0].images == 2
    assert result.ok


def test_fixed_size_when_the_model_does_not_run_at_other_sizes(tiny_run, tmp_path,
                                                               monkeypatch) -> None:
    import segcl.engine.export as ex
    from segcl.engine.onnx_model import load_onnx_model

    monkeypatch.setattr(ex, "_runs_at", lambda model, size: False)
    out = tmp_path / "fixed.onnx"
    result = export(ExportConfig(model=str(tiny_run), out=str(out), check_count=2))
    assert result.dynamic_axes == ["batch"] and len(result.checks) == 1
    assert _metadata(out)[META_DYNAMIC] == "batch"
    model, _, _ = load_onnx_model(out, "cpu")
    assert model(torch.zeros(2, 3, 48, 64)).shape == (2, 4, 48, 64)  # the batch stays dynamic
    with pytest.raises(ConfigError, match="takes 48x64 inputs only"):
        model(torch.zeros(1, 3, 64, 64))


def test_missing_onnxruntime_is_one_clear_error(exported, tiny_run, synthetic_data, tmp_path,
                                                monkeypatch) -> None:
    path, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ConfigError, match=r"needs the optional package 'onnxruntime'.*"
                                          r"pip install 'segcl\[onnx\]'"):
        predict(str(path), [synthetic_data / "val" / "images"], tmp_path / "p", device="cpu")
    with pytest.raises(ConfigError, match="pip install 'segcl"):
        export(ExportConfig(model=str(tiny_run), out=str(tmp_path / "m.onnx")))
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"optional package 'onnx',"):
        export(ExportConfig(model=str(tiny_run), out=str(tmp_path / "m.onnx"), check=False))
    assert not (tmp_path / "m.onnx").exists()


def test_bad_options_and_foreign_onnx_files(tiny_run, tmp_path) -> None:
    for kwargs, problem in [({"format": "tflite"}, "--format must be one of: onnx"),
                            ({"opset": 9}, "--opset must be an integer from 11 to 20"),
                            ({"out": "model.pt"}, "--out must name an .onnx file"),
                            ({"check_count": 0}, "--check-count must be a number > 0")]:
        with pytest.raises(ConfigError, match=problem):
            ExportConfig(model="run", **kwargs)
    proc = run_cli("export", str(tiny_run), "--format", "tflite", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and proc.stderr.startswith("Error: --format must be one of")
    assert len(proc.stderr.strip().splitlines()) == 1

    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model that segcl did not export
    h = onnx.helper
    graph = h.make_graph([h.make_node("Identity", ["image"], ["logits"])], "identity",
                         [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(CheckpointError, match=r"no 'segcl\.config' metadata"):
        predict(str(foreign), [tmp_path], tmp_path / "p", device="cpu")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        predict(str(tmp_path / "broken.onnx"), [tmp_path], tmp_path / "p", device="cpu")


@pytest.mark.parametrize("size", [(160, 160), (96, 128)])
def test_a_vit_exports_with_the_sizes_its_graph_supports(tmp_path, size) -> None:
    """A ViT resamples its position embeddings to the input's grid (antialiased bicubic, which
    the exporter cannot convert; at its pretraining size the trace leaves it out and the graph
    does not generalise): the export falls back to fixed height and width, checked at the
    training size, with the embeddings resampled once in PyTorch."""
    from segcl.checkpoint import CheckpointConfig, save_checkpoint
    from segcl.data.info import DatasetInfo
    from segcl.engine.onnx_model import load_onnx_model
    from segcl.models import create_model

    torch.manual_seed(0)
    model = create_model("test_vit", "segformer", 3)
    info = DatasetInfo(classes=["a", "b", "c"], ignore_index=255)
    config = CheckpointConfig.create(model.config.to_dict(), info, (0.5,) * 3, (0.5,) * 3, size,
                                     method="finetune")
    save_checkpoint(tmp_path / "vit", model.state_dict(), config)
    out = tmp_path / "vit.onnx"
    result = export(ExportConfig(model=str(tmp_path / "vit"), out=str(out), check_count=2))
    assert result.ok and result.checks[0].size == size
    assert result.checks[0].max_abs_diff < 1e-4 and result.checks[0].argmax_agreement == 1.0
    onnx_model, _, _ = load_onnx_model(out, "cpu")
    if result.dynamic_axes == ["batch"]:
        assert _metadata(out)[META_DYNAMIC] == "batch" and len(result.checks) == 1
        with pytest.raises(ConfigError, match=f"takes {size[0]}x{size[1]} inputs only"):
            onnx_model(torch.zeros(1, 3, size[0] + 16, size[1] + 32))
    else:  # an exporter that converts the resampling: checked at a second size as well
        assert [c.size for c in result.checks] == [size, (size[0] + 16, size[1] + 32)]
