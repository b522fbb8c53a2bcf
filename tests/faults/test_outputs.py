"""Output paths that cannot be written: exit status 2, one line naming the path, nothing written.

In each case's folder, ``taken`` is a file and ``folder/`` a folder (holding ``keep.txt``); the
outputs point at them, or below the file. Output paths are checked before any work (an
evaluation is not run only to fail at its end).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from tests.faults.checks import TRAIN, case, expect

ROOT = "root writes into read-only folders" if os.geteuid() == 0 else None


LONG = "n" * 300  # a file name longer than the file system takes
TOO_LONG = "cannot be used as an output path (File name too long)"


def command_case(command: str, names: list[str], **marks) -> object:
    """A case named by its command (placeholders: {data}, {run})."""
    name = command.replace("{run} ", "").replace("{data}", "DATA").replace(LONG, "LONG")
    return case(name, command, names, **marks)


#: command, what the message must name
CASES = [
    command_case("evaluate {run} {data} --json folder", ["folder", "is a directory"]),
    command_case("evaluate {run} {data} --json taken/metrics.json", ["taken", "is a file"]),
    command_case("evaluate {run} {data} --confusion folder", ["folder", "is a directory"]),
    command_case("evaluate {run} {data} --confusion taken/sub/cm.png", ["taken", "is a file"]),
    command_case("evaluate {run} {data} --json ok.json --confusion folder", ["folder"]),
    command_case("predict {run} {data}/val/images --out taken", ["taken", "is a file"],
                 slow=True),
    command_case("predict {run} {data}/val/images --out taken/masks", ["taken", "is a file"],
                 slow=True),
    command_case("finetune {data} --out taken", ["taken", "is a file"]),
    command_case("finetune {data} --out taken/run", ["taken", "is a file"]),
    command_case("pretrain {data} --out taken", ["taken", "is a file"]),
    command_case("finetune --resume --out taken", ["taken", "is a file"]),
    command_case("hub pull {run} --out taken", ["taken", "is a file"]),
    command_case("hub pull {run} --out taken/checkpoint", ["taken", "is a file"]),
    command_case("demo --encoder test_resnet --steps 1 --out taken", ["taken", "is a file"]),
    command_case("export {run} --out taken/model.onnx", ["taken", "is a file"]),
    command_case("export {run} --out folder.onnx", ["folder.onnx", "is a directory"]),
    command_case(f"evaluate {{run}} {{data}} --json {LONG}/metrics.json", [TOO_LONG]),
    command_case(f"finetune {{data}} --out {LONG}", [TOO_LONG]),
    command_case(f"hub pull {{run}} --out {LONG}", [TOO_LONG]),
    command_case("evaluate {run} {data} --json read-only/metrics.json", ["read-only"],
                 skip=ROOT),
    command_case("hub pull {run} --out read-only/checkpoint", ["read-only"], skip=ROOT),
]

#: extra options, so that a command that wrongly runs stays small
EXTRA = {"evaluate": ["--workers", "0", "--quiet"], "predict": ["--quiet"],
         "finetune": list(TRAIN), "pretrain": list(TRAIN)}


@pytest.mark.parametrize("command, names", CASES)
def test_an_output_that_cannot_be_written_is_refused(command: str, names: list[str],
                                                     synthetic_data: Path, tiny_run: Path,
                                                     tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("someone else's file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("kept")
    (tmp_path / "folder.onnx").mkdir()
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o500)
    args = shlex.split(command.format(data=synthetic_data, run=tiny_run))
    try:
        expect([*args, *EXTRA.get(args[0], [])], tmp_path, [synthetic_data, tiny_run], names)
    finally:
        read_only.chmod(0o700)
