"""``--resume`` after a crash or a copy: it continues the run in --out (never another folder),
drops what a kill left half-written with a one-line warning, and refuses a run it cannot
continue with one line naming the file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from segcl.engine.rundir import LOCK
from tests.faults.checks import case, expect

RESUME = ["finetune", "--resume", "--out", "run", "--quiet"]


def copied(edit: Callable[[Path], object]) -> Callable[[Path, Path], None]:
    """A copy of the tiny run as ``run/``, then ``edit(run)``."""

    def setup(folder: Path, run: Path) -> None:
        shutil.copytree(run, folder / "run", ignore=shutil.ignore_patterns(LOCK))
        edit(folder / "run")

    return setup


def torn(run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 0.5')  # killed mid-write: no end, no newline


def longer(run: Path) -> None:
    """Two more steps for the copy (its config.yaml still names the original folder)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["steps"] += 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def bit_rot(run: Path) -> None:
    path = run / "last" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"split"' not in line]


def same_metrics(folder: Path, run: Path) -> None:
    assert (folder / "run" / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()


def continued_in_the_copy(folder: Path, run: Path) -> None:
    before, after = steps(run), steps(folder / "run")
    assert after[: len(before)] == before and after[-1] == 8 and after == sorted(set(after))
    saved = yaml.safe_load((folder / "run" / "config.yaml").read_text())
    assert saved["out"] == "run" and saved["steps"] == 8


#: setup, exit status, what the one Error/Warning line must name, what may change, last checks
CASES = [
    case("a torn last metrics line is dropped", copied(torn), 0,
         ["Warning: run/metrics.jsonl", "torn line"],
         ["run/metrics.jsonl", "run/config.yaml", "run/curves.png"], same_metrics),
    case("--resume --out COPY continues the copy", copied(longer), 0, [], ["run"],
         continued_in_the_copy),
    case("an interrupted checkpoint swap is recovered",
         copied(lambda r: (r / "last").rename(r / "last.old")), 0, [], ["run"],
         lambda folder, _: (folder / "run" / "last" / "model.safetensors").is_file(), slow=True),
    case("no last/ checkpoint", copied(lambda r: shutil.rmtree(r / "last")), 2,
         ["run", "nothing to resume", "last/"], [], None, slow=True),
    case("bit-rotted last/ weights", copied(bit_rot), 2,
         ["run/last/model.safetensors", "SHA-256"], [], None, slow=True),
    case("training_state.json of the wrong shape",
         copied(lambda r: (r / "last" / "training_state.json").write_text("{}")), 2,
         ["run/last/training_state.json", "not a training state"], [], None, slow=True),
]


@pytest.mark.parametrize("setup, status, names, writes, check", CASES)
def test_resume_continues_the_run_in_out(setup: Callable, status: int, names: list[str],
                                         writes: list[str], check: Callable | None,
                                         tiny_run: Path, synthetic_data: Path,
                                         tmp_path: Path) -> None:
    setup(tmp_path, tiny_run)
    proc = expect(RESUME, tmp_path, [synthetic_data, tiny_run], names, status, writes)
    if status == 0:
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("Warning:")]
        assert len(warnings) == (1 if names else 0), proc.stderr
        assert all(name in warnings[0] for name in names), proc.stderr
        assert not (tmp_path / "run" / LOCK).exists()
    if check is not None:
        check(tmp_path, tiny_run)
