"""Fuzz pass over image files a user hands us (tests/_fuzz_images.py builds the cases).

Every case either decodes to a sane array ((H, W, C), C in {1, 3}, uint8/uint16, H, W >= 1,
the size its header gives) or raises ImageReadError naming the file; never another exception.
Through ``orchestrator eval`` a hostile source is one clear error naming it, exit status != 0,
and no report written.
"""

from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest
from _fuzz_images import image_cases
from click.testing import CliRunner

from fusion_models.data import DataError, read_image
from fusion_models.data.io import ImageReadError, probe_image
from orchestrator.cli import main

CASES = image_cases()


def _outcome(path) -> str:
    """'ok' (sane array, probe agrees) or 'refused'; anything else fails the test."""
    try:
        img = read_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc), exc
        return "refused"
    assert img.ndim == 3 and img.shape[2] in (1, 3), img.shape
    assert img.dtype in (np.uint8, np.uint16) and min(img.shape[:2]) >= 1
    assert probe_image(path) == (img.shape[1], img.shape[0])
    return "ok"


def test_every_hostile_image_is_decoded_sanely_or_refused_by_name(tmp_path):
    outcomes: Counter = Counter()
    for name, data, suffix in CASES:
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(data)
        outcomes[_outcome(path)] += 1
    assert sum(outcomes.values()) == len(CASES) == 200
    assert outcomes["refused"] >= 150 and outcomes["ok"] >= 20  # both kinds really occur


@pytest.mark.parametrize("name", ["zero-size", "header-bomb", "real-bomb", "float-tiff",
                                  "empty", "gif-extension", "text", "random-png-0"])
def test_named_refusals(tmp_path, name):
    (case,) = [c for c in CASES if c[0] == name]
    path = tmp_path / f"{name}{case[2]}"
    path.write_bytes(case[1])
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_image(path)


def test_bombs_are_refused_from_the_header(tmp_path):
    for name in ("header-bomb", "real-bomb"):
        (case,) = [c for c in CASES if c[0] == name]
        path = tmp_path / f"{name}.png"
        path.write_bytes(case[1])
        assert len(case[1]) < 100_000  # kilobytes on disk ...
        with pytest.raises(ImageReadError, match="FUSION_MAX_IMAGE_PIXELS"):  # ... refused
            probe_image(path)


@pytest.mark.parametrize(("name", "shape"), [("one-by-n", (1, 47, 1)), ("n-by-one", (31, 1, 1)),
                                             ("palette", (31, 47, 3)), ("one-bit", (31, 47, 1)),
                                             ("grey-alpha", (31, 47, 1)), ("rgba", (31, 47, 3)),
                                             ("cmyk-jpeg", (31, 47, 3)),
                                             ("exif-rotated", (31, 47, 3)),
                                             ("png-named-jpg", (31, 47, 1))])
def test_unusual_but_valid_images_decode_as_stored(tmp_path, name, shape):
    (case,) = [c for c in CASES if c[0] == name]
    path = tmp_path / f"{name}{case[2]}"
    path.write_bytes(case[1])
    assert read_image(path).shape == shape  # EXIF orientation ignored: pairs stay registered


@pytest.mark.parametrize("name", ["cut50-grey.png", "header-bomb", "random-jpg-1",
                                  "float-tiff", "flip0-colour.bmp"])
def test_eval_names_the_hostile_source_and_writes_nothing(tmp_path, name):
    (case,) = [c for c in CASES if c[0] == name]
    grey = np.random.default_rng(1).integers(0, 256, (23, 37), dtype=np.uint8)  # the cases' size
    for role in ("ir", "vi"):
        (tmp_path / "set" / role).mkdir(parents=True)
    for stem in ("a", "b"):
        cv2.imwrite(str(tmp_path / "set" / "ir" / f"{stem}.png"), grey)
    cv2.imwrite(str(tmp_path / "set" / "vi" / "a.png"), grey)
    bad = tmp_path / "set" / "vi" / f"b{case[2]}"
    bad.write_bytes(case[1])
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["eval", "--quiet", "--data", str(tmp_path / "set"),
                                       "--method", "average", "--metrics", "EN,SSIM,Qabf",
                                       "--json", str(out)])
    try:
        read_image(bad)
    except DataError:
        assert result.exit_code != 0
        assert str(bad) in result.output and "Traceback" not in result.output, result.output
        assert not out.exists()
    else:  # a flipped byte can leave a decodable image: then it is simply evaluated
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["timing"]["pairs"] == 2


def test_metric_too_big_for_the_images_names_the_pair(tmp_path):
    """Every metric (the default) on 23 x 37 images: MS-SSIM needs > 160 px; one error."""
    grey = np.random.default_rng(2).integers(0, 256, (23, 37), dtype=np.uint8)
    for role in ("ir", "vi"):
        (tmp_path / "set" / role).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "set" / role / "small.png"), grey)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["eval", "--quiet", "--data", str(tmp_path / "set"),
                                       "--method", "average", "--json", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert "'small' (37x23" in result.output and "MS-SSIM" in result.output
    assert "--metrics" in result.output and "Traceback" not in result.output
