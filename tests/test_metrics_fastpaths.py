"""The CPU fast paths of the metrics give the direct computation's numbers.

Banded-matrix filtering (``_gemm``) against direct sums, the exact float32 box sums, the float32
SSIM of the diagnostics, work shared between metrics (``_memo``), per-metric timings, and
``orchestrator eval`` estimating each pair's alignment once for all its rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion_models import registration
from fusion_models.metrics import CDD_METRICS, compute_metrics, shared_work
from fusion_models.metrics._filters import correlate_1d
from fusion_models.metrics._gemm import gemm_decimate, gemm_filter
from fusion_models.metrics._memo import memoised
from fusion_models.metrics._spec import PRESETS
from fusion_models.metrics._stats import (
    _exact_in_float32,
    grey_levels,
    joint_counts,
    joint_histogram256,
    pixel_sum,
)
from fusion_models.metrics.basic import ag, cc, en, mi, mse, scd, sd, sf
from fusion_models.metrics.diagnostics import degeneracy
from fusion_models.metrics.ssim import ssim, ssim_index
from orchestrator.cli import main


def _images(seed: int, shape=(2, 1, 61, 83), integer: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(shape, generator=g) * 255
    out = [base, (base * 0.6 + torch.rand(shape, generator=g) * 100).clamp(0, 255),
           (base * 0.3 + torch.rand(shape, generator=g) * 170)]
    return [x.round() if integer else x for x in out]


@pytest.mark.parametrize("n", [3, 7, 11, 17])
@pytest.mark.parametrize("size", [(17, 17), (40, 33), (97, 150), (30, 200)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gemm_filter_equals_direct_sums(n, size, dtype):
    if min(size) < n:
        pytest.skip("window larger than the image")
    x = torch.rand(2, 3, *size, dtype=dtype, generator=torch.Generator().manual_seed(n)) * 255
    taps = torch.rand(n, generator=torch.Generator().manual_seed(1)).tolist()
    direct = correlate_1d(correlate_1d(x.double(), taps, -1), taps, -2)
    pieces = gemm_filter(x, taps)
    assert sum(p[0, 0].numel() for p in pieces) == direct[0, 0].numel()  # every output once
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    for power in (1, 2):  # sums of the outputs and of their squares: same multiset of values
        got = sum(pixel_sum(p.double() ** power) for p in pieces)
        torch.testing.assert_close(got, pixel_sum(direct**power), rtol=rel, atol=0)


@pytest.mark.parametrize("n", [3, 5, 9, 17])
@pytest.mark.parametrize("size", [(17, 17), (18, 20), (100, 37), (288, 384), (33, 200)])
def test_gemm_decimate_equals_direct_sums(n, size):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(n)) * 255
    taps = torch.rand(n, generator=torch.Generator().manual_seed(2)).tolist()
    direct = correlate_1d(correlate_1d(x.double(), taps, -1, step=2), taps, -2, step=2)
    got = gemm_decimate(x, taps)
    assert got.shape == direct.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, direct, rtol=1e-12, atol=1e-9)


def test_box_sums_run_in_float32_only_where_exact():
    box = [1.0] * 7
    ints = _images(0)
    assert _exact_in_float32(ints, box)
    assert not _exact_in_float32(_images(0, integer=False), box)  # fractions: float64
    assert not _exact_in_float32(ints, [0.5] * 7)  # non-integer taps
    assert not _exact_in_float32([x * 4 for x in ints], box)  # sums past 2**24
    # CDD's SSIM (7x7 box) on integer images: the float32 path gives the float64 numbers.
    f, a, b = ints
    fast = ssim(f, a, b, PRESETS["cdd"])
    slow = ssim(f + 1e-9, a, b, PRESETS["cdd"])  # not integer: float64 throughout
    torch.testing.assert_close(fast, slow, rtol=1e-7, atol=0)


def test_float32_ssim_is_within_a_millionth():
    f, a, b = _images(3, shape=(2, 1, 120, 90))
    exact = ssim_index(f, a, b, variant="wang")
    fast = ssim_index(f, a, b, variant="wang", dtype=torch.float32)
    assert exact.dtype == fast.dtype == torch.float64
    assert (fast - exact).abs().max() < 5e-6


def test_diagnostics_score_each_source_alone():
    f, a, b = _images(4, shape=(2, 1, 64, 64))
    flags = degeneracy(f, a, b)
    wang = PRESETS["cdd"].with_options(ssim_variant="wang")
    torch.testing.assert_close(flags["CC_A"], cc(f, a, a), rtol=1e-12, atol=0)
    torch.testing.assert_close(flags["CC_B"], cc(f, b, b), rtol=1e-12, atol=0)
    assert (flags["SSIM_A"] - ssim(f, a, a, wang)).abs().max() < 5e-6
    assert (flags["SSIM_B"] - ssim(f, b, b, wang)).abs().max() < 5e-6
    copy = degeneracy(b.clone(), a, b)
    assert bool(copy["copy_b"].all()) and not bool(copy["copy_a"].any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_joint_counts_equal_the_generic_histogram(dtype):
    # rounding half to even, clamping, non-integer values: the CPU per-image path counts the
    # same pairs as the generic offset-bincount path
    f, a, b = (x.to(dtype) for x in _images(3, integer=False))
    a[0, 0, :3, :4] = torch.tensor([-3.0, 0.5, 1.5, 254.5]).to(dtype)
    b[1, 0, 5, :3] = torch.tensor([255.5, 300.0, 2.5]).to(dtype)
    levels = grey_levels(torch.cat([a, b, f], dim=1))
    expected = joint_histogram256(levels[:, :2], levels[:, 2:])
    assert torch.equal(joint_counts(f, (a, b)), expected)


@pytest.mark.parametrize("integer", [True, False])
def test_shared_scope_changes_no_basic_value(integer):
    # EN from MI's joint counts, SD memoised, the reworked AG/SF/MSE sums
    f, a, b = _images(4, shape=(3, 1, 37, 52), integer=integer)
    fns = (en, mi, sd, sf, ag, mse)
    alone = [fn(f, a, b) for fn in fns]
    with shared_work():
        shared = [fn(f, a, b) for fn in fns]
    for x, y in zip(alone, shared, strict=True):
        assert torch.allclose(x, y, rtol=1e-13, atol=0)
    f64 = f.double()
    gy, gx = np.gradient(f64[:, 0].numpy(), axis=(1, 2))
    expected = np.sqrt((gx**2 + gy**2) / 2).mean(axis=(1, 2))
    assert np.allclose(ag(f, a, b).numpy(), expected, rtol=1e-14, atol=0)


def test_shared_work_computes_once_and_sees_changes():
    f, a, b = _images(5)
    calls = []

    def work() -> torch.Tensor:
        calls.append(1)
        return f.sum()

    assert memoised("x", (f,), work) is not memoised("x", (f,), work)  # no scope: each time
    with shared_work():
        first = memoised("x", (f,), work)
        assert memoised("x", (f,), work) is first and len(calls) == 3
        f.add_(1)  # an in-place change is a new version: computed afresh
        assert memoised("x", (f,), work) is not first and len(calls) == 4
        with shared_work():  # a nested scope joins the open one
            memoised("x", (f,), work)
        assert len(calls) == 4
    inside = {}
    with shared_work():
        for fn in (mse, cc, scd):
            inside[fn.__name__] = fn(f, a, b)
    for fn in (mse, cc, scd):
        torch.testing.assert_close(inside[fn.__name__], fn(f, a, b), rtol=0, atol=0)


def test_compute_metrics_reports_seconds_per_metric():
    f, a, b = _images(6, shape=(1, 1, 64, 64))
    seconds: dict[str, float] = {}
    values = compute_metrics(f, a, b, CDD_METRICS, "cdd", timings=seconds)
    assert list(seconds) == list(CDD_METRICS) == list(values)
    assert all(s > 0 for s in seconds.values())
    plain = compute_metrics(f, a, b, CDD_METRICS, "cdd")
    for name in CDD_METRICS:
        torch.testing.assert_close(values[name], plain[name], rtol=0, atol=0)


def _write_pairs(root, n: int) -> None:
    rng = np.random.default_rng(0)
    import cv2

    for role in ("ir", "vi"):
        (root / role).mkdir(parents=True)
    for i in range(n):
        base = rng.integers(0, 255, (48, 64), dtype=np.uint8)
        cv2.imwrite(str(root / "ir" / f"{i}.png"), base)
        cv2.imwrite(str(root / "vi" / f"{i}.png"), np.roll(base, 3, axis=1))


def _eval(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    result = CliRunner().invoke(main, ["eval", "--quiet", "--data", str(tmp_path / "set"),
                                       *args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.fixture
def counted_alignments(tmp_path, monkeypatch) -> list:
    """Pairs in tmp_path/set, a fresh cache folder, and a list growing per estimate made."""
    _write_pairs(tmp_path / "set", 3)
    monkeypatch.setenv("FUSION_CACHE_DIR", str(tmp_path / "cache"))
    calls: list = []
    real = registration.align_sources

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(registration, "align_sources", counting)
    return calls


def test_eval_rows_share_one_alignment_per_pair(tmp_path, counted_alignments):
    report = _eval(tmp_path, "r", "--method", "average,max_abs", "--metrics", "EN,SSIM")
    assert len(counted_alignments) == 3  # one estimate per pair, not one per pair and row
    for row in report["methods"].values():
        timing = row["timing"]
        assert set(timing["by_metric_s"]) == {"EN", "SSIM", "diagnostics"}
        assert timing["metrics_s"] >= sum(timing["by_metric_s"].values()) * 0.99
    assert report["methods"]["average"]["timing"]["align_s"] > 0


@pytest.mark.parametrize("mode", [(), ("--register", "rigid")])
def test_alignment_kept_on_disk_by_file_content(tmp_path, counted_alignments, mode):
    first = _eval(tmp_path, "first", "--method", "average", "--metrics", "SSIM,Qabf", *mode)
    assert len(counted_alignments) == 3
    second = _eval(tmp_path, "second", "--method", "average", "--metrics", "SSIM,Qabf", *mode)
    assert len(counted_alignments) == 3  # every estimate read back from the cache folder
    assert second["per_pair"] == first["per_pair"]  # registered B warped the same way
    if mode:  # registering B (shifted by 3 px) changes the scores: the warp was applied
        plain = _eval(tmp_path, "plain", "--method", "average", "--metrics", "SSIM,Qabf",
                      "--misalign-threshold", "inf")
        assert second["mean"]["Qabf"] > plain["mean"]["Qabf"] + 0.05
    files = sorted((tmp_path / "cache" / "alignment").glob("*.json"))
    assert len(files) == 3
    for file in files:
        file.write_text("{not json")  # a damaged entry is estimated again, not trusted
    _eval(tmp_path, "third", "--method", "average", "--metrics", "SSIM", *mode)
    assert len(counted_alignments) == 6
    (tmp_path / "set" / "vi" / "1.png").write_bytes((tmp_path / "set" / "ir" / "1.png")
                                                    .read_bytes())  # new content: new key
    _eval(tmp_path, "fourth", "--method", "average", "--metrics", "SSIM", *mode)
    assert len(counted_alignments) == 7


@pytest.mark.parametrize("width", [16, 12, 7, 1])
def test_vif_log_sum_equals_the_sum_of_logs(width):
    """VIF's grouped logarithms (products of up to 8 neighbours, one log) give the plain sum of
    logs, for widths that halve 3 times, twice, never, and a single column."""
    from fusion_models.metrics.vif import _log_sum

    gen = torch.Generator().manual_seed(0)
    x = 1 + torch.rand(2, 2, 5, width, generator=gen, dtype=torch.float64) * 8200
    x[0, 0, 0] = 1.0  # flat windows: log(1) = 0 terms
    expected = x.log().sum(dim=(2, 3))
    got = _log_sum(x.clone())
    assert got.shape == (2, 2)
    assert torch.allclose(got, expected, rtol=1e-14, atol=0)
