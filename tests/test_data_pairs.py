"""fusion_models.data.pairs: the six real sets, explicit folders, and every kind of bad input."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion_models.data.io import DataError, read_image, write_image
from fusion_models.data.pairs import PairDataset, load_pair, open_pair_set, validate

REAL = {  # set -> (pairs, role_a, role_b, task)
    "tno": (25, "ir", "vi", "ivif"),
    "roadscene": (50, "ir", "vi", "ivif"),
    "lytro": (20, "a", "b", None),
    "harvard_mri_pet": (24, "pet", "mri", "medical"),
    "harvard_mri_ct": (24, "ct", "mri", "medical"),
    "mefb": (24, "a", "b", None),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_sets_open_with_roles_and_tasks(shared_data, name):
    count, role_a, role_b, task = REAL[name]
    ps = open_pair_set(shared_data / name)
    assert (len(ps.pairs), ps.role_a, ps.role_b, ps.task) == (count, role_a, role_b, task)
    assert ps.dir_a.name == role_a and ps.dir_b.name == role_b and ps.dir_gt is None
    for pair in ps.pairs:
        assert pair.path_a.parent == ps.dir_a and pair.path_b.parent == ps.dir_b
        assert pair.path_a.stem == pair.path_b.stem == pair.name


def test_task_for_generic_roles_and_conflicts(shared_data):
    assert open_pair_set(shared_data / "lytro", task="mff").task == "mff"
    with pytest.raises(DataError, match="ivif set by its folder names"):
        open_pair_set(shared_data / "tno", task="mff")
    with pytest.raises(DataError, match="known tasks: ivif, medical, mff, mef"):
        open_pair_set(shared_data / "lytro", task="focus")


def test_explicit_folders_match_set_folder(shared_data):
    by_set = open_pair_set(shared_data / "roadscene")
    explicit = open_pair_set(
        a_dir=shared_data / "roadscene" / "ir", b_dir=shared_data / "roadscene" / "vi"
    )
    assert [p.name for p in explicit.pairs] == [p.name for p in by_set.pairs]
    assert (explicit.role_a, explicit.task) == ("ir", "ivif")
    with pytest.raises(DataError, match="either set_dir or a_dir"):
        open_pair_set(shared_data / "roadscene", a_dir=shared_data / "roadscene" / "ir")


def test_dataset_items_and_validate_on_real_set(shared_data):
    ps = open_pair_set(shared_data / "roadscene")
    validate(ps)
    item = PairDataset(ps)[0]
    a, b = load_pair(ps.pairs[0])
    assert item["name"] == ps.pairs[0].name
    assert item["a"].shape == (1, *a.shape[:2]) and item["b"].shape == (3, *b.shape[:2])
    assert item["a"].dtype == torch.float32 and float(item["b"].max()) <= 255.0
    np.testing.assert_array_equal(item["b"].permute(1, 2, 0).numpy(), b.astype(np.float32))


def _img(value: int = 100, size: tuple[int, int] = (16, 24)) -> np.ndarray:
    return np.full((*size, 1), value, np.uint8)


def _make_set(root: Path, names_a: list[str], names_b: list[str], roles=("ir", "vi")) -> Path:
    for role, names in zip(roles, (names_a, names_b), strict=True):
        (root / role).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(root / role / name, _img())
    return root


def test_hidden_files_ignored_and_natural_order(tmp_path):
    root = _make_set(tmp_path / "s", ["1.png", "10.png", "2.png"], ["1.bmp", "10.jpg", "2.tif"])
    (root / "ir" / ".DS_Store").write_bytes(b"junk")
    (root / "vi" / "._1.png").write_bytes(b"junk")
    (root / ".cache").mkdir()
    ps = open_pair_set(root)
    assert [p.name for p in ps.pairs] == ["1", "2", "10"]
    assert ps.pairs[2].path_b.name == "10.jpg"


def test_missing_partner_lists_stems_on_each_side(tmp_path):
    root = _make_set(tmp_path / "s", ["01.png", "02.png", "03.png"], ["01.png", "04.png"])
    with pytest.raises(DataError) as info:
        open_pair_set(root)
    msg = str(info.value)
    assert "[02, 03]" in msg and "[04]" in msg and str(root / "ir") in msg


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    root = _make_set(tmp_path / "s", ["01.png"], [])
    write_image(root / "vi" / "01.png", _img(size=(16, 25)))
    with pytest.raises(DataError) as info:
        open_pair_set(root)
    msg = str(info.value)
    assert "24x16" in msg and "25x16" in msg
    assert str(root / "ir" / "01.png") in msg and str(root / "vi" / "01.png") in msg


def test_truncated_files_reported_together_at_open(tmp_path):
    root = _make_set(tmp_path / "s", ["01.png", "02.png"], ["01.png", "02.png"])
    rng = np.random.default_rng(0)
    for role in ("ir", "vi"):
        write_image(root / role / "02.png", rng.integers(0, 256, (16, 24, 1), dtype=np.uint8))
        data = (root / role / "02.png").read_bytes()
        (root / role / "02.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        open_pair_set(root)
    msg = str(info.value)
    assert msg.startswith("2 problem(s)") and msg.count("(truncated file)") == 2


def test_validate_catches_corrupt_pixel_data_that_headers_miss(tmp_path):
    root = _make_set(tmp_path / "s", ["01.png"], ["01.png"])
    rng = np.random.default_rng(0)
    write_image(root / "vi" / "01.png", rng.integers(0, 256, (16, 24, 1), dtype=np.uint8))
    data = bytearray((root / "vi" / "01.png").read_bytes())
    start = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[start - 4 : start])
    data[start + 20 : start + 28] = b"\x00" * 8  # same length: the zlib stream is wrong ...
    (root / "vi" / "01.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match="fails its CRC check"):  # ... and caught by its CRC
        open_pair_set(root)
    crc = zlib.crc32(bytes(data[start : start + 4 + length])) & 0xFFFFFFFF
    data[start + 4 + length : start + 8 + length] = struct.pack(">I", crc)  # a matching CRC
    (root / "vi" / "01.png").write_bytes(bytes(data))
    ps = open_pair_set(root)  # header, structure and CRCs are intact
    with pytest.raises(DataError, match="could not decode") as info:
        validate(ps)
    assert str(root / "vi" / "01.png") in str(info.value)


@pytest.mark.parametrize(
    ("setup", "fragments"),
    [
        ("empty", ["is empty", "expected image files"]),
        ("extension", ["notes.txt", "accepted extensions", ".tiff"]),
        ("duplicate", ["two files with the stem '01'", "01.bmp", "01.png"]),
        ("unknown_roles", ["left", "right", "ir/+vi/", "pet/+mri/", "--a DIR --b DIR"]),
        ("flat", ["not a pair of folders", "0 source sub-folder(s)", "3 image file(s)"]),
        ("three", ["not a pair of folders", "3 source sub-folder(s)", "a/, b/, c/"]),
        ("missing", ["does not exist"]),
        ("gt_missing", ["ground-truth folder", "[02]"]),
    ],
)
def test_bad_layouts_raise_one_clear_error(tmp_path, setup, fragments):
    root = tmp_path / "set"
    if setup == "empty":
        _make_set(root, ["01.png"], [])
    elif setup == "extension":
        _make_set(root, ["01.png"], ["01.png"])
        (root / "ir" / "notes.txt").write_text("hello")
    elif setup == "duplicate":
        _make_set(root, ["01.png", "01.bmp"], ["01.png"])
    elif setup == "unknown_roles":
        _make_set(root, ["01.png"], ["01.png"], roles=("left", "right"))
    elif setup == "flat":
        for i in range(3):
            write_image(root / f"{i}.png", _img())
    elif setup == "three":
        for role in "abc":
            write_image(root / role / "01.png", _img())
    elif setup == "gt_missing":
        _make_set(root, ["01.png", "02.png"], ["01.png", "02.png"], roles=("a", "b"))
        write_image(root / "gt" / "01.png", _img())
    with pytest.raises(DataError) as info:
        open_pair_set(root)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_gt_folder_is_paired_and_loaded(tmp_path):
    root = _make_set(tmp_path / "s", ["01.png"], ["01.png"], roles=("a", "b"))
    write_image(root / "gt" / "01.png", _img(7))
    ps = open_pair_set(root, task="mff")
    assert ps.dir_gt == root / "gt" and ps.pairs[0].path_gt == root / "gt" / "01.png"
    item = PairDataset(ps)[0]
    assert float(item["gt"].mean()) == 7.0 and read_image(ps.pairs[0].path_gt).shape == (16, 24, 1)
