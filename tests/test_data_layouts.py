"""Dataset layouts, class descriptions, file reading, sample checks and labelled subsets."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from segcl.data import (
    CAMVID,
    CITYSCAPES,
    PET,
    VOC,
    DatasetInfo,
    SegmentationDataset,
    detect_layout,
    find_images,
    labeled_subset,
    load_pair,
    load_samples,
    read_image,
    read_mask,
    validate_samples,
    write_mask,
)
from segcl.errors import ConfigError, DataError

CAMVID_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


# --------------------------------------------------------------------------------------------
# helpers writing tiny files


def write_image(path: Path, h: int = 8, w: int = 10, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def write_label(path: Path, mask: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask.astype(np.uint8))
    if palette:
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)
    return path


def const_mask(value: int, h: int = 8, w: int = 10) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def make_folder(root: Path, stems: list[str], split: str | None = "train") -> Path:
    base = root / split if split else root
    for k, stem in enumerate(stems):
        write_image(base / "images" / f"{stem}.jpg", seed=k)
        write_label(base / "masks" / f"{stem}.png", const_mask(k % 3))
    return root


# --------------------------------------------------------------------------------------------
# DatasetInfo


def test_dataset_info_round_trip_and_builtins():
    info = DatasetInfo(["a", "b"], ignore_index=7, palette=[(1, 2, 3), [4, 5, 6]], name="x")
    assert info.num_classes == 2
    assert info.palette == [(1, 2, 3), (4, 5, 6)]
    assert DatasetInfo.from_dict(yaml.safe_load(yaml.safe_dump(info.to_dict()))) == info
    assert (CAMVID.num_classes, CAMVID.ignore_index, CAMVID.name) == (11, 11, "camvid")
    assert CAMVID.classes[3] == "road" and CAMVID.palette[3] == (128, 64, 128)
    assert (VOC.num_classes, VOC.ignore_index) == (21, 255)
    assert VOC.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert VOC.palette[15] == (192, 128, 128)  # person
    assert (CITYSCAPES.num_classes, len(CITYSCAPES.palette)) == (19, 19)
    assert (PET.classes, PET.name) == (["background", "pet"], "oxford-iiit-pet")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"classes": ["a", "b"], "ignore_index": 1}, "class 'b'"),
        ({"classes": ["a", "a"]}, "duplicate"),
        ({"classes": []}, "at least one"),
        ({"classes": ["a"], "palette": [(0, 0, 0), (1, 1, 1)]}, "2 colours for 1"),
        ({"classes": ["a"], "palette": [(0, 0, 300)]}, "0..255"),
    ],
)
def test_dataset_info_rejects_bad_values(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        DatasetInfo(**kwargs)


def test_dataset_info_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match="ignore_idx"):
        DatasetInfo.from_dict({"classes": ["a"], "ignore_idx": 3})
    with pytest.raises(ConfigError, match="classes"):
        DatasetInfo.from_dict({"name": "x"})


# --------------------------------------------------------------------------------------------
# folder layout


def test_folder_layout_with_splits_and_dataset_yaml(tmp_path):
    root = make_folder(tmp_path / "data", ["b", "a", "c"])
    make_folder(root, ["v"], split="val")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": ["x", "y", "z"], "name": "toy"}))
    samples, info = load_samples(root, "train", layout="folder")
    assert [s.image.name for s in samples] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [s.mask for s in samples] == [root / "train" / "masks" / f"{k}.png" for k in "abc"]
    assert info.classes == ["x", "y", "z"] and info.name == "toy" and info.ignore_index == 255
    val, _ = load_samples(root, "val")  # auto -> folder
    assert [s.image.stem for s in val] == ["v"]
    assert detect_layout(root) == "folder"


def test_folder_layout_without_splits_reads_parent_yaml(tmp_path):
    root = make_folder(tmp_path / "toy", ["one", "two"], split=None)
    (tmp_path / "dataset.yaml").write_text("classes: [bg, fg]\nignore_index: 9\n")
    samples, info = load_samples(root, "train")
    assert [s.image.stem for s in samples] == ["one", "two"]
    assert (info.classes, info.ignore_index) == (["bg", "fg"], 9)


def test_folder_layout_explicit_info_and_missing_description(tmp_path):
    root = make_folder(tmp_path / "data", ["a"])
    with pytest.raises(ConfigError, match=r"--classes.*dataset\.yaml"):
        load_samples(root)
    given = DatasetInfo(["p", "q", "r"])
    assert load_samples(root, info=given)[1] is given
    (root / "dataset.yaml").write_text("classes: [a]\nignore: 3\n")
    with pytest.raises(ConfigError, match=r"dataset\.yaml.*ignore"):
        load_samples(root)


def test_plain_image_folder_as_unlabelled_images(tmp_path):
    root = tmp_path / "raw"
    for name in ("b.jpg", "a.png", "more/c.jpg"):
        write_image(root / name)
    samples, info = load_samples(root, layout="folder", info=CAMVID, require_masks=False)
    assert [(s.image.relative_to(root).as_posix(), s.mask) for s in samples] == [
        ("a.png", None),
        ("b.jpg", None),
        ("more/c.jpg", None),
    ]
    assert info is CAMVID
    with pytest.raises(DataError, match=r"raw: no 'train' folder and no 'images' folder"):
        load_samples(root, layout="folder", info=CAMVID)


def test_folder_layout_pairs_nested_folders(tmp_path):
    root = tmp_path / "data"
    write_image(root / "train" / "images" / "city1" / "x.png")
    write_image(root / "train" / "images" / "city2" / "x.png")
    write_label(root / "train" / "masks" / "city1" / "x.png", const_mask(1))
    write_label(root / "train" / "masks" / "city2" / "x.png", const_mask(2))
    samples, _ = load_samples(root, info=DatasetInfo(["a", "b", "c"]))
    assert [(s.image.parent.name, s.mask.parent.name) for s in samples] == [
        ("city1", "city1"),
        ("city2", "city2"),
    ]


# --------------------------------------------------------------------------------------------
# known layouts


def test_camvid_images_masks_layout(tmp_path):
    root = make_folder(tmp_path / "CamVid_small", ["0001TP_1", "0001TP_0"])
    assert detect_layout(root) == "camvid"
    samples, info = load_samples(root, "train")
    assert info is CAMVID
    assert [(s.image.name, s.mask.name) for s in samples] == [
        ("0001TP_0.jpg", "0001TP_0.png"),
        ("0001TP_1.jpg", "0001TP_1.png"),
    ]


def test_camvid_segnet_layout(tmp_path):
    root = tmp_path / "segnet"
    for split, stems in {"train": ["t1", "t0"], "val": ["v0"], "test": ["s0"]}.items():
        for stem in stems:
            write_image(root / split / f"{stem}.png")
            write_label(root / f"{split}annot" / f"{stem}.png", const_mask(11))
    assert detect_layout(root) == "camvid"
    train, info = load_samples(root, "train")
    assert info is CAMVID
    assert [(s.image.parent.name, s.image.stem, s.mask.parent.name) for s in train] == [
        ("train", "t0", "trainannot"),
        ("train", "t1", "trainannot"),
    ]
    test, _ = load_samples(root, "test")
    assert [s.mask for s in test] == [root / "testannot" / "s0.png"]
    _, mask = load_pair(train[0], info)
    assert (mask == 11).all()


def make_voc(root: Path) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    masks = {"2007_000001": const_mask(15), "2007_000002": const_mask(0)}
    masks["2007_000002"][0, :] = 255
    masks["2007_000002"][3:5, 3:5] = 20
    for stem, mask in masks.items():
        write_image(base / "JPEGImages" / f"{stem}.jpg")
        write_label(base / "SegmentationClass" / f"{stem}.png", mask, palette=True)
    write_image(base / "JPEGImages" / "2007_000003.jpg")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000002\n2007_000001\n\n")
    (lists / "val.txt").write_text("2007_000003\n")
    return root / "VOCdevkit"


def test_voc_layout_palette_masks_and_split_lists(tmp_path):
    devkit = make_voc(tmp_path)
    assert detect_layout(devkit) == "voc" and detect_layout(devkit / "VOC2012") == "voc"
    for root in (devkit, devkit / "VOC2012"):
        samples, info = load_samples(root, "train")
        assert info is VOC
        assert [s.image.stem for s in samples] == ["2007_000001", "2007_000002"]
    assert Image.open(samples[0].mask).mode == "P"
    _, first = load_pair(samples[0], info)
    _, second = load_pair(samples[1], info)
    assert set(np.unique(first)) == {15}  # the palette index, not a colour channel
    assert set(np.unique(second)) == {0, 20, 255}
    with pytest.raises(DataError, match=r"2007_000003\.jpg.*SegmentationClass/2007_000003\.png"):
        load_samples(devkit, "val")
    unlabelled, _ = load_samples(devkit, "val", require_masks=False)
    assert unlabelled[0].mask is None
    with pytest.raises(DataError, match=r"test\.txt"):
        load_samples(devkit, "test")


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    label_ids = np.array([[7, 8, 26, 33, 0], [1, 23, 24, 5, 34]], dtype=np.uint8)
    for city, name in (("bremen", "bremen_000000_000019"), ("aachen", "aachen_000001_000019")):
        write_image(root / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png", 2, 5)
        write_label(root / "gtFine" / "train" / city / f"{name}_gtFine_labelIds.png", label_ids)
        write_label(root / "gtFine" / "train" / city / f"{name}_gtFine_color.png", label_ids)
    assert detect_layout(root) == "cityscapes"
    samples, info = load_samples(root, "train")
    assert info is CITYSCAPES
    assert [s.image.parent.name for s in samples] == ["aachen", "bremen"]
    assert samples[0].mask.name == "aachen_000001_000019_gtFine_labelIds.png"
    _, mask = load_pair(samples[0], info)
    np.testing.assert_array_equal(mask, [[0, 1, 13, 18, 255], [255, 10, 11, 255, 255]])
    with pytest.raises(DataError, match=r"leftImg8bit/val"):
        load_samples(root, "val")


def test_pet_layout_maps_trimaps(tmp_path):
    root = tmp_path / "oxford-iiit-pet"
    trimap = np.array([[1, 2, 3], [2, 1, 1]], dtype=np.uint8)
    for stem in ("Abyssinian_1", "beagle_2", "Bombay_3"):
        write_image(root / "images" / f"{stem}.jpg", 2, 3)
        write_label(root / "annotations" / "trimaps" / f"{stem}.png", trimap)
    (root / "annotations" / "trainval.txt").write_text(
        "#Image CLASS-ID SPECIES BREED ID\nbeagle_2 13 2 3\nAbyssinian_1 1 1 1\n"
    )
    (root / "annotations" / "test.txt").write_text("Bombay_3 5 1 5\n")
    assert detect_layout(root) == "pet"
    train, info = load_samples(root, "train")
    assert info is PET
    assert [s.image.stem for s in train] == ["Abyssinian_1", "beagle_2"]
    _, mask = load_pair(train[0], info)
    np.testing.assert_array_equal(mask, [[1, 0, 255], [0, 1, 1]])
    assert [s.image.stem for s in load_samples(root, "val")[0]] == ["Bombay_3"]
    with pytest.raises(ConfigError, match="no split 'extra'"):
        load_samples(root, "extra")


def test_unknown_layout(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset layout"):
        load_samples(tmp_path, layout="coco")


# --------------------------------------------------------------------------------------------
# problems found on disk: every DataError names the file


def test_missing_root_split_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"nope: dataset folder not found"):
        load_samples(tmp_path / "nope")
    root = make_folder(tmp_path / "data", ["a"])
    with pytest.raises(DataError, match=r"no 'val' folder"):
        load_samples(root, "val", info=CAMVID)
    (root / "val" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"val/images: no images found"):
        load_samples(root, "val", info=CAMVID)


def test_missing_mask_names_image_and_expected_path(tmp_path):
    root = make_folder(tmp_path / "data", ["a", "b"])
    (root / "train" / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match=r"images/b\.jpg: no mask found \(expected .*masks/b\.png"):
        load_samples(root, info=CAMVID)
    samples, _ = load_samples(root, info=CAMVID, require_masks=False)
    assert [s.mask is None for s in samples] == [False, True]
    ds = SegmentationDataset(samples, CAMVID)
    assert (ds[1]["mask"] == CAMVID.ignore_index).all()


def test_ambiguous_stems_are_rejected(tmp_path):
    root = make_folder(tmp_path / "data", ["a"])
    write_image(root / "train" / "images" / "a.png")
    with pytest.raises(DataError, match=r"a\.png: same name as .*a\.jpg"):
        load_samples(root, info=CAMVID)


def test_size_mismatch_and_bad_labels(tmp_path):
    root = make_folder(tmp_path / "data", ["a", "b", "c"])
    write_label(root / "train" / "masks" / "b.png", const_mask(0, 8, 9))
    bad = const_mask(1)
    bad[0, 0], bad[1, 1] = 12, 200
    write_label(root / "train" / "masks" / "c.png", bad)
    samples, info = load_samples(root, info=CAMVID)
    with pytest.raises(DataError, match=r"masks/b\.png: mask is 9x8 but image .*b\.jpg is 10x8"):
        load_pair(samples[1], info)
    with pytest.raises(DataError, match=r"masks/c\.png: label values 12, 200 are not class"):
        load_pair(samples[2], info)
    assert load_pair(samples[2], DatasetInfo([str(i) for i in range(201)]))[1][1, 1] == 200
    with pytest.raises(DataError, match=r"masks/b\.png"):  # earliest bad sample is reported
        validate_samples(samples, info)
    validate_samples(samples, info, limit=1)
    ds = SegmentationDataset(samples, info)
    with pytest.raises(DataError, match=r"c\.png"):
        ds[2]


def test_pseudo_label_masks_override_files(tmp_path):
    root = make_folder(tmp_path / "data", ["a", "b"])
    samples, info = load_samples(root, info=CAMVID, require_masks=False)
    pseudo = np.full((8, 10), 4, dtype=np.uint8)
    ds = SegmentationDataset(samples, info, masks={1: pseudo})
    assert (ds[1]["mask"] == 4).all() and (ds[0]["mask"] == 0).all()
    wrong = SegmentationDataset(samples, info, masks={0: np.zeros((3, 3), np.uint8)})
    with pytest.raises(DataError, match=r"pseudo-label of .*a\.jpg: mask is 3x3"):
        wrong[0]


def test_unreadable_image_and_colour_mask(tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not an image at all")  # (a JPEG cut short: tests/test_data_io.py)
    with pytest.raises(DataError, match=r"broken\.jpg: unreadable image"):
        read_image(corrupt)
    with pytest.raises(DataError, match=r"missing\.png: image not found"):
        read_image(tmp_path / "missing.png")
    colour = tmp_path / "colour.png"
    Image.fromarray(np.dstack([const_mask(128), const_mask(64), const_mask(128)])).save(colour)
    with pytest.raises(DataError, match=r"colour\.png: .*colour \(RGB\) mask.*class-index"):
        read_mask(colour)
    gray_rgb = tmp_path / "gray_rgb.png"
    Image.fromarray(np.dstack([const_mask(3)] * 3)).save(gray_rgb)
    assert (read_mask(gray_rgb) == 3).all()
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n garbage")
    with pytest.raises(DataError, match=r"bad\.png: unreadable mask"):
        read_mask(bad_png)
    root = make_folder(tmp_path / "data", ["a"])
    (root / "train" / "images" / "a.jpg").write_bytes(b"junk")
    samples, info = load_samples(root, info=CAMVID)
    with pytest.raises(DataError, match=r"images/a\.jpg: unreadable image"):
        validate_samples(samples, info)


def test_read_mask_modes_and_write_mask(tmp_path):
    values = np.array([[0, 1, 300], [2, 1000, 0]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    got = read_mask(tmp_path / "deep.png")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, values)
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.png"), [[1, 0]])
    mask = np.array([[0, 1], [20, 255]], dtype=np.uint8)
    write_mask(tmp_path / "out" / "m.png", mask, palette=VOC.palette)
    with Image.open(tmp_path / "out" / "m.png") as im:
        assert im.mode == "P"
        assert im.convert("RGB").getpixel((0, 0)) == (0, 0, 0)
        assert im.convert("RGB").getpixel((1, 0)) == VOC.palette[1]
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "m.png"), mask)


def test_find_images_recursion_and_relative_outputs(tmp_path):
    folder = tmp_path / "in"
    for rel in ("b.jpg", "a.PNG", "sub/deep/c.webp", ".hidden/x.jpg", "sub/.y.jpg"):
        write_image(folder / rel)
    (folder / "notes.txt").write_text("not an image")
    single = write_image(tmp_path / "other" / "single.bmp")
    found = find_images([folder, str(single)])
    assert [(f.relative_to(tmp_path).as_posix(), o.as_posix()) for f, o in found] == [
        ("in/a.PNG", "a"),
        ("in/b.jpg", "b"),
        ("in/sub/deep/c.webp", "sub/deep/c"),
        ("other/single.bmp", "single"),
    ]
    with pytest.raises(DataError, match=r"missing: no such file or folder"):
        find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images found"):
        find_images([tmp_path / "empty"])
    write_image(folder / "b.png")
    with pytest.raises(DataError, match=r"b\.png: would write the same output 'b'"):
        find_images([folder])


# --------------------------------------------------------------------------------------------
# labelled subsets


def test_labeled_subsets_are_nested_and_deterministic():
    n = 367
    eighth, quarter, half = (labeled_subset(n, fraction=f, seed=3) for f in (1 / 8, 1 / 4, 1 / 2))
    assert (len(eighth), len(quarter), len(half)) == (46, 92, 184)
    assert set(eighth) < set(quarter) < set(half) < set(range(n))
    assert eighth == sorted(eighth) and len(set(eighth)) == len(eighth)
    assert labeled_subset(n, fraction=1 / 8, seed=3) == eighth
    assert labeled_subset(n, count=46, seed=3) == eighth
    assert labeled_subset(n, fraction=1 / 8, seed=4) != eighth
    assert labeled_subset(n) == list(range(n)) == labeled_subset(n, fraction=1.0)
    assert len(labeled_subset(5, fraction=0.01)) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fraction": 0.5, "count": 3},
        {"fraction": 0.0},
        {"fraction": 1.5},
        {"count": 0},
        {"count": 11},
        {"count": 2.5},
        {"count": 2, "seed": -1},
    ],
)
def test_labeled_subset_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        labeled_subset(10, **kwargs)


# --------------------------------------------------------------------------------------------
# the real data


@pytest.mark.camvid
@pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason=f"CamVid not found at {CAMVID_ROOT}")
def test_real_camvid_samples_load():
    samples, info = load_samples(CAMVID_ROOT, "train")
    assert info is CAMVID and len(samples) > 3
    assert samples == sorted(samples, key=lambda s: s.image.stem)
    validate_samples(samples[:3], info)
    for sample in samples[:3]:
        image, mask = load_pair(sample, info)
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert mask.shape == (360, 480)
        assert set(np.unique(mask)) <= set(range(12))
