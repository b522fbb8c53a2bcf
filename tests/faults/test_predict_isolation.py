"""One bad input never stops ``predict``: every good image is written, every bad one is
reported on one line naming it, the exit status is 1.

One ``predict --overlay`` run reads a folder holding one sub-folder per case: a good image and
the case's bad entry next to it. Each case then checks its own sub-folder's outputs and report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import forged_png
from tests.faults.checks import case, expect

#: the image size limit of the run (the synthetic images have 48 x 64 = 3072 pixels)
LIMIT = 10_000


def encoded(ext: str, height: int = 48, width: int = 64) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _locked(folder: Path) -> None:
    (folder / "locked").mkdir()
    (folder / "locked" / "x.png").write_bytes(encoded(".png"))
    (folder / "locked").chmod(0)


#: case -> (what to put next to good.png, the bad entry's name or None when all are good)
CASES: dict[str, tuple[Callable[[Path], object], str | None]] = {
    "corrupt": (lambda f: (f / "corrupt.jpg").write_bytes(b"this is not a jpeg"), "corrupt.jpg"),
    "truncated png": (lambda f: (f / "cut.png").write_bytes(encoded(".png")[:400]), "cut.png"),
    "truncated jpeg": (lambda f: (f / "cut.jpg").write_bytes(encoded(".jpg")[:600]), "cut.jpg"),
    "empty file": (lambda f: (f / "empty.png").write_bytes(b""), "empty.png"),
    "dangling symlink": (lambda f: os.symlink(f / "gone.png", f / "dangling.png"),
                         "dangling.png"),
    "huge header": (lambda f: (f / "huge.png").write_bytes(forged_png(100_000)), "huge.png"),
    "over SEGCL_MAX_IMAGE_PIXELS": (
        lambda f: (f / "big.png").write_bytes(encoded(".png", 100, 120)), "big.png"),
    "named pipe": (lambda f: os.mkfifo(f / "pipe.png"), "pipe.png"),
    "non-UTF-8 name": (lambda f: (Path(os.fsdecode(bytes(f) + b"/\xff\xfe.png"))
                                  .write_bytes(encoded(".png"))), None),
    "unreadable folder": (_locked, "locked"),
}
AS_ROOT = os.geteuid() == 0  # root reads folders without permission: nothing to report


@pytest.fixture(scope="module")
def predicted(tiny_run: Path, synthetic_data: Path,
              tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The folder of one ``predict --overlay`` run over every case, and its process."""
    folder = tmp_path_factory.mktemp("isolation")
    good = next((synthetic_data / "val" / "images").iterdir())
    for name, (make, _) in CASES.items():
        if name == "unreadable folder" and AS_ROOT:
            continue
        sub = folder / "in" / name
        sub.mkdir(parents=True)
        shutil.copy(good, sub / "good.png")
        make(sub)
    try:
        proc = expect(["predict", tiny_run, "in", "--out", "out", "--overlay", "--batch-size", "3",
                       "--quiet"], folder, [synthetic_data, tiny_run], status=1,
                      writes=["out"], env={"SEGCL_MAX_IMAGE_PIXELS": str(LIMIT)})
    finally:
        if not AS_ROOT:
            (folder / "in" / "unreadable folder" / "locked").chmod(0o700)
    return folder, proc


@pytest.mark.parametrize("name", [
    case(name, name, skip="root reads any folder" if name == "unreadable folder" and AS_ROOT
         else None) for name in CASES])
def test_a_bad_input_is_reported_and_the_rest_written(predicted, name: str) -> None:
    folder, proc = predicted
    bad = CASES[name][1]
    inputs = sorted(os.listdir(folder / "in" / name))
    written = sorted(os.listdir(folder / "out" / name))
    goods = [Path(n).stem for n in inputs if n not in (bad, "gone.png")]
    assert written == sorted([f"{g}.png" for g in goods] + [f"{g}_overlay.jpg" for g in goods])
    for output in written:  # complete files: the masks decode at the input's size
        if output.endswith(".png"):
            with Image.open(folder / "out" / name / output) as mask:
                mask.load()
                assert (mask.mode, mask.size) == ("P", (64, 48)), output
    report = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
              if f"{name}/" in line]
    if bad is None:
        assert report == [], report
    else:
        assert len(report) == 1 and f"{name}/{bad}" in report[0], report
