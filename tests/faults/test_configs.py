"""Broken configuration files: exit status 2, one line naming the file and the key, nothing
written.

The files: a checkpoint's ``config.json`` (read by evaluate, predict, --init), a run's
``config.yaml`` (read by --resume) and a dataset's ``dataset.yaml``. Each case writes its broken
file into its own folder and runs the command that reads it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.faults.checks import TRAIN, case, expect

Setup = Callable[[Path, Path, Path], list[str]]  # (folder, tiny run, data) -> the command
Edit = Callable[[dict[str, Any]], Any] | str  # edits the parsed file, or replaces its text


def rewrite(path: Path, edit: Edit, load: Callable[[str], Any],
            dump: Callable[[Any], str]) -> None:
    """Apply ``edit`` to the file at ``path`` (parsed with ``load``, written with ``dump``)."""
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        content = load(path.read_text())
        edit(content)
        path.write_text(dump(content))


def checkpoint(edit: Edit, command: str = "evaluate") -> Setup:
    """A copy of the tiny run's best/ checkpoint as ``ck/``, its config.json edited, read by
    ``command``."""

    def setup(folder: Path, run: Path, data: Path) -> list[str]:
        shutil.copytree(run / "best", folder / "ck")
        rewrite(folder / "ck" / "config.json", edit, json.loads, json.dumps)
        return {"evaluate": ["evaluate", "ck", str(data), "--workers", "0", "--quiet"],
                "predict": ["predict", "ck", str(data / "val" / "images"), "--out", "pred"],
                "init": ["finetune", str(data), *TRAIN, "--init", "ck", "--out", "run"],
                }[command]

    return setup


def run_config(edit: Edit, command: str = "finetune") -> Setup:
    """A run folder ``run/`` holding the tiny run's config.yaml, edited, resumed by
    ``command``."""

    def setup(folder: Path, run: Path, data: Path) -> list[str]:
        (folder / "run").mkdir()
        shutil.copy(run / "config.yaml", folder / "run" / "config.yaml")
        rewrite(folder / "run" / "config.yaml", edit, yaml.safe_load, yaml.safe_dump)
        return [command, "--resume", "--out", "run"]

    return setup


def dataset_yaml(text: str) -> Setup:
    """A copy of the dataset as ``data/`` with ``text`` as its dataset.yaml, fine-tuned on."""

    def setup(folder: Path, run: Path, data: Path) -> list[str]:
        shutil.copytree(data, folder / "data")
        (folder / "data" / "dataset.yaml").write_text(text)
        return ["finetune", "data", *TRAIN, "--out", "run"]

    return setup


def no_run(make_folder: bool) -> Setup:
    """``--resume`` on a folder without a run (an empty one, or none at all)."""

    def setup(folder: Path, run: Path, data: Path) -> list[str]:
        if make_folder:
            (folder / "run").mkdir()
        return ["finetune", "--resume", "--out", "run"]

    return setup


#: the file's fault, how to make it and the command that reads it, what the message must name;
#: slow: the command imports torch first (checkpoints: tests/test_config_checks.py checks the
#: same files in-process)
CASES = [
    case("checkpoint without data section", checkpoint(lambda c: c.pop("data")),
         ["ck/config.json", "'data'"], slow=True),
    case("checkpoint image_size [0, 0]",
         checkpoint(lambda c: c["data"].update(image_size=[0, 0]), "predict"),
         ["ck/config.json", "data.image_size", "[0, 0]"], slow=True),
    case("checkpoint num_classes as a string",
         checkpoint(lambda c: c["model"].update(num_classes="11")),
         ["ck/config.json", "model.num_classes", "integer"], slow=True),
    case("checkpoint config.json not JSON", checkpoint("{not json"), ["ck/config.json", "JSON"],
         slow=True),
    case("checkpoint config.json a list", checkpoint("[1, 2]", "predict"),
         ["ck/config.json", "JSON object"], slow=True),
    case("--init checkpoint with a scalar model section",
         checkpoint(lambda c: c.update(model=5), "init"), ["ck/config.json", "'model'"],
         slow=True),
    case("config.yaml not YAML", run_config("batch_size: [1, 2\n"), ["run/config.yaml", "line 2"]),
    case("config.yaml a list", run_config("- 1\n- 2\n"), ["run/config.yaml", "mapping"]),
    case("config.yaml empty", run_config(""), ["run/config.yaml", "mapping", "empty file"]),
    case("config.yaml without a data section", run_config(lambda c: c.pop("data")),
         ["run/config.yaml", "data.root"]),
    case("config.yaml data section a number", run_config(lambda c: c.update(data=5)),
         ["run/config.yaml", "'data'", "mapping"]),
    case("config.yaml batch_size as a string", run_config(lambda c: c.update(batch_size="8")),
         ["run/config.yaml", "--batch-size"]),
    case("config.yaml negative lr", run_config(lambda c: c["optim"].update(lr=-1)),
         ["run/config.yaml", "--lr"]),
    case("config.yaml image_size [0, 0]",
         run_config(lambda c: c["data"].update(image_size=[0, 0])),
         ["run/config.yaml", "--image-size"]),
    case("config.yaml encoder a number", run_config(lambda c: c.update(encoder=18)),
         ["run/config.yaml", "'encoder'", "string"]),
    case("config.yaml unknown key", run_config(lambda c: c.update(bogus=1)),
         ["run/config.yaml", "bogus"]),
    case("pretrain config.yaml not YAML", run_config("method: [supcon\n", "pretrain"),
         ["run/config.yaml", "line 2"]),
    case("--resume on an empty folder", no_run(True), ["run", "nothing to resume"]),
    case("--resume on a missing folder", no_run(False), ["run", "nothing to resume"]),
    case("dataset.yaml not YAML", dataset_yaml("classes: [a, b\n"),
         ["data/dataset.yaml", "line 2"]),
    case("dataset.yaml a list", dataset_yaml("- a\n- b\n"), ["data/dataset.yaml", "mapping"],
         slow=True),
]


@pytest.mark.parametrize("setup, names", CASES)
def test_a_broken_config_file_is_named(setup: Setup, names: list[str], synthetic_data: Path,
                                       tiny_run: Path, tmp_path: Path) -> None:
    args = setup(tmp_path, tiny_run, synthetic_data)
    expect(args, tmp_path, [synthetic_data, tiny_run], names)
