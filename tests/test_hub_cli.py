"""``segcl hub``: in-process through Typer's CliRunner, and as ``python -m segcl hub`` processes
talking to the loopback Hub stand-in (see tests/hub_server.py for what it does not cover)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import constants
from typer.testing import CliRunner

import segcl.cli.hub as hub_cli
from segcl.errors import DataError, HubError
from tests.hub_server import FakeHub, client_env, write_checkpoint

WRITE_TOKEN = "hf_cli_write_token_42424242"
SHA1 = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def registry_entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "repo_id": "alice/camvid-unet", "revision": SHA1, "sha256": "ab" * 32, "published": True,
        "encoder": "resnet18", "decoder": "unet", "method": "finetune", "dataset": "camvid",
        "classes": ["sky", "road", "car"], "image_size": [192, 256],
        "metrics": {"val": {"miou": 0.41, "pixel_accuracy": 0.8}},
        "recipe": ["segcl finetune {data} --out {out}/run",
                   "segcl evaluate {out}/run {data} --json {out}/eval.json"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoints.yaml"
    unpublished = registry_entry(published=False, repo_id=None, revision=None, sha256=None,
                                 method="supcon+finetune")
    path.write_text(yaml.safe_dump({"checkpoints": {"camvid-unet": registry_entry(),
                                                    "camvid-supcon": unpublished}}))
    return path


# -- in process ------------------------------------------------------------------------------------
def test_list_shows_entries_and_cache_state(registry: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    result = runner.invoke(hub_cli.app, ["list", "--registry", str(registry)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines()
            if line.count("│") > 5 and "name" not in line}
    assert set(rows) == {"camvid-unet", "camvid-supcon"}
    assert "val miou 0.4100" in rows["camvid-unet"] and SHA1[:12] in rows["camvid-unet"]
    assert rows["camvid-unet"].split("│")[-2].strip() == "no"
    assert "unpublished" in rows["camvid-supcon"]

    snapshot = cache / "models--alice--camvid-unet" / "snapshots" / SHA1
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    result = runner.invoke(hub_cli.app, ["list", "--registry", str(registry)],
                           env={"COLUMNS": "200"})
    cached = next(line for line in result.output.splitlines() if "camvid-unet" in line)
    assert cached.split("│")[-2].strip() == "yes"


def _list_lines(registry: Path, columns: int) -> list[str]:
    env = {k: v for k, v in client_env("http://127.0.0.1:9", registry.parent / "hf", None,
                                        offline=True).items()}
    env["COLUMNS"] = str(columns)
    proc = subprocess.run([sys.executable, "-m", "segcl", "hub", "list", "--registry",
                           str(registry)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_list_fits_80_columns_by_dropping_the_last_columns(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.yaml"
    long_name = "cityscapes-convnext-tiny-deeplabv3plus-1of8-imagenet"
    imagenet = registry_entry(encoder="convnext_tiny", decoder="deeplabv3plus",
                              method="supcon+finetune", dataset="cityscapes",
                              recipe=["segcl finetune {data} --encoder convnext_tiny "
                                      "--encoder-weights imagenet --out {out}/run"])
    path.write_text(yaml.safe_dump({"checkpoints": {long_name: imagenet,
                                                    "camvid-unet": registry_entry()}}))
    lines = _list_lines(path, 80)
    assert lines and all(len(line) <= 80 for line in lines), "\n".join(lines)
    header = next(line for line in lines if "name" in line and "metric" in line)
    shown = [cell.strip() for cell in header.strip("┃").split("┃")]
    hidden = list(hub_cli.LIST_COLUMNS[len(shown):])
    assert shown == list(hub_cli.LIST_COLUMNS[:len(shown)]) and hidden
    # whole cells, never fragments: each name and its metric stay on one line
    assert any(long_name in line and "val miou 0.4100" in line for line in lines)
    caption = " ".join(lines[lines.index(next(x for x in lines if x.startswith("└"))) + 1:])
    assert "not shown at 80 columns" in caption
    assert all(c in caption for c in hidden)
    # shorter names leave room for the encoder and where its weights come from
    path.write_text(yaml.safe_dump({"checkpoints": {"camvid-unet": registry_entry(),
                                                    "camvid-imagenet": imagenet}}))
    lines = _list_lines(path, 80)
    assert all(len(line) <= 80 for line in lines)
    assert "imagenet" in next(line for line in lines if "camvid-imagenet" in line)
    assert "random" in next(line for line in lines if "camvid-unet" in line)
    # a wide terminal shows every column and no caption
    wide = _list_lines(path, 200)
    header = next(line for line in wide if "name" in line and "metric" in line)
    assert all(c in header for c in hub_cli.LIST_COLUMNS)
    assert not any("not shown" in line for line in wide)


def test_list_empty_registry(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("version: 1\ncheckpoints: {}\n")
    result = runner.invoke(hub_cli.app, ["list", "--registry", str(path)])
    assert result.exit_code == 0
    assert result.output.strip() == f"No checkpoints in {path} yet."


def test_pull_out_copies_a_local_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    write_checkpoint(run / "best")
    out = tmp_path / "exported"
    result = runner.invoke(hub_cli.app, ["pull", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (out / name).read_bytes() == (run / "best" / name).read_bytes()


class FakeRecipe:
    """Stands in for the recipe's segcl processes: records them, writes the evaluation JSON."""

    def __init__(self, miou: float, status: int = 0) -> None:
        self.miou = miou
        self.status = status
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv)
        if argv[0] == "evaluate":
            target = Path(argv[argv.index("--json") + 1])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({"split": "val", "miou": self.miou,
                                          "pixel_accuracy": 0.8}))
        return self.status


@pytest.mark.parametrize(("miou", "exit_code", "verdict"),
                         [(0.405, 0, "metrics match the registry within 0.01"),
                          (0.30, 1, "does not match the registry's metrics within 0.01")])
def test_build_runs_the_recipe_and_checks_the_metrics(
    registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    miou: float, exit_code: int, verdict: str,
) -> None:
    recipe = FakeRecipe(miou)
    monkeypatch.setattr(hub_cli, "_run_step", recipe)
    data, out = tmp_path / "camvid", tmp_path / "rebuild"
    data.mkdir()
    result = runner.invoke(hub_cli.app, ["build", "camvid-unet", "--data", str(data),
                                         "--out", str(out), "--registry", str(registry)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == exit_code, result.output
    assert recipe.calls == [["finetune", str(data), "--out", f"{out}/run"],
                            ["evaluate", f"{out}/run", str(data), "--json", f"{out}/eval.json"]]
    assert verdict in result.output
    miou_row = next(line for line in result.output.splitlines() if "miou" in line)
    assert ("ok" in miou_row) == (exit_code == 0)


def test_build_errors(registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_cli, "_run_step", FakeRecipe(0.41, status=3))
    data = tmp_path / "camvid"
    data.mkdir()
    args = ["--data", str(data), "--registry", str(registry)]
    failed = runner.invoke(hub_cli.app, ["build", "camvid-unet", *args])
    assert isinstance(failed.exception, HubError)
    assert "recipe step 1 of 'camvid-unet' failed with exit status 3" in str(failed.exception)
    unknown = runner.invoke(hub_cli.app, ["build", "camvid-x", *args])
    assert isinstance(unknown.exception, HubError)
    assert "registry names: camvid-supcon, camvid-unet" in str(unknown.exception)
    no_data = runner.invoke(hub_cli.app, ["build", "camvid-unet", "--data", str(tmp_path / "x"),
                                          "--registry", str(registry)])
    assert isinstance(no_data.exception, DataError)


# -- as processes: python -m segcl hub ... ------------------------------------------------------
@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(tokens={WRITE_TOKEN: ("alice", "write")}) as server:
        yield server


def segcl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segcl", "hub", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_push_and_pull_round_trip(hub: FakeHub, tmp_path: Path) -> None:
    env = client_env(hub.url, tmp_path / "hf_home", WRITE_TOKEN)
    ckpt = write_checkpoint(tmp_path / "runs" / "a" / "best")
    pushed = segcl(["push", str(tmp_path / "runs" / "a"), "alice/camvid-unet", "--tag", "v1"],
                   env)
    assert pushed.returncode == 0, pushed.stderr
    lines = pushed.stdout.strip().splitlines()
    sha = hub.head("alice/camvid-unet")
    assert lines[0] == f"Pushed {tmp_path / 'runs' / 'a'} to {hub.url}/alice/camvid-unet"
    assert f"commit  {sha}" in lines and "tag     v1" in lines
    assert lines[-1] == f"hf://alice/camvid-unet@{sha}"

    again = segcl(["push", str(ckpt), "alice/camvid-unet", "--quiet"], env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"hf://alice/camvid-unet@{sha}"

    out = tmp_path / "pulled"
    pulled = segcl(["pull", "hf://alice/camvid-unet@v1", "--out", str(out)], env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().splitlines()[-1] == str(out)
    assert (out / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert "library_name: segcl" in (out / "README.md").read_text()


def test_cli_errors_are_one_line_without_traceback(hub: FakeHub, registry: Path,
                                                   tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "a")
    wrong = "hf_not_a_valid_token_31337"
    env = client_env(hub.url, tmp_path / "hf_home", wrong, SEGCL_REGISTRY=str(registry))
    cases = [
        (["push", str(ckpt), "alice/m"], "authentication failed"),
        (["pull", "camvid-supcon"], "segcl hub build camvid-supcon --data PATH"),
        (["pull", "camvid-x"], "registry names: camvid-supcon, camvid-unet"),
        (["push", str(tmp_path / "nowhere"), "alice/m"], "no such file or directory"),
    ]
    for args, expected in cases:
        proc = segcl(args, env)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
        assert wrong not in proc.stdout + proc.stderr
