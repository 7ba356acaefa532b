"""fusion_models.data.patches: window rules, the derived patch counts, and the patch cache."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from fusion_models.data import patches as patches_mod
from fusion_models.data.io import DataError, read_image, write_image
from fusion_models.data.pairs import open_pair_set
from fusion_models.data.patches import (
    PATCH_PRESETS,
    PatchSpec,
    PatchStore,
    extract_patches,
    patch_preset,
)

# FusionGAN's 41 shipped pairs, W x H (../shared/docs/models.md §2.7)
_FUSIONGAN_SIZES = (
    "768x576 (1,3,4,6,7,8,10,11,12); 595x328 (2); 359x247 (5); 472x371 (9); 280x280 (13,19); "
    "575x475 (14); 512x512 (15); 256x256 (16); 945x709 (17); 640x480 (18,21); 749x551 (20); "
    "622x458 (24); 619x457 (25); 620x450 (26-35,38,39,41,43); 917x678 (45); 360x270 (47-49)"
)


def _fusiongan_shapes() -> list[tuple[int, int]]:
    shapes = []
    for w, h, ids in re.findall(r"(\d+)x(\d+) \(([^)]*)\)", _FUSIONGAN_SIZES):
        for part in ids.split(","):
            lo, _, hi = part.partition("-")
            shapes += [(int(h), int(w))] * (int(hi or lo) - int(lo) + 1)
    return shapes


@pytest.mark.parametrize(
    ("preset", "expected", "label"), [("fusiongan", 37_710, 120), ("ufgan", 1_926, 152)]
)
def test_derived_patch_counts_of_the_41_pairs(preset, expected, label):
    shapes = _fusiongan_shapes()
    assert len(shapes) == 41
    spec = PATCH_PRESETS[preset]
    total = 0
    for h, w in shapes:
        inputs, labels = extract_patches(np.zeros((h, w), np.uint8), spec)
        assert inputs.shape[1:] == (spec.patch, spec.patch) and labels.shape[1:] == (label, label)
        assert len(inputs) == spec.count(h, w)
        total += len(inputs)
    assert total == expected


def test_inclusive_and_exclusive_end():
    img = np.zeros((220, 220), np.uint8)  # 220 = 160 + 60: the last window starts at 60
    assert len(extract_patches(img, PatchSpec(160, 152, 60, "inclusive"))[0]) == 4
    assert len(extract_patches(img, PatchSpec(160, 152, 60, "exclusive"))[0]) == 1
    assert len(extract_patches(np.zeros((100, 300), np.uint8), PATCH_PRESETS["fusiongan"])[0]) == 0


def test_windows_are_row_major_and_labels_centred():
    img = np.arange(150 * 170, dtype=np.int64).reshape(150, 170)
    spec = PATCH_PRESETS["fusiongan"]
    inputs, labels = extract_patches(img, spec)
    starts = [(x, y) for x in range(0, 150 - 132 + 1, 14) for y in range(0, 170 - 132 + 1, 14)]
    assert len(inputs) == len(starts) == 6
    for k, (x, y) in enumerate(starts):
        np.testing.assert_array_equal(inputs[k], img[x : x + 132, y : y + 132])
        np.testing.assert_array_equal(labels[k], img[x + 6 : x + 126, y + 6 : y + 126])


def test_presets_and_spec_validation():
    assert patch_preset("pmgi", "mff") == PatchSpec(72, 60, 6)
    assert patch_preset("pmgi", "ivif") == PatchSpec(132, 120, 14)
    assert patch_preset("mffgan") == PatchSpec(60, 60, 10)
    assert PATCH_PRESETS["ufgan"].offset == 4 and PATCH_PRESETS["fusiongan"].offset == 6
    dense, _ = extract_patches(np.zeros((300, 500), np.uint8), PATCH_PRESETS["densefuse"])
    assert dense.shape == (1, 256, 256)
    with pytest.raises(KeyError, match="known presets"):
        patch_preset("pmgi", "sar")
    for bad in ((10, 12, 1), (10, 7, 1), (10, 10, 0)):
        with pytest.raises(ValueError):
            PatchSpec(*bad)


def _arrays(seed: int = 0, n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        a = rng.integers(0, 256, (70 + 9 * i, 90), dtype=np.uint8)
        pairs.append((a, 255 - a))
    return pairs


def _mtimes(store: PatchStore) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in store.path.iterdir()}


def test_store_builds_once_and_reuses(tmp_path):
    spec = PatchSpec(32, 24, 16)
    first = PatchStore.build_or_load(_arrays(), spec, tmp_path, colour_rule="gray")
    assert first.built and len(first) == sum(spec.count(*a.shape) for a, _ in _arrays())
    assert first.a_inputs.dtype == np.uint8 and first.a_labels.shape[1:] == (24, 24)
    np.testing.assert_array_equal(first.b_inputs, 255 - np.asarray(first.a_inputs))  # aligned
    np.testing.assert_array_equal(first.a_inputs[0], _arrays()[0][0][:32, :32])
    before = _mtimes(first)
    second = PatchStore.build_or_load(_arrays(), spec, tmp_path, colour_rule="gray")
    assert not second.built and second.path == first.path and _mtimes(second) == before
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["count"] == len(first) and manifest["spec"]["patch"] == 32
    assert manifest["colour_rule"] == "gray" and len(manifest["sources"][0]["sha256_a"]) == 64
    changed = _arrays()
    changed[1][0][5, 5] ^= 1
    third = PatchStore.build_or_load(changed, spec, tmp_path, colour_rule="gray")
    other_spec = PatchStore.build_or_load(_arrays(), PatchSpec(32, 24, 8), tmp_path, "gray")
    assert third.built and other_spec.built
    assert len({first.path, third.path, other_spec.path}) == 3


def test_failed_build_leaves_nothing_loadable(tmp_path, monkeypatch):
    spec = PatchSpec(32, 32, 16)
    calls = {"n": 0}
    real = patches_mod.extract_patches

    def flaky(img, s):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(img, s)

    monkeypatch.setattr(patches_mod, "extract_patches", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        PatchStore.build_or_load(_arrays(), spec, tmp_path, colour_rule="gray")
    assert list(tmp_path.iterdir()) == []  # no entry and no temporary folder left
    store = PatchStore.build_or_load(_arrays(), spec, tmp_path, colour_rule="gray")
    assert calls["n"] == 3 + 2 * len(_arrays())  # the retry extracted both sides of every pair
    assert store.built and len(store) == sum(spec.count(*a.shape) for a, _ in _arrays())


def test_store_from_real_pair_set_uses_colour_plan(shared_data, tmp_path):
    ps = open_pair_set(shared_data / "harvard_mri_pet")
    store = PatchStore.build_or_load(ps, PATCH_PRESETS["ufgan"], tmp_path)
    assert len(store) == 24 * 4 and store.manifest["colour_rule"] == "ihs"
    pet, mri = read_image(ps.pairs[0].path_a), read_image(ps.pairs[0].path_b)
    luma = np.rint(pet.astype(np.float64).mean(axis=2)).astype(np.uint8)
    assert np.abs(store.a_inputs[0].astype(int) - luma[:160, :160]).max() <= 1
    np.testing.assert_array_equal(store.b_inputs[3], mri[60:220, 60:220, 0])


def test_changed_source_file_gives_new_entry(tmp_path):
    root = tmp_path / "set"
    rng = np.random.default_rng(3)
    for role in ("ir", "vi"):
        for name in ("1", "2"):
            write_image(root / role / f"{name}.png", rng.integers(0, 256, (40, 50), np.uint8))
    spec = PatchSpec(20, 20, 10)
    first = PatchStore.build_or_load(open_pair_set(root), spec, tmp_path / "cache")
    assert not PatchStore.build_or_load(open_pair_set(root), spec, tmp_path / "cache").built
    write_image(root / "vi" / "2.png", rng.integers(0, 256, (40, 50), np.uint8))
    again = PatchStore.build_or_load(open_pair_set(root), spec, tmp_path / "cache")
    assert again.built and again.path != first.path
    assert first.manifest["task"] == "ivif" and first.manifest["colour_rule"] == "keep_b_chroma"


def test_a_process_hashes_each_unchanged_source_once(tmp_path, monkeypatch):
    """A reused sweep trial process opens the same store for every trial: the sources are
    read for their digests on the first open only, and a rewritten file is read again."""
    root = tmp_path / "set"
    rng = np.random.default_rng(4)
    for role in ("ir", "vi"):
        for name in ("1", "2", "3"):
            write_image(root / role / f"{name}.png", rng.integers(0, 256, (40, 50), np.uint8))
    read: list[str] = []
    real = patches_mod.sha256_file
    monkeypatch.setattr(patches_mod, "sha256_file", lambda p: read.append(p.name) or real(p))
    spec, cache = PatchSpec(20, 20, 10), tmp_path / "cache"
    first = PatchStore.build_or_load(open_pair_set(root), spec, cache)
    assert first.built and len(read) == 6
    for _ in range(3):
        assert PatchStore.build_or_load(open_pair_set(root), spec, cache).path == first.path
    assert len(read) == 6, "no source re-hashed while unchanged"
    write_image(root / "vi" / "2.png", rng.integers(0, 256, (40, 50), np.uint8))
    again = PatchStore.build_or_load(open_pair_set(root), spec, cache)
    assert read[6:] == ["2.png"] and again.built and again.path != first.path


@pytest.mark.parametrize(
    ("scale", "lo", "hi"), [("pm1", -1.0, 1.0), ("unit", 0.0, 1.0), ("raw", 0.0, 255.0)]
)
def test_dataset_scales_and_labels(tmp_path, scale, lo, hi):
    pairs = [(np.array([[0, 255] * 20] * 40, np.uint8), np.full((40, 40), 51, np.uint8))]
    store = PatchStore.build_or_load(pairs, PatchSpec(20, 12, 20), tmp_path, colour_rule="gray")
    ds = pickle.loads(pickle.dumps(store.dataset(scale)))  # as a DataLoader worker gets it
    item = ds[3]
    assert len(ds) == 4 and item["a"].shape == (1, 20, 20) and item["b_label"].shape == (1, 12, 12)
    assert float(item["a"].min()) == lo and float(item["a"].max()) == hi
    torch.testing.assert_close(item["a_label"], item["a"][:, 4:16, 4:16])
    expected_b = {"pm1": (51 - 127.5) / 127.5, "unit": 0.2, "raw": 51.0}[scale]
    assert abs(float(item["b"].mean()) - expected_b) < 1e-6
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["a"].shape == (4, 1, 20, 20) and batch["a"].dtype == torch.float32


def test_no_windows_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no 32x32 windows"):
        PatchStore.build_or_load([(np.zeros((10, 10), np.uint8),) * 2], PatchSpec(32, 32, 1),
                                 tmp_path, colour_rule="gray")
