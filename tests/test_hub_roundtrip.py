"""A model fine-tuned on generated data, pushed to the loopback Hub stand-in, pulled into a fresh
HF_HOME: ``segcl predict hf://...`` writes exactly the masks of the local checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.hub_server import FakeHub, client_env

TOKEN = "hf_roundtrip_write_token_1234"


def _segcl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segcl", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_push_pull_predict_gives_identical_masks(tiny_run, synthetic_data, tmp_path) -> None:
    images = synthetic_data / "val" / "images"
    with FakeHub(tokens={TOKEN: ("alice", "write")}) as hub:
        push_env = client_env(hub.url, tmp_path / "home_push", TOKEN)
        pushed = _segcl(["hub", "push", str(tiny_run), "alice/tiny", "--quiet"], push_env)
        assert pushed.returncode == 0, pushed.stderr
        ref = pushed.stdout.strip().splitlines()[-1]
        assert ref.startswith("hf://alice/tiny@")

        fresh = client_env(hub.url, tmp_path / "home_fresh", None)
        remote = _segcl(["predict", ref, str(images), "--out", str(tmp_path / "remote"),
                         "--device", "cpu", "--quiet"], fresh)
        assert remote.returncode == 0, remote.stderr
    local = _segcl(["predict", str(tiny_run), str(images), "--out", str(tmp_path / "local"),
                    "--device", "cpu", "--quiet"], fresh)
    assert local.returncode == 0, local.stderr

    local_masks = sorted((tmp_path / "local").rglob("*.png"))
    assert len(local_masks) == 4
    for path in local_masks:
        other = tmp_path / "remote" / path.relative_to(tmp_path / "local")
        assert np.array_equal(np.array(Image.open(path)), np.array(Image.open(other))), path
    # the pulled copy sits in the fresh HF_HOME cache
    assert list(Path(tmp_path / "home_fresh").rglob("model.safetensors"))
