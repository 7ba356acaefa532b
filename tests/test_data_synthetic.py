"""fusion_models.data.synthetic: generated multi-focus and IVIF sets, determinism and caching."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusion_models.data import synthetic
from fusion_models.data.io import DataError, read_image
from fusion_models.data.synthetic import generated_set, make_ivif, make_multifocus


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _laplacian_energy(img: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(img.astype(np.float64), cv2.CV_64F)).mean())


def _sf(img: np.ndarray) -> float:
    """Spatial frequency sqrt(RF^2 + CF^2) on 0..255 (metrics.md convention, means of diffs)."""
    return float(np.sqrt(np.mean(np.diff(img, axis=0) ** 2) + np.mean(np.diff(img, axis=1) ** 2)))


def test_multifocus_is_deterministic_and_complementary(tmp_path):
    ps = make_multifocus(tmp_path / "one", n=5, size=96, sigma=2.0, seed=4)
    make_multifocus(tmp_path / "two", n=5, size=96, sigma=2.0, seed=4)
    make_multifocus(tmp_path / "three", n=5, size=96, sigma=2.0, seed=5)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")  # bit-identical PNGs
    assert _files(tmp_path / "one") != _files(tmp_path / "three")
    assert (ps.task, ps.role_a, ps.role_b, len(ps)) == ("mff", "a", "b", 5)
    channels = set()
    for pair in ps.pairs:
        a, b, gt = (read_image(p).astype(np.float64) for p in (pair.path_a, pair.path_b,
                                                                pair.path_gt))
        assert a.shape == b.shape == gt.shape and a.shape[:2] == (96, 96)
        channels.add(a.shape[2])
        err_a, err_b = np.abs(a - gt).mean(axis=2), np.abs(b - gt).mean(axis=2)
        # each pixel is in focus in (about) one source: the smaller error is tiny
        assert np.minimum(err_a, err_b).mean() < 0.2 * min(err_a.mean(), err_b.mean())
        assert 0.25 < (err_a == 0).mean() < 0.9 and 0.25 < (err_b == 0).mean() < 0.9
        assert _laplacian_energy(gt) > 1.2 * max(_laplacian_energy(a), _laplacian_energy(b))
    assert channels == {1, 3}  # colour where the photo is colour


def test_ivif_sources_are_complementary(tmp_path):
    ps = make_ivif(tmp_path / "ivif", n=8, size=128, seed=0)
    assert (ps.task, ps.role_a, ps.role_b) == ("ivif", "ir", "vi")
    contrast_ratio, sf_ratio = [], []
    for pair in ps.pairs:
        ir = read_image(pair.path_a)[:, :, 0].astype(np.float64)
        vi = read_image(pair.path_b)[:, :, 0].astype(np.float64)
        assert read_image(pair.path_b).shape[2] == 1
        hot, background = ir > 170, ir < 120
        assert 0.003 < hot.mean() < 0.3 and background.mean() > 0.6
        # target-to-background contrast in units of background std (a CNR)
        cnr_ir = (ir[hot].mean() - ir[background].mean()) / ir[background].std()
        cnr_vi = abs(vi[hot].mean() - vi[background].mean()) / vi[background].std()
        assert cnr_ir > 5.0 * cnr_vi
        contrast_ratio.append(cnr_ir / cnr_vi)
        sf_ratio.append(_sf(vi) / _sf(ir))
    assert min(sf_ratio) > 1.3 and float(np.mean(sf_ratio)) > 2.5  # texture lives in vi
    assert float(np.median(contrast_ratio)) > 10.0  # targets live in ir


def test_generated_set_is_cached_and_atomic(tmp_path, monkeypatch):
    ps = generated_set("mff", tmp_path, n=2, size=64, seed=1)
    folder = tmp_path / f"mff-n2-s64-seed1-v{synthetic.SYNTH_VERSION}"
    assert ps.root == folder and ps.dir_gt == folder / "gt" and len(ps) == 2
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the cached set was regenerated")

    monkeypatch.setitem(synthetic._MAKERS, "mff", (must_not_run, "mff"))
    again = generated_set("mff", tmp_path, n=2, size=64, seed=1)
    assert again.pairs == ps.pairs and stamp == {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    ivif = generated_set("ivif", tmp_path, n=3, size=64, seed=1)
    assert ivif.task == "ivif" and len(ivif) == 3 and ivif.root != folder


def test_generated_set_failure_leaves_no_folder(tmp_path, monkeypatch):
    def broken(out_dir, n, size, seed, photos):
        make_ivif(out_dir, n=n, size=size, seed=seed, photos=photos)
        raise RuntimeError("killed half way")

    monkeypatch.setitem(synthetic._MAKERS, "ivif", (broken, "ivif"))
    with pytest.raises(RuntimeError, match="half way"):
        generated_set("ivif", tmp_path, n=2, size=64, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="known kinds: mff, ivif"):
        generated_set("mef", tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not empty"):
        make_multifocus(tmp_path / "busy", n=1, size=32)
    (tmp_path / f"ivif-n8-s256-seed0-v{synthetic.SYNTH_VERSION}").mkdir()
    with pytest.raises(DataError, match="not a generated set"):
        generated_set("ivif", tmp_path)


def test_photos_ship_with_scikit_image():
    for name in synthetic.PHOTOS + synthetic.TEST_PHOTOS:  # training and held-out test photos
        img = synthetic._photo(name)
        assert img.dtype == np.uint8 and min(img.shape[:2]) >= 300


def test_splits_draw_disjoint_pairs_and_the_test_split_unseen_photos(tmp_path, monkeypatch):
    used: dict[str, set[str]] = {}
    split = {"now": ""}
    real = synthetic._photo

    def photo(name: str) -> np.ndarray:
        used.setdefault(split["now"], set()).add(name)
        return real(name)

    monkeypatch.setattr(synthetic, "_photo", photo)
    images, folders = {}, {}
    for name in ("train", "val", "test"):
        split["now"] = name
        ps = generated_set(f"ivif:{name}", tmp_path, n=7, size=64)
        folders[name] = ps.root
        images[name] = [read_image(p.path_b).tobytes() for p in ps.pairs]
        marker = json.loads((ps.root / ".generated.json").read_text())
        assert marker["split"] == name and marker["seed"] == synthetic.SPLITS[name][0]
    assert len(set(folders.values())) == 3
    assert generated_set("ivif", tmp_path, n=7, size=64).root == folders["train"]
    flat = [b for name in images for b in images[name]]
    assert len(set(flat)) == len(flat), "no image appears in two splits"
    assert used["test"] <= set(synthetic.TEST_PHOTOS) and len(used["test"]) == 7
    assert not used["test"] & (used["train"] | used["val"])
    assert not set(synthetic.TEST_PHOTOS) & set(synthetic.PHOTOS)
    with pytest.raises(ValueError, match="unknown split 'tset'; known splits: train, val, test"):
        generated_set("ivif:tset", tmp_path)
