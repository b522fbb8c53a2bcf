"""Checks on the real CamVid train/val copy in ../shared/data/camvid (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segcl.config import DataConfig
from segcl.engine.data_setup import load_splits
from tests.conftest import CAMVID, run_cli

pytestmark = [
    pytest.mark.camvid,
    pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID}"),
]


def test_camvid_splits_and_nested_subsets() -> None:
    cfg = DataConfig(root=str(CAMVID), layout="camvid", labeled_fraction=0.125)
    eighth = load_splits(cfg, seed=0, validate=False)
    assert (len(eighth.labeled), len(eighth.unlabeled), len(eighth.val)) == (46, 321, 101)
    assert eighth.info.ignore_index == 11 and eighth.info.num_classes == 11
    cfg.labeled_fraction = 0.25
    quarter = load_splits(cfg, seed=0, need_val=False, validate=False)
    assert {s.image for s in eighth.labeled} < {s.image for s in quarter.labeled}


def test_predict_on_camvid_images_keeps_size_and_survives_a_corrupt_file(tiny_run,
                                                                          tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((CAMVID / "val" / "images").glob("*.jpg"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    proc = run_cli("predict", str(tiny_run), str(src), "--out", str(tmp_path / "out"),
                   "--device", "cpu")
    assert proc.returncode == 1 and "zz_corrupt.jpg" in proc.stdout + proc.stderr
    masks = sorted((tmp_path / "out").glob("*.png"))
    assert len(masks) == 3
    assert all(Image.open(m).size == (480, 360) for m in masks)
    assert all(np.array(Image.open(m)).max() < 4 for m in masks)  # the tiny model has 4 classes
