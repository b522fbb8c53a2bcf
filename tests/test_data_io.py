"""read_image refuses truncated JPEGs that OpenCV would decode half-grey."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segcl.data import read_image
from segcl.errors import DataError


def test_truncated_jpeg_is_refused_and_whole_one_read(tmp_path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    whole, cut = tmp_path / "whole.jpg", tmp_path / "cut.jpg"
    whole.write_bytes(buf.tobytes())
    cut.write_bytes(buf.tobytes()[: len(buf) // 2])
    assert read_image(whole).shape == (64, 80, 3)
    assert cv2.imread(str(cut)) is not None  # OpenCV alone would accept it
    with pytest.raises(DataError, match=r"cut\.jpg: truncated JPEG"):
        read_image(cut)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="unreadable image"):
        read_image(tmp_path / "empty.png")


def test_find_images_keeps_dangling_links_so_they_are_reported(tmp_path) -> None:
    import os

    from segcl.data import find_images, read_image
    from segcl.errors import DataError

    (tmp_path / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "gone.png", tmp_path / "b.png")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.png").write_bytes(b"x")
    found = find_images([tmp_path])
    assert [str(rel) for _, rel in found] == ["a", "b"]
    with pytest.raises(DataError, match=r"b\.png"):
        read_image(found[1][0])


def test_exif_orientation_is_ignored_like_the_masks(tmp_path) -> None:
    from PIL import Image

    from segcl.data import read_image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "n.jpg")
    rotated, plain = read_image(tmp_path / "r.jpg"), read_image(tmp_path / "n.jpg")
    assert rotated.shape == plain.shape == (20, 40, 3)


@pytest.mark.parametrize("side", [100_000, 20_000])
def test_a_forged_huge_header_is_refused_before_decoding(tmp_path, monkeypatch, side) -> None:
    from segcl.data import read_image
    from segcl.errors import DataError
    from tests.conftest import forged_png

    (tmp_path / "big.png").write_bytes(forged_png(side))
    monkeypatch.setenv("SEGCL_MAX_IMAGE_PIXELS", str(10_000 * 10_000))
    with pytest.raises(DataError, match=r"big\.png: .*more than the limit"):
        read_image(tmp_path / "big.png")


def test_opencv_assertions_become_data_errors(tmp_path, monkeypatch) -> None:
    import cv2

    from segcl.data import io as segcl_io
    from segcl.errors import DataError

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))

    def refuse(*_):
        raise cv2.error("OpenCV: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS")

    monkeypatch.setattr(segcl_io.cv2, "imdecode", refuse)
    with pytest.raises(DataError, match=r"a\.png: unreadable image \(.*CV_IO_MAX_IMAGE_PIXELS"):
        segcl_io.read_image(tmp_path / "a.png")


def test_reader_pool_lives_with_its_process_and_is_fresh_after_fork():
    """Decoding threads are kept (a thread that ends right before a DataLoader forks can leave
    OpenCV's TLS mutex locked in the child); a forked child builds its own pool."""
    import os

    from segcl.data.io import reader_pool

    pool = reader_pool()
    assert reader_pool() is pool and pool.submit(lambda: 7).result() == 7
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's threads do not exist here
        ok = reader_pool() is not pool and reader_pool().submit(lambda: 3).result() == 3
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


@pytest.mark.parametrize("name, shape, dtype", [
    ("rgb.jpg", (30, 40, 3), np.uint8), ("grey.jpg", (30, 40), np.uint8),
    ("rgb.png", (30, 40, 3), np.uint8), ("grey16.png", (30, 40), np.uint16),
    ("rgb16.png", (30, 40, 3), np.uint16), ("rgba.png", (30, 40, 4), np.uint8),
    ("rgb.bmp", (30, 40, 3), np.uint8), ("rgb.tif", (30, 40, 3), np.uint8)])
def test_images_decode_to_the_same_rgb_pixels_as_bgr_then_swapped(tmp_path, name, shape,
                                                                   dtype) -> None:
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    path = tmp_path / name
    assert cv2.imwrite(str(path), pixels)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 40, 3)
    np.testing.assert_array_equal(rgb, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
