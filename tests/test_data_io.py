"""fusion_models.data.io: reading every real set, layouts, bit depths, and broken files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fusion_models.data import io as data_io
from fusion_models.data.io import (
    DataError,
    ImageReadError,
    probe_image,
    read_image,
    to_float255,
    write_image,
)

# (set, folder) -> (files, channels returned), from ../shared/data/SOURCES.md
EXPECTED = {
    ("tno", "ir"): (25, 1),
    ("tno", "vi"): (25, 1),
    ("roadscene", "ir"): (50, 1),
    ("roadscene", "vi"): (50, 3),
    ("lytro", "a"): (20, 3),
    ("lytro", "b"): (20, 3),
    ("harvard_mri_pet", "mri"): (24, 1),
    ("harvard_mri_pet", "pet"): (24, 3),
    ("harvard_mri_ct", "ct"): (24, 1),
    ("harvard_mri_ct", "mri"): (24, 1),
    ("mefb", "a"): (24, 3),
    ("mefb", "b"): (24, 3),
}


@pytest.mark.parametrize(("set_name", "folder"), sorted(EXPECTED))
def test_real_sets_read_with_documented_layout(shared_data, set_name, folder):
    files = sorted((shared_data / set_name / folder).iterdir())
    count, channels = EXPECTED[(set_name, folder)]
    assert len(files) == count
    for path in files:
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == channels
        assert probe_image(path) == (img.shape[1], img.shape[0])


def test_tno_grey_stored_as_rgb_comes_back_single_channel(shared_data):
    path = shared_data / "tno" / "ir" / "01.png"
    assert Image.open(path).mode == "RGB"  # stored as 3 equal channels
    img = read_image(path)
    assert img.shape == (576, 768, 1)
    np.testing.assert_array_equal(img[:, :, 0], np.asarray(Image.open(path))[:, :, 0])


def test_colour_is_rgb_order(shared_data):
    path = shared_data / "harvard_mri_pet" / "pet" / sorted(
        p.name for p in (shared_data / "harvard_mri_pet" / "pet").iterdir()
    )[0]
    np.testing.assert_array_equal(read_image(path), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("ext", [".png", ".PNG", ".bmp", ".tif", ".TIFF"])
def test_lossless_round_trip_8bit(tmp_path, ext):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (33, 47, 1), dtype=np.uint8)
    for name, img in (("rgb", rgb), ("grey", grey)):
        write_image(tmp_path / f"{name}{ext}", img)
        np.testing.assert_array_equal(read_image(tmp_path / f"{name}{ext}"), img)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_round_trip_and_scale(tmp_path, ext):
    img = np.array([[0, 257, 65535], [1000, 30000, 65534]], np.uint16)[:, :, None]
    rgb = np.concatenate([img, img[::-1], 65535 - img], axis=2)
    for name, x in (("g", img), ("c", rgb)):
        write_image(tmp_path / f"{name}{ext}", x)
        back = read_image(tmp_path / f"{name}{ext}")
        assert back.dtype == np.uint16
        np.testing.assert_array_equal(back, x)
    np.testing.assert_allclose(to_float255(img)[0, :, 0], [0.0, 1.0, 255.0])


def test_jpeg_extensions_decode_lossy(tmp_path, shared_data):
    ref = read_image(shared_data / "lytro" / "a" / "lytro-01.jpg")
    for ext in (".jpg", ".JPEG"):
        write_image(tmp_path / f"x{ext}", ref)
        back = read_image(tmp_path / f"x{ext}")
        assert back.shape == ref.shape
        assert np.abs(back.astype(int) - ref).mean() < 3.0


def test_alpha_and_palette_and_grey_alpha(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 7, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(rgb[:, :, 0]).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[:, :, 0], rgb[:, :, 0])


def test_to_float255_rejects_float():
    assert to_float255(np.array([255], np.uint8)).dtype == np.float32
    with pytest.raises(DataError, match="uint8 or uint16"):
        to_float255(np.zeros(3, np.float32))


def test_write_image_rounds_floats_and_rejects_16bit_jpeg(tmp_path):
    write_image(tmp_path / "f.png", np.array([[-3.0, 12.6, 300.0]]))
    np.testing.assert_array_equal(read_image(tmp_path / "f.png")[:, :, 0], [[0, 13, 255]])
    with pytest.raises(DataError, match=".png or .tif"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4), np.uint16))


def _real_file(shared_data: Path, tmp_path: Path, fmt: str) -> Path:
    sources = {
        "png": shared_data / "tno" / "ir" / "01.png",
        "jpg": shared_data / "lytro" / "a" / "lytro-01.jpg",
        "tif": shared_data / "mefb" / "a" / "507.tif",
    }
    if fmt in sources:
        return sources[fmt]
    path = tmp_path / "src.bmp"
    write_image(path, read_image(shared_data / "lytro" / "a" / "lytro-01.jpg"))
    return path


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp", "tif"])
@pytest.mark.parametrize("fraction", [0.5, 0.98])
def test_truncated_files_raise_before_opencv_decodes(
    shared_data, tmp_path, monkeypatch, fmt, fraction
):
    data = _real_file(shared_data, tmp_path, fmt).read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: int(len(data) * fraction)])

    def no_decode(*_args):  # the structure check must catch it, whatever OpenCV would do
        raise AssertionError("OpenCV was asked to decode a truncated file")

    monkeypatch.setattr(data_io.cv2, "imdecode", no_decode)
    for reader in (read_image, probe_image):
        with pytest.raises(ImageReadError) as info:
            reader(cut)
        message = str(info.value)
        assert str(cut) in message and "truncated" in message and "expected" in message


def test_progressive_jpeg_and_trailing_bytes_are_fine(tmp_path, shared_data):
    ref = read_image(shared_data / "lytro" / "b" / "lytro-02.jpg")
    ok, buf = cv2.imencode(".jpg", ref[:, :, ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    (tmp_path / "p.jpg").write_bytes(buf.tobytes() + b"\x00\x00trailer")
    assert read_image(tmp_path / "p.jpg").shape == ref.shape
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) * 3 // 4])
    with pytest.raises(ImageReadError, match="FFD9"):
        read_image(tmp_path / "cut.jpg")


def test_unreadable_files_name_file_and_expectation(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    cases = {
        "empty.png": "empty",
        "text.png": "not PNG, JPEG, BMP or TIFF",
        "x.gif": "accepted extensions",
        "missing.png": "cannot be opened",
    }
    for name, fragment in cases.items():
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and fragment in str(info.value)
    assert issubclass(ImageReadError, DataError) and issubclass(DataError, ValueError)


def test_float_tiff_rejected(tmp_path):
    cv2.imwrite(str(tmp_path / "f.tif"), np.ones((8, 8), np.float32))
    with pytest.raises(ImageReadError, match="float32"):
        read_image(tmp_path / "f.tif")
