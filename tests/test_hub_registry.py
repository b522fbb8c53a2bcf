"""Registry (checkpoints.yaml), local model references and model cards -- no network involved."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from segcl.checkpoint import is_checkpoint_dir, parse_hf_ref, render_model_card, resolve_local
from segcl.errors import CheckpointError, ConfigError, HubError
from segcl.hub.refs import resolve_model_ref
from segcl.hub.registry import (
    REGISTRY_ENV,
    compare_metrics,
    default_registry_path,
    evaluation_path,
    load_registry,
    read_evaluation,
    recipe_argv,
)
from tests.hub_server import write_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "ab" * 32


def entry(**overrides: Any) -> dict[str, Any]:
    """A valid registry entry as YAML data."""
    base: dict[str, Any] = {
        "repo_id": "alice/camvid-unet",
        "revision": SHA1,
        "sha256": SHA256,
        "published": True,
        "encoder": "resnet18",
        "decoder": "unet",
        "method": "finetune",
        "dataset": "camvid",
        "classes": ["sky", "road", "car"],
        "image_size": [192, 256],
        "metrics": {"val": {"miou": 0.41, "pixel_accuracy": 0.8}},
        "recipe": ["segcl finetune {data} --layout camvid --out {out}/run",
                   "segcl evaluate {out}/run {data} --json {out}/eval.json"],
        "notes": "test entry",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def write_registry(path: Path, entries: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "checkpoints": entries}))
    return path


# -- the registry file -----------------------------------------------------------------------------
def test_shipped_registry_loads_and_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    default = default_registry_path()
    assert default is not None  # the source tree's copy, or the package's (a link to it)
    assert default.resolve() == (REPO_ROOT / "checkpoints.yaml").resolve()
    entries = load_registry()
    for item in entries.values():  # whatever the lead adds must be complete when published
        assert not item.published or (item.revision and item.sha256 and item.repo_id)


def test_env_var_selects_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_registry(tmp_path / "reg.yaml", {"camvid-unet": entry()})
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    assert default_registry_path() == path
    assert list(load_registry()) == ["camvid-unet"]


def test_entry_fields_are_parsed(tmp_path: Path) -> None:
    path = write_registry(tmp_path / "reg.yaml", {"camvid-unet": entry()})
    item = load_registry(path)["camvid-unet"]
    assert item.repo_id == "alice/camvid-unet"
    assert item.image_size == (192, 256)
    assert item.metrics == {"val": {"miou": 0.41, "pixel_accuracy": 0.8}}
    assert item.hf_ref == f"hf://alice/camvid-unet@{SHA1}"
    assert item.headline_metric() == ("val", "miou", 0.41)
    assert item.evaluation == "{out}/eval.json"


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"encoder": None}, "encoder", "is required"),
        ({"revision": "main"}, "revision", "40-character commit sha"),
        ({"revision": SHA1[:12]}, "revision", "40-character commit sha"),
        ({"sha256": "abc"}, "sha256", "64-character sha256"),
        ({"sha256": None}, "sha256", "required when published"),
        ({"repo_id": "no-namespace"}, "repo_id", "user/name"),
        ({"metric": {"val": {}}}, "metric", "not a registry field"),
        ({"metrics": {"val": {"miou": "high"}}}, "metrics", "finite number"),
        ({"image_size": [192]}, "image_size", "[height, width]"),
        ({"classes": "sky,road"}, "classes", "list of class names"),
        ({"recipe": ["python train.py {data}"]}, "recipe", "must start with 'segcl'"),
        ({"recipe": ["segcl finetune {dataset}"]}, "recipe", "unknown placeholder"),
        ({"recipe": ["segcl finetune data/camvid"]}, "recipe", "{data} placeholder"),
        ({"published": "yes"}, "published", "true or false"),
        ({"encoder_weights": "imagenet"}, "encoder_weights",
         "is 'imagenet' but the recipe passes no --encoder-weights"),
        ({"encoder_weights": "random",
          "recipe": ["segcl finetune {data} --encoder-weights imagenet --out {out}/run"]},
         "encoder_weights", "is 'random' but the recipe passes --encoder-weights imagenet"),
        ({"encoder_weights": ""}, "encoder_weights", "must be 'random'"),
    ],
)
def test_invalid_entries_name_the_entry_and_field(
    tmp_path: Path, overrides: dict[str, Any], field: str, problem: str
) -> None:
    path = write_registry(tmp_path / "reg.yaml", {"camvid-unet": entry(**overrides)})
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert str(path) in message
    assert "entry 'camvid-unet'" in message
    assert f"field '{field}'" in message
    assert problem in message


def test_encoder_weights_say_which_recipes_assume_imagenet(tmp_path: Path) -> None:
    imagenet = ["segcl finetune {data} --encoder-weights imagenet:augreg_in21k --out {out}/run",
                "segcl evaluate {out}/run {data} --json {out}/eval.json"]
    path = write_registry(tmp_path / "r.yaml", {
        "random-init": entry(),
        "from-recipe": entry(recipe=imagenet),
        "stated": entry(recipe=imagenet, encoder_weights="imagenet:augreg_in21k"),
    })
    entries = load_registry(path)
    assert entries["random-init"].encoder_weights == "random"
    assert entries["from-recipe"].encoder_weights == "imagenet:augreg_in21k"
    assert entries["stated"].encoder_weights == "imagenet:augreg_in21k"
    # the shipped registry states it for every entry
    shipped = yaml.safe_load((REPO_ROOT / "checkpoints.yaml").read_text())["checkpoints"]
    assert all("encoder_weights" in raw for raw in shipped.values())


def test_unpublished_entry_needs_no_location(tmp_path: Path) -> None:
    raw = entry(published=False, repo_id=None, revision=None, sha256=None)
    item = load_registry(write_registry(tmp_path / "r.yaml", {"camvid-unet": raw}))["camvid-unet"]
    assert not item.published and item.hf_ref is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [("checkpoints: [1, 2]", "must be a mapping"),
     ("checkpoints: {}\nextra: 1", "unknown top-level key"),
     ("checkpoints: {a: [unclosed", "cannot read the registry ("),
     ("checkpoints:\n  a: [unclosed\n", "at line 3, column 1)"),
     ("checkpoints:\n  Bad_Name: {}\n", "name must match")],
)
def test_malformed_registry_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "reg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_registry(path)


def test_missing_registry_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="registry file not found"):
        load_registry(tmp_path / "absent.yaml")


# -- recipes and metric comparison -----------------------------------------------------------------
def test_recipe_placeholders_are_substituted_safely(tmp_path: Path) -> None:
    path = write_registry(tmp_path / "reg.yaml", {"camvid-unet": entry()})
    item = load_registry(path)["camvid-unet"]
    data, out = Path("/data/cam vid"), Path("/tmp/out dir")
    steps = recipe_argv(item, data, out)
    assert steps[0] == ["finetune", "/data/cam vid", "--layout", "camvid", "--out",
                        "/tmp/out dir/run"]
    assert steps[1][-2:] == ["--json", "/tmp/out dir/eval.json"]
    assert evaluation_path(item, data, out) == out / "eval.json"
    assert shlex.join(steps[0]).count("'") == 4  # both paths quoted when shown


def test_compare_metrics_within_and_outside_tolerance(tmp_path: Path) -> None:
    item = load_registry(write_registry(tmp_path / "r.yaml", {"x": entry()}))["x"]
    close = compare_metrics(item, {"split": "val", "miou": 0.405, "pixel_accuracy": 0.81})
    assert [c.ok for c in close] == [True, True]
    far = compare_metrics(item, {"metrics": {"val": {"miou": 0.35, "pixel_accuracy": 0.8}}})
    assert [(c.metric, c.ok) for c in far] == [("miou", False), ("pixel_accuracy", True)]
    loose = compare_metrics(item, {"val": {"miou": 0.35, "pixel_accuracy": 0.8}}, tolerance=0.1)
    assert all(c.ok for c in loose)


def test_compare_metrics_missing_or_other_split(tmp_path: Path) -> None:
    item = load_registry(write_registry(tmp_path / "r.yaml", {"x": entry()}))["x"]
    missing = compare_metrics(item, {"miou": 0.41})
    assert [(c.metric, c.measured, c.ok) for c in missing][1] == ("pixel_accuracy", None, False)
    other_split = compare_metrics(item, {"split": "test", "miou": 0.41, "pixel_accuracy": 0.8})
    assert not any(c.ok for c in other_split)
    with pytest.raises(ConfigError):
        compare_metrics(item, {}, tolerance=-1)


def test_read_evaluation_errors(tmp_path: Path) -> None:
    with pytest.raises(HubError, match="did not write its evaluation JSON"):
        read_evaluation(tmp_path / "eval.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(HubError, match="must be an object"):
        read_evaluation(tmp_path / "bad.json")


# -- local references ------------------------------------------------------------------------------
def test_checkpoint_folder_and_its_files(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    assert is_checkpoint_dir(folder)
    assert resolve_model_ref(folder) == folder
    assert resolve_model_ref(str(folder)) == folder
    assert resolve_model_ref(folder / "model.safetensors") == folder


def test_run_directory_prefers_best_then_last(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "camvid"
    write_checkpoint(run / "last", seed=1)
    assert resolve_model_ref(run) == run / "last"
    write_checkpoint(run / "best", seed=2)
    assert resolve_model_ref(run) == run / "best"
    (run / "best" / "model.safetensors").unlink()  # an interrupted save: fall back to last/
    assert resolve_model_ref(run) == run / "last"


def test_incomplete_checkpoint_names_the_missing_file(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    (folder / "config.json").unlink()
    assert not is_checkpoint_dir(folder)
    with pytest.raises(CheckpointError, match=r"ckpt: not a segcl checkpoint \(missing config"):
        resolve_model_ref(folder)
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"best: incomplete checkpoint, missing "
                                              r"model\.safetensors, config\.json"):
        resolve_local(run)


def test_missing_paths_and_bad_references(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or directory"):
        resolve_model_ref(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="if you meant a Hub repository, write "
                                              "hf://alice/model"):
        resolve_model_ref("alice/model")
    with pytest.raises(ConfigError, match="expected hf://user/name"):
        resolve_model_ref("hf://just-a-name")
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_model_ref("hf://alice/model@v1", revision="v2")
    with pytest.raises(ConfigError, match="--revision applies to hf://"):
        resolve_model_ref(write_checkpoint(tmp_path / "c"), revision="v1")
    assert parse_hf_ref("hf://alice/m") == ("alice/m", None)
    assert parse_hf_ref(f"hf://alice/m@{SHA1}") == ("alice/m", SHA1)


def test_registry_name_errors(tmp_path: Path) -> None:
    unpublished = entry(published=False, repo_id=None, revision=None, sha256=None)
    path = write_registry(tmp_path / "reg.yaml", {"camvid-unet": entry(),
                                                  "camvid-supcon": unpublished})
    with pytest.raises(HubError, match="registry names: camvid-supcon, camvid-unet"):
        resolve_model_ref("camvid-deeplab", registry=path)
    with pytest.raises(HubError, match=re.escape("`segcl hub build camvid-supcon --data PATH`")):
        resolve_model_ref("camvid-supcon", registry=path)
    with pytest.raises(ConfigError, match="pinned"):
        resolve_model_ref("camvid-unet", revision="v2", registry=path)


def test_registry_name_without_any_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("segcl.hub.registry.default_registry_path", lambda: None)
    with pytest.raises(HubError, match=r"no checkpoints\.yaml found; set SEGCL_REGISTRY"):
        resolve_model_ref("camvid-unet")


# -- model cards -----------------------------------------------------------------------------------
def _front_matter(card: str) -> dict[str, Any]:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_model_card_from_config(tmp_path: Path) -> None:
    config = json.loads((write_checkpoint(tmp_path / "c") / "config.json").read_text())
    card = render_model_card(config, repo_id="alice/camvid-unet", revision="v1")
    meta = _front_matter(card)
    assert meta["library_name"] == "segcl"
    assert meta["datasets"] == ["camvid"]
    assert meta["metrics"] == ["miou", "pixel_accuracy"]
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "val"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"miou": 0.41,
                                                                 "pixel_accuracy": 0.8}
    assert "segcl finetune data/camvid --out runs/test" in card  # the exact training command
    assert "| val | miou | 0.4100 |" in card
    assert "0: sky, 1: road, 2: car" in card
    assert "segcl predict hf://alice/camvid-unet@v1" in card


def test_model_card_minimal_config() -> None:
    card = render_model_card({"model": {"encoder": "resnet18", "decoder": "unet"}})
    meta = _front_matter(card)
    assert "model-index" not in meta and "metrics" not in meta
    assert "# resnet18-unet-finetune" in card
    assert "PATH_TO_THIS_CHECKPOINT" in card


def test_model_card_of_a_path_that_is_not_utf8() -> None:
    """A run or dataset folder named with non-UTF-8 bytes (argv keeps them as surrogates):
    the card still encodes, showing the byte as an escape."""
    card = render_model_card({"model": {"encoder": "resnet18", "decoder": "unet"},
                              "command": "segcl finetune data --out run\udcff"})
    assert "run\\udcff" in card.encode("utf-8").decode("utf-8")
