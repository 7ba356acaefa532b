"""The 12 core fusion metrics (EN SD SF AG MI MSE PSNR CC SCD VIF Qabf SSIM) and full-reference
PSNR/SSIM: golden values of every evaluator, the reference libraries, properties, devices.

Golden values: ../shared/golden/metrics_reference_public.json (rel. 1e-5, abs. 1e-5 near 0);
definitions: ../shared/docs/metrics.md.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _images import grey_cdd
from scipy.ndimage import correlate, correlate1d
from scipy.signal import convolve2d
from skimage.measure import shannon_entropy
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import mutual_info_score

from fusion_models.metrics import _ops, basic, qabf, ssim, vif
from fusion_models.metrics._spec import PRESETS, MetricSpec
from fusion_models.metrics.ssim import psnr_gt, ssim_gt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _reference_cdd as reference  # noqa: E402

CORE: dict[str, MetricSpec] = {s.name: s for m in (basic, vif, qabf, ssim) for s in m.SPECS}
NAMES = ["EN", "SD", "SF", "AG", "MI", "MSE", "PSNR", "CC", "SCD", "VIF", "Qabf", "SSIM"]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]
VIFB_NAMES = {"Avg_gradient": "AG", "Entropy": "EN", "Mutinf": "MI", "Psnr": "PSNR",
              "Qabf": "Qabf", "Ssim": "SSIM", "Variance": "SD", "Spatial_frequency": "SF"}


def _close(value: float, expected: float, rel: float = 1e-5, abs_: float = 1e-5) -> bool:
    return abs(value - expected) <= max(abs_, rel * abs(expected))


def _grey(path: Path) -> np.ndarray:
    return grey_cdd(path).astype(np.float32)


def _t(*arrays: np.ndarray, device: str = "cpu", dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(x))[None, None].to(device, dtype) for x in arrays]


def _source_pair(shared: Path, folder: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    sub = {"tno": ("ir", "vi"), "harvard_mri_ct": ("ct", "mri")}[folder]
    return tuple(_grey(shared / "data" / folder / s / name) for s in sub)


def _fused(a: np.ndarray, b: np.ndarray, rule: str) -> np.ndarray:
    if rule == "max":
        return np.maximum(a, b)
    return np.round((a.astype(np.float64) + b) / 2).astype(np.float32)


@pytest.fixture(scope="module")
def golden_cases(golden, shared_dir):
    """(evaluator, preset, case key, {our name: value}) for every golden value of the 12."""
    other = golden["values_other_evaluators"]
    sets = [("cdd", "cdd", golden["values"], {"VIFF": "VIF"}),
            ("mpy", "mpy", other["python_port_of_matlab_set"]["values"], {}),
            ("vifb", "vifb", other["vifb_matlab"]["values"], VIFB_NAMES),
            ("tang", "tang", other["tang_matlab"]["values"], {})]
    cases = []
    for evaluator, preset, values, rename in sets:
        for key, metrics in values.items():
            ours = {}
            for name, v in metrics.items():
                name = rename.get(name, name)
                if name in CORE:
                    ours[name] = v["value"] if isinstance(v, dict) else v
            cases.append((evaluator, preset, key, ours))
    return cases


def _golden_images(shared: Path, key: str) -> list[torch.Tensor]:
    _, n, rule = key.split("/")
    a, b = _source_pair(shared, "tno", f"{n}.png")
    f = cv2.imread(str(shared / "golden" / "fused" / "tno" / rule / f"{n}.png"), 0)
    return _t(f, a, b)


def test_golden_values_of_every_evaluator(golden_cases, shared_dir):
    worst: dict[str, float] = {}
    failures = []
    counted = 0
    for evaluator, preset, key, expected in golden_cases:
        f, a, b = _golden_images(shared_dir, key)
        for name, value in expected.items():
            ours = CORE[name].fn(f, a, b, PRESETS[preset]).item()
            counted += 1
            err = abs(ours - value) / max(abs(value), 1e-5)
            worst[evaluator] = max(worst.get(evaluator, 0.0), err)
            if not _close(ours, value):
                failures.append(f"{evaluator} {key} {name}: {ours!r} vs {value!r}")
    assert not failures, failures
    # every golden value of the 12 was compared: cdd 2x12, mpy 2x12, vifb 8, tang 11
    assert counted == 24 + 24 + 8 + 11
    assert worst["cdd"] < 2e-7 and worst["vifb"] < 1e-7 and worst["tang"] < 1e-7


def test_golden_mean_rule_image_is_round_half_even(shared_dir):
    a, b = _source_pair(shared_dir, "tno", "06.png")
    stored = cv2.imread(str(shared_dir / "golden" / "fused" / "tno" / "mean" / "06.png"), 0)
    assert np.array_equal(stored, _fused(a, b, "mean"))


# ------------------------------------------------------------------ reference libraries

@pytest.fixture(scope="module")
def real_triples(shared_dir):
    """(label, fused, a, b) float32 arrays: 3 tno pairs and 1 CT/MRI pair, mean or max rule."""
    out = []
    for folder, name, rule in [("tno", "07.png", "max"), ("tno", "19.png", "mean"),
                               ("tno", "20.png", "max"), ("harvard_mri_ct", "16009.png", "mean")]:
        a, b = _source_pair(shared_dir, folder, name)
        out.append((f"{folder}/{name}/{rule}", _fused(a, b, rule), a, b))
    return out


def test_mi_matches_sklearn_and_en_matches_skimage(real_triples):
    for label, f, a, b in real_triples:
        ft, at, bt = _t(f, a, b)
        expected = mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel())
        assert _close(basic.mi(ft, at, bt).item(), expected, rel=1e-12), label
        bits = basic.mi(ft, at, bt, PRESETS["mpy"]).item()
        assert bits == pytest.approx(expected / math.log(2), rel=1e-12)
        en = basic.en(ft, at, bt).item()
        assert en == pytest.approx(shannon_entropy(f.astype(np.uint8)), rel=1e-12), label


def test_cdd_ssim_matches_skimage_data_range_2(real_triples):
    for label, f, a, b in real_triples:
        f64, a64, b64 = (x.astype(np.float64) for x in (f, a, b))
        expected = (structural_similarity(f64, a64, data_range=2)
                    + structural_similarity(f64, b64, data_range=2))
        assert ssim.ssim(*_t(f, a, b)).item() == pytest.approx(expected, rel=1e-9), label


def _vifp_numpy(ref: np.ndarray, dist: np.ndarray) -> float:
    """Sheikh-Bovik vifp_mscale in float64, straight from metrics.md (scipy.ndimage filters)."""
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        r = np.arange(n) - (n - 1) / 2
        win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (n / 5) ** 2))
        win /= win.sum()

        def valid(x, win=win, n=n):  # 'valid' correlation; empty when the window does not fit
            if min(x.shape) < n:
                return np.zeros((max(x.shape[0] - n + 1, 0), max(x.shape[1] - n + 1, 0)))
            h = n // 2
            return correlate(x, win, mode="constant")[h : x.shape[0] - h, h : x.shape[1] - h]

        if scale > 1:
            ref, dist = valid(ref)[::2, ::2], valid(dist)[::2, ::2]
        mu1, mu2 = valid(ref), valid(dist)
        s1 = np.maximum(valid(ref * ref) - mu1**2, 0)
        s2 = np.maximum(valid(dist * dist) - mu2**2, 0)
        s12 = valid(ref * dist) - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10], sv[s1 < 1e-10], s1[s1 < 1e-10] = 0, s2[s1 < 1e-10], 0
        g[s2 < 1e-10], sv[s2 < 1e-10] = 0, 0
        sv[g < 0], g[g < 0] = s2[g < 0], 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g**2 * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return 1.0 if den == 0 else num / den


def test_vif_matches_float64_numpy_port(real_triples):
    # Every float64 implementation carries ~1e-10 of rounding in the local variances, i.e. at
    # the reference's eps; on images with near-flat areas (the CT/MRI pair) a few windows with
    # variance ~2e-10 and g = s12 / (s1 + eps) ~ 1e4 turn that into ~2e-8 of VIF. Elsewhere the
    # agreement is ~1e-13.
    for label, f, a, b in real_triples:
        ours = vif.vifp_pair(*_t(f, a, b))[0].tolist()
        expected = [_vifp_numpy(x.astype(np.float64), f.astype(np.float64)) for x in (a, b)]
        rel = 1e-7 if label.startswith("harvard") else 1e-11
        assert ours == pytest.approx(expected, rel=rel), label


def test_all_twelve_match_the_cdd_style_reference(real_triples):
    for label, f, a, b in real_triples:
        ft, at, bt = _t(f, a, b)
        for name in NAMES:
            ours = CORE[name].fn(ft, at, bt, PRESETS["cdd"]).item()
            ref = reference.compute(name, f, a, b)
            assert _close(ours, ref), f"{label} {name}: {ours} vs {ref}"


def test_full_reference_psnr_and_ssim_match_skimage(real_triples):
    for label, f, a, _ in real_triples[:2]:
        ft, gt = _t(f, a)
        assert psnr_gt(ft, gt).item() == pytest.approx(
            peak_signal_noise_ratio(a.astype(np.float64), f.astype(np.float64), data_range=255),
            rel=1e-12)
        wang = structural_similarity(f.astype(np.float64), a.astype(np.float64), data_range=255,
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert ssim_gt(ft, gt).item() == pytest.approx(wang, rel=1e-9), label
    assert math.isinf(psnr_gt(ft, ft).item()) and ssim_gt(ft, ft).item() == pytest.approx(1.0)


# ------------------------------------------------------------------ conventions

def _tang_mi_numpy(x: np.ndarray, f: np.ndarray) -> float:
    """TANG: H(X) + H(F) - H(X, F) in bits, joint index uint8 + 1 saturating at 255."""
    def h(p):
        p = p[p > 0]
        return -np.sum(p * np.log2(p))
    xi, fi = x.astype(np.uint8), f.astype(np.uint8)
    joint = np.zeros((256, 256))
    index = [np.minimum(v.astype(int) + 1, 255) - 1 for v in (xi, fi)]  # uint8 + 1 saturates
    np.add.at(joint, tuple(index), 1)
    n = x.size
    return h(np.bincount(xi.ravel(), minlength=256) / n) + h(
        np.bincount(fi.ravel(), minlength=256) / n) - h(joint / n)


def test_tang_mi_merges_levels_254_and_255_only_in_the_joint_histogram():
    rng = np.random.default_rng(0)
    a = rng.integers(240, 256, (40, 48)).astype(np.float32)
    b = rng.integers(0, 256, (40, 48)).astype(np.float32)
    f = np.maximum(a, b)
    ft, at, bt = _t(f, a, b)
    tang = basic.mi(ft, at, bt, PRESETS["tang"]).item()
    expected = _tang_mi_numpy(a, f) + _tang_mi_numpy(b, f)
    assert tang == pytest.approx(expected, rel=1e-12)
    plain_bits = basic.mi(ft, at, bt, PRESETS["mpy"]).item()
    assert tang > plain_bits + 1e-3  # the documented upward bias when 254 and 255 both occur


def test_scale_options_of_mse_psnr_ag_sf_and_en(real_triples):
    _, f, a, b = real_triples[1]
    ft, at, bt = _t(f, a, b)
    h, w = f.shape
    mse255 = basic.mse(ft, at, bt).item()
    unit = PRESETS["cdd"].with_options(mse_scale="unit", psnr_peak="255")
    assert basic.mse(ft, at, bt, unit).item() == pytest.approx(mse255 / 255**2, rel=1e-12)
    assert basic.psnr(ft, at, bt, unit).item() == pytest.approx(
        10 * math.log10(255**2 / mse255) + 20 * math.log10(255), rel=1e-12)
    sqrt_sse = np.mean([np.sqrt(np.sum((x.astype(np.float64) - f) ** 2)) / (h * w) for x in (a, b)])
    assert basic.mse(ft, at, bt, PRESETS["vifb"]).item() == pytest.approx(sqrt_sse, rel=1e-12)
    assert basic.psnr(ft, at, bt).item() == pytest.approx(
        10 * math.log10(float(f.max()) ** 2 / mse255), rel=1e-12)
    ratio = basic.ag(ft, at, bt, PRESETS["tang"]).item() / basic.ag(ft, at, bt).item()
    assert ratio == pytest.approx(h * w / ((h - 1) * (w - 1)), rel=1e-12)
    f64 = f.astype(np.float64)
    sums = np.sum(np.diff(f64, axis=1) ** 2) + np.sum(np.diff(f64, axis=0) ** 2)
    assert basic.sf(ft, at, bt, PRESETS["vifb"]).item() == pytest.approx(
        math.sqrt(sums / (h * w)), rel=1e-12)
    p = np.bincount(f.astype(np.uint8).ravel(), minlength=256) / f.size
    assert basic.en(ft, at, bt, PRESETS["mpy"]).item() == pytest.approx(
        -np.sum(p * np.log2(p + 1e-7)), rel=1e-12)


def _matlab_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ssim(): Gaussian 11/1.5, replicate padding, full map, L = 1 (float64)."""
    r = np.arange(11) - 5.0
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()

    def filt(z):
        return correlate(z, win, mode="nearest")
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2)
                         / ((mx**2 + my**2 + c1) * (vx + vy + c2))))


def test_ssim_variants(real_triples):
    _, f, a, b = real_triples[0]
    ft, at, bt = _t(f, a, b)
    value = {v: ssim.ssim(ft, at, bt, PRESETS["cdd"].with_options(ssim_variant=v)).item()
             for v in ("cdd", "wang", "vifb", "mpy", "tang_mean")}
    assert value["wang"] == pytest.approx(value["vifb"] / 2, rel=1e-12)
    f64, a64, b64 = (x.astype(np.float64) for x in (f, a, b))
    tang = (_matlab_ssim(a64, f64) + _matlab_ssim(b64, f64)) / 2
    assert value["tang_mean"] == pytest.approx(tang, rel=1e-9)
    assert len(set(value.values())) == 5


# ------------------------------------------------------------------ properties

def test_registry_names_directions_and_layouts():
    assert list(CORE) == NAMES[:9] + ["VIF", "Qabf", "SSIM"]
    lower_is_better = {n for n, s in CORE.items() if not s.higher_is_better}
    assert lower_is_better == {"MSE"}
    assert {n: s.colour_layout for n, s in CORE.items() if s.colour_layout != "channels"} == {
        "SF": "tiled"}


def test_constant_and_identical_images():
    const = torch.full((1, 1, 40, 48), 117.0)
    rng = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (1, 1, 40, 48), generator=rng).float()
    assert basic.en(const, const, const).item() == 0.0
    assert basic.sd(const, x, x).item() == 0.0 and basic.ag(const, x, x).item() == 0.0
    assert ssim.ssim(x, x, x).item() == pytest.approx(2.0, abs=1e-12)
    assert ssim.ssim(x, x, x, PRESETS["tang"]).item() == pytest.approx(1.0, abs=1e-12)
    assert basic.cc(x, x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert math.isinf(basic.psnr(x, x, x).item())
    assert vif.vif(x, x, x).item() == pytest.approx(2.0, rel=1e-9)
    assert vif.vif(x, const, x).item() == pytest.approx(2.0, rel=1e-9)  # flat source -> 1
    assert basic.mi(x, x, x).item() == pytest.approx(2 * basic.en(x, x, x).item() * math.log(2))


def _random_triple(seed: int, b: int, h: int, w: int) -> list[torch.Tensor]:
    """Smooth-ish integer images (so every metric is well away from degenerate cases)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (3 * b, 1, h // 4 + 2, w // 4 + 2), generator=g).float()
    up = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    noisy = up + torch.randint(-20, 21, up.shape, generator=g)
    return list(noisy.round().clamp(0, 255).split(b))


@pytest.mark.parametrize("preset", ["cdd", "vifb", "tang", "mpy"])
def test_batch_equals_singles_and_sources_commute(preset):
    conv = PRESETS[preset]
    f, a, b = _random_triple(3, 3, 45, 59)
    for name, spec in CORE.items():
        batch = spec.fn(f, a, b, conv)
        assert batch.shape == (3,) and batch.dtype == torch.float64, name
        singles = torch.cat([spec.fn(f[i : i + 1], a[i : i + 1], b[i : i + 1], conv)
                             for i in range(3)])
        # Qabf's per-pixel maps are float32 (its docstring): vectorised and scalar tails of
        # atan/sigmoid round differently, so its layout-dependence is ~1e-8, not ~1e-15
        rtol = 1e-6 if name == "Qabf" else 1e-12
        torch.testing.assert_close(batch, singles, rtol=rtol, atol=0, msg=name)
        swapped = spec.fn(f, b, a, conv)
        torch.testing.assert_close(batch, swapped, rtol=rtol, atol=1e-14, msg=name)


def test_odd_sizes_match_the_reference():
    f, a, b = (x[0, 0].numpy() for x in _random_triple(5, 1, 37, 53))
    ft, at, bt = _t(f, a, b)
    for name in NAMES:
        ours = CORE[name].fn(ft, at, bt).item()
        if name == "VIF":  # scale 4 has no valid window at 37 rows (scipy's convolve2d raises)
            ref = _vifp_numpy(a.astype(np.float64), f) + _vifp_numpy(b.astype(np.float64), f)
        else:
            ref = reference.compute(name, f, a, b)
        assert _close(ours, ref), f"{name}: {ours} vs {ref}"


def test_float32_and_float64_inputs_agree():
    f, a, b = _random_triple(7, 2, 48, 64)
    for preset in ("cdd", "tang"):
        for name, spec in CORE.items():
            x32 = spec.fn(f, a, b, PRESETS[preset])
            x64 = spec.fn(f.double(), a.double(), b.double(), PRESETS[preset])
            torch.testing.assert_close(x32, x64, rtol=1e-6, atol=1e-12, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree_with_cpu_float64_reference(device, real_triples):
    label, f, a, b = real_triples[0]
    ft, at, bt = _t(f, a, b, device=device)
    for preset in ("cdd", "tang", "vifb", "mpy"):
        for name, spec in CORE.items():
            out = spec.fn(ft, at, bt, PRESETS[preset])
            assert out.device.type == device and out.dtype == torch.float64
            cpu = spec.fn(*_t(f, a, b), PRESETS[preset])
            torch.testing.assert_close(out.cpu(), cpu, rtol=1e-6, atol=1e-12, msg=name)


def test_bad_inputs_raise():
    x = torch.rand(1, 1, 20, 20) * 255
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        basic.mi(x[0], x[0], x[0])
    with pytest.raises(ValueError, match="differ"):
        basic.cc(x, x[..., :10], x)
    with pytest.raises(ValueError, match="float"):
        vif.vif(x.long(), x, x)
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim.ssim(x[..., :6, :], x[..., :6, :], x[..., :6, :])


def test_shared_ops_match_numpy_and_scipy():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (23, 31)).astype(np.float64)
    xt = torch.from_numpy(x)[None, None]
    gy, gx = _ops.gradient(xt)
    assert np.allclose(gy[0, 0], np.gradient(x)[0]) and np.allclose(gx[0, 0], np.gradient(x)[1])
    sx, sy = _ops.sobel(xt)
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    assert np.array_equal(sx[0, 0], convolve2d(x, kx, mode="same"))
    assert np.array_equal(sy[0, 0], convolve2d(x, kx.T[::-1], mode="same"))
    taps = _ops.gaussian_taps(9, 1.8)
    g2 = _ops.fspecial_gaussian(9, 1.8)
    assert torch.allclose(torch.outer(taps, taps), g2, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="not separable"):
        _ops.gaussian_taps(31, 1.0)
    ref = correlate1d(x, taps.numpy(), axis=1, mode="constant")[:, 4:-4:2]
    assert np.allclose(_ops.correlate_1d(xt, taps.tolist(), -1, step=2)[0, 0], ref, rtol=1e-14)
    same = _ops.correlate2d(xt, g2, mode="same", padding="replicate")[0, 0]
    assert np.allclose(same, correlate(x, g2.numpy(), mode="nearest"), rtol=1e-13)
    box = _ops.box_sum_valid(xt, 7)[0, 0]
    assert np.array_equal(box, correlate(x, np.ones((7, 7)), mode="constant")[3:-3, 3:-3])
    lv = _ops.grey_levels(xt)
    joint = _ops.joint_histogram256(lv, lv.flip(-1))[0, 0].numpy()
    expected = np.histogram2d(x.ravel(), x.ravel()[::-1], bins=256, range=[[0, 256]] * 2)[0]
    assert np.array_equal(joint, expected) and joint.sum() == x.size
