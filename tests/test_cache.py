"""The decoded-image cache (``--cache``): same items, same training, read-only arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segcl.config import DataConfig, FinetuneConfig, SemiConfig
from segcl.data import SegmentationDataset, load_samples
from segcl.data import cache as cache_module
from segcl.data.cache import DecodedCache, decoded_bytes, should_cache
from segcl.data.transforms import (
    PairTransform,
    TrainTransform,
    TwoViewTransform,
    WeakStrongTransform,
)
from segcl.engine.data_setup import train_loader
from segcl.engine.finetune import finetune
from segcl.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def samples(synthetic_data):
    return load_samples(synthetic_data, "train")


TRANSFORMS = {
    "train": lambda: TrainTransform((24, 32), scale=(0.5, 2.0), brightness=0.3, contrast=0.3),
    "pair": lambda: PairTransform((24, 32)),
    "two-view": lambda: TwoViewTransform((24, 32)),
    "weak-strong": lambda: WeakStrongTransform((24, 32), (0.5, 2.0), 2, 0.5),
}


def _epochs(ds: SegmentationDataset, workers: int) -> list[list[dict]]:
    loader, sampler = train_loader(ds, 2, seed=5, workers=workers, device=torch.device("cpu"))
    out = []
    for epoch in range(2):  # a second epoch would see any in-place change of a cached array
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_cached_items_equal_uncached_items(samples, name):
    (sample_list, info) = samples
    subset = sample_list[:6]
    off = SegmentationDataset(subset, info, TRANSFORMS[name](), seed=2, cache="off")
    on = SegmentationDataset(subset, info, TRANSFORMS[name](), seed=2, cache="on")
    assert off.cache is None and on.cache is not None and len(on.cache) == 6
    for a_epoch, b_epoch in zip(_epochs(off, 0), _epochs(on, 2), strict=True):
        for a, b in zip(a_epoch, b_epoch, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key


def test_cached_arrays_are_read_only(samples):
    sample_list, info = samples
    cache = DecodedCache(sample_list[:2], info)
    image, mask = cache[0]
    assert image.dtype == np.uint8 and not image.flags.writeable and not mask.flags.writeable
    assert cache.nbytes == sum(im.nbytes + m.nbytes for im, m in cache.items)
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1


def test_cache_reports_the_first_bad_file(samples, tmp_path):
    sample_list, info = samples
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = [sample_list[0], type(sample_list[0])(broken, sample_list[1].mask)]
    with pytest.raises(DataError, match=r"broken\.png"):
        SegmentationDataset(bad, info, cache="on")


def test_auto_caches_what_fits_the_memory_bound(samples, monkeypatch):
    sample_list, _ = samples
    need = decoded_bytes(sample_list)
    first = sample_list[0]
    h, w = SegmentationDataset([first], samples[1])[0]["image"].shape[-2:]
    assert need >= len(sample_list) * h * w * 4 > 0  # RGB + mask per labelled image
    assert should_cache("on", sample_list) and not should_cache("off", sample_list)
    monkeypatch.setattr(cache_module, "memory_bytes", lambda: need * 100)
    assert should_cache("auto", sample_list)
    monkeypatch.setattr(cache_module, "memory_bytes", lambda: need)  # 1/8 of it is too little
    assert not should_cache("auto", sample_list)


def test_cache_option_is_validated():
    with pytest.raises(ConfigError, match="--cache must be one of auto, on, off"):
        DataConfig(cache="sometimes")


def test_same_seed_same_metrics_with_cache_on_and_off(synthetic_data, tmp_path):
    """A semi-supervised run (three cached datasets: labelled, unlabelled stream, val) ends
    with the same weights and metrics whether the images are cached or not."""

    def run(cache: str) -> tuple[list[dict], Path]:
        out = tmp_path / cache
        finetune(FinetuneConfig(
            data=DataConfig(root=str(synthetic_data), image_size=(32, 48), labeled_count=4,
                            workers=1, cache=cache),
            semi=SemiConfig(enabled=True, threshold=0.0, strong_views=1, batch_size=2),
            encoder="test_resnet", out=str(out), steps=6, batch_size=2, log_every=1,
            val_every=1, seed=4))
        lines = (out / "metrics.jsonl").read_text().splitlines()
        records = [{k: v for k, v in json.loads(x).items() if k != "images_per_s"}
                   for x in lines]
        return records, out

    (off, off_dir), (on, on_dir) = run("off"), run("on")
    assert off == on
    assert any(r.get("split") == "val" for r in on)
    from safetensors.torch import load_file

    a, b = (load_file(d / "last" / "model.safetensors") for d in (off_dir, on_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
