"""Metrics beyond CDD's 12: Nabf, MS-SSIM / MEF-MS-SSIM, FMI, VIFB's CE/EI/RMSE/Qcb/Qcv.

Golden values come from ../shared/golden/metrics_reference_public.json (rel. tol. 1e-5); the
rest are properties (identities, ranges, batching, odd sizes, devices) on real ../shared images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _images import grey_cdd

from fusion_models.metrics import fmi, msssim, nabf, vifb
from fusion_models.metrics._fmi_features import edge_sobel
from fusion_models.metrics._spec import PRESETS

REL = 1e-5
EXTRA_SPECS = [*nabf.SPECS, *msssim.SPECS, *fmi.SPECS, *vifb.SPECS]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


def _gray(path: Path) -> np.ndarray:
    return grey_cdd(path).astype(np.float64)


def _t(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays))[:, None]


def _tno(shared_dir: Path, n: str, rule: str) -> tuple[torch.Tensor, ...]:
    """(fused, ir, vi) of a golden case as (1, 1, H, W) float64."""
    ir = _gray(shared_dir / f"data/tno/ir/{n}.png")
    vi = _gray(shared_dir / f"data/tno/vi/{n}.png")
    fused = _gray(shared_dir / f"golden/fused/tno/{rule}/{n}.png")
    return _t(fused), _t(ir), _t(vi)


@pytest.fixture(scope="module")
def tno_pair(shared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """tno/01 (576 x 768) ir and vi."""
    return tuple(_gray(shared_dir / f"data/tno/{s}/01.png") for s in ("ir", "vi"))


@pytest.fixture(scope="module")
def lytro_pair(shared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """lytro-05 (520 x 520) near- and far-focus images, grey."""
    return tuple(_gray(shared_dir / f"data/lytro/{s}/lytro-05.jpg") for s in ("a", "b"))


def _close(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=REL, abs_tol=0.0)


# --------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("rule", ["mean", "max"])
def test_python_port_nabf_and_ms_ssim(shared_dir, golden, rule):
    ref = golden["values_other_evaluators"]["python_port_of_matlab_set"]["values"][f"tno/06/{rule}"]
    f, a, b = _tno(shared_dir, "06", rule)
    conv = PRESETS["mpy"]
    assert _close(nabf.nabf(f, a, b, conv).item(), ref["Nabf"])
    # The port runs in float32 on 0..65025 data; float64 differs by ~4e-6 relative here.
    assert _close(msssim.ms_ssim(f, a, b, conv).item(), ref["MS_SSIM"])


def test_tang_nabf(shared_dir, golden):
    """TANG (Octave) Nabf of tno/08/max, w_min = 0.001.

    analysis_nabf's signature is (f, I1, I2), fused first, but the golden run passed the
    images in analysis_fmi's order (ir, vi, fused), so the infrared image sat in the fused
    slot. The value reproduces to 1e-13 with that assignment (and with no other one); the
    correctly ordered TANG value is ~3.2e-5, almost the w_min = 0 (MPY) value.
    """
    ref = golden["values_other_evaluators"]["tang_matlab"]["values"]["tno/08/max"]["Nabf"]
    f, ir, vi = _tno(shared_dir, "08", "max")
    conv = PRESETS["tang"]
    assert _close(nabf.nabf(ir, vi, f, conv).item(), ref["value"])
    assert nabf.nabf(f, ir, vi, conv).item() < 1e-4


def test_vifb_extras(shared_dir, golden):
    """VIFB (Octave) values of tno/08/max: grey fused image, R=G=B sources (grey path)."""
    ref = golden["values_other_evaluators"]["vifb_matlab"]["values"]["tno/08/max"]
    f, ir, vi = _tno(shared_dir, "08", "max")
    conv = PRESETS["vifb"]
    pairs = {
        "Cross_entropy": vifb.cross_entropy, "Edge_intensity": vifb.edge_intensity,
        "Qcb": vifb.qcb, "Qcv": vifb.qcv, "Rmse": vifb.rmse,
    }
    for name, fn in pairs.items():
        # VIFB calls metricsX(visible, infrared, fused): all five are symmetric in the sources.
        assert _close(fn(f, ir, vi, conv).item(), ref[name]["value"]), name
        assert _close(fn(f, vi, ir, conv).item(), ref[name]["value"]), name


@pytest.mark.parametrize(
    ("case", "feature"),
    [
        ("tno/07/max", "none"),
        ("tno/07/max", "dct"),
        ("tno/07/mean", "none"),
        ("tno/07/mean", "dct"),
        # The golden file's mri_ct_cddfuse/11 vectors are not run: their images are not in
        # ../shared (the CDDFuse MRI/CT test pair 11 is not among harvard_mri_ct's files).
    ],
)
def test_fmi_crop48_vectors(shared_dir, golden, case, feature):
    ref = golden["fmi_crop48_test_vectors"]["values"][case][f"FMI_{feature}_crop48"]["value"]
    crop = (slice(100, 148), slice(100, 148))
    ir = _gray(shared_dir / "data/tno/ir/07.png")[crop]
    vi = _gray(shared_dir / "data/tno/vi/07.png")[crop]
    fused = np.maximum(ir, vi) if case.endswith("max") else np.round((ir + vi) / 2)
    value = fmi.feature_mutual_information(_t(fused), _t(ir), _t(vi), feature, 3).item()
    assert _close(value, ref)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("preset", ["cdd", "mpy"])
def test_nabf_of_a_copied_source_is_zero(tno_pair, preset):
    a, b = _t(tno_pair[0][:200, :240]), _t(tno_pair[1][:200, :240])
    for fused in (a, b):
        assert nabf.nabf(fused, a, b, PRESETS[preset]).item() == 0.0


@pytest.mark.parametrize("feature", ["none", "dct", "wavelet", "edge", "gradient"])
def test_fmi_of_identical_images_is_one(tno_pair, feature):
    x = _t(tno_pair[1][:64, :80])
    assert fmi.feature_mutual_information(x, x, x, feature).item() == 1.0


def test_edge_feature_is_a_thin_binary_map(tno_pair):
    e = edge_sobel(_t(tno_pair[1]))
    assert set(torch.unique(e).tolist()) <= {0.0, 1.0}
    assert e[..., 0, :].sum() == e[..., -1, :].sum() == e[..., :, 0].sum() == 0
    assert 0.01 < e.mean().item() < 0.2
    step = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    step[..., 8:] = 255.0  # one vertical step edge -> one thin column of edge pixels
    cols = edge_sobel(step)[0, 0, 1:-1].sum(dim=0)
    assert (cols > 0).sum() == 1 and cols.max() == 14


@pytest.mark.parametrize("pair_name", ["tno_pair", "lytro_pair"])
def test_ranges_and_sanity_on_real_pairs(request, pair_name):
    """Fusing the two sources beats a noise image on FMI_edge/wavelet/gradient and MEF-SSIM."""
    a_np, b_np = request.getfixturevalue(pair_name)
    a_np, b_np = a_np[:96, :120], b_np[:96, :120]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=a_np.shape).astype(np.float64)
    a, b = _t(a_np, a_np), _t(b_np, b_np)
    fused = _t(np.round((a_np + b_np) / 2), noise)
    for fn in (fmi.fmi_edge, fmi.fmi_wavelet, fmi.fmi_gradient):
        good, bad = fn(fused, a, b).tolist()
        assert 0.0 < bad < good <= 1.0, (fn.__name__, good, bad)
    good, bad = msssim.mef_ssim(fused, a, b).tolist()
    assert -1.0 <= bad < good <= 1.0
    # F = A = B: the synthesised reference is F's structure scaled to ||x - mu|| + 0.001.
    assert msssim.mef_ssim(a[:1], a[:1], a[:1]).item() == pytest.approx(1.0, abs=1e-7)


def _mef_scale_loops(x0: np.ndarray, x1: np.ndarray, f: np.ndarray) -> float:
    """Single-scale MEF-SSIM window by window (Ma et al. 2015), for cross-checking."""
    w = 11
    t = np.arange(w) - w // 2
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    eps, big_c, q = np.finfo(float).eps, (0.03 * 255) ** 2, []
    for i in range(x0.shape[0] - w + 1):
        for j in range(x0.shape[1] - w + 1):
            pats = [x[i : i + w, j : j + w] for x in (x0, x1)]
            cen = [p - p.mean() for p in pats]
            ed = [np.linalg.norm(c) + 0.001 for c in cen]
            s = pats[0] + pats[1]
            r = (np.linalg.norm(s - s.mean()) + eps) / (sum(np.linalg.norm(c) for c in cen) + eps)
            p = min(math.tan(math.pi / 2 * min(r, 1 - eps)), 10.0)
            wts = [(e / w) ** p + eps for e in ed]
            ref = sum(wk / sum(wts) * c / e for wk, c, e in zip(wts, cen, ed, strict=True))
            if np.linalg.norm(ref) > 0:
                ref = ref / np.linalg.norm(ref) * max(ed)
            fp = f[i : i + w, j : j + w]
            mr, mf = (g * ref).sum(), (g * fp).sum()
            cov = (g * (ref - mr) * (fp - mf)).sum()
            den = (g * (ref - mr) ** 2).sum() + (g * (fp - mf) ** 2).sum() + big_c
            q.append((2 * cov + big_c) / den)
    return float(np.mean(q))


def test_mef_scale_matches_window_loop(lytro_pair):
    a, b = lytro_pair[0][200:226, 240:270], lytro_pair[1][200:226, 240:270]
    f = np.maximum(a, b)
    value = msssim._mef_scale(_t(a), _t(b), _t(f)).item()
    assert value == pytest.approx(_mef_scale_loops(a, b, f), rel=1e-10)


def test_ms_ssim_per_source_and_sum(lytro_pair):
    a, b = _t(lytro_pair[0][:200, :210]), _t(lytro_pair[1][:200, :210])
    assert msssim.ms_ssim_per_source(a, a, b)[0, 0].item() == pytest.approx(1.0, abs=1e-12)
    fused = torch.maximum(a, b)
    per = msssim.ms_ssim_per_source(fused, a, b)
    assert per.shape == (1, 2) and bool(((per > 0) & (per < 1)).all())
    assert msssim.ms_ssim(fused, a, b).item() == pytest.approx(per.sum().item(), rel=1e-15)
    pair = msssim.ms_ssim_pair(torch.cat([a, b]), torch.cat([fused, fused]))
    assert torch.allclose(pair, per[0], rtol=1e-13)
    with pytest.raises(ValueError, match="per-source"):
        msssim.ms_ssim_per_source(a, a, b, PRESETS["tang"])


def _presets(spec_name: str) -> tuple[str, ...]:
    """The presets that change a metric's definition (others read no convention field)."""
    return {"MS_SSIM": ("cdd", "tang", "mpy"), "Nabf": ("cdd", "mpy")}.get(spec_name, ("cdd",))


def _size(spec_name: str, odd: bool = True) -> tuple[int, int]:
    """Test image size: Wang MS-SSIM needs min(H, W) > 160; the rest run on small crops."""
    if spec_name == "MS_SSIM":
        return (165, 197) if odd else (168, 170)
    return (45, 61) if odd else (64, 70)


def _batch_of_three(pair: tuple[np.ndarray, np.ndarray], h: int, w: int) -> tuple:
    a_np, b_np = pair
    crops = [(slice(0, h), slice(0, w)), (slice(50, 50 + h), slice(70, 70 + w)),
             (slice(-h, None), slice(-w, None))]
    a = _t(*(a_np[c] for c in crops))
    b = _t(*(b_np[c] for c in crops))
    fused = _t(*(np.maximum(a_np[c], b_np[c]) for c in crops))
    return fused, a, b


@pytest.mark.parametrize("spec", EXTRA_SPECS, ids=lambda s: s.name)
def test_batch_equals_singles_and_odd_sizes(tno_pair, spec):
    """A batch of 3 gives the three single values; sizes are odd."""
    fused, a, b = _batch_of_three(tno_pair, *_size(spec.name))
    for preset in _presets(spec.name):
        batch = spec.fn(fused, a, b, PRESETS[preset])
        assert batch.shape == (3,) and batch.dtype == torch.float64
        singles = [spec.fn(fused[i : i + 1], a[i : i + 1], b[i : i + 1], PRESETS[preset])
                   for i in range(3)]
        assert torch.allclose(batch, torch.cat(singles), rtol=1e-12, atol=0)
        assert torch.isfinite(batch).all()


@pytest.mark.parametrize("spec", EXTRA_SPECS, ids=lambda s: s.name)
def test_small_odd_size_and_float32_input(tno_pair, spec):
    """37 x 53 images: finite values (MS-SSIM refuses them); float32 input = float64 input."""
    fused, a, b = _batch_of_three(tno_pair, 37, 53)
    if spec.name == "MS_SSIM":
        for preset in ("cdd", "tang"):
            with pytest.raises(ValueError, match="needs min"):
                spec.fn(fused, a, b, PRESETS[preset])
        return
    v64 = spec.fn(fused, a, b, PRESETS["cdd"])
    v32 = spec.fn(fused.float(), a.float(), b.float(), PRESETS["cdd"])
    assert torch.isfinite(v64).all() and torch.equal(v64, v32)


@pytest.mark.parametrize(
    "spec", [s for s in EXTRA_SPECS if not s.name.startswith("FMI")], ids=lambda s: s.name
)
def test_symmetric_in_the_sources(lytro_pair, spec):
    fused, a, b = _batch_of_three(lytro_pair, *_size(spec.name, odd=False))
    conv = PRESETS["cdd"]
    assert torch.allclose(spec.fn(fused, a, b, conv), spec.fn(fused, b, a, conv), rtol=1e-9)


def test_fmi_source_order_quirk():
    """fmi.m compares B's raw patch with F's normalised one once A's patch differs from F's.

    F = A here, and the patch normalises to a one-hot pdf (which scores 0 against itself):
    with A first the window scores (1 + FMI_BF) / 2, with the sources swapped FMI_BF / 2.
    """
    f = torch.full((1, 1, 3, 3), 175.0, dtype=torch.float64)
    f[..., 2, 2] = 176.0
    b = torch.arange(9, dtype=torch.float64).view(1, 1, 3, 3) * 7 + 3
    ab, ba = fmi.fmi_none(f, f, b).item(), fmi.fmi_none(f, b, f).item()
    assert ab - ba == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree(lytro_pair, device):
    for spec in EXTRA_SPECS:
        fused, a, b = _batch_of_three(lytro_pair, *_size(spec.name, odd=False))
        for preset in _presets(spec.name):
            cpu = spec.fn(fused, a, b, PRESETS[preset])
            dev = spec.fn(fused.to(device), a.to(device), b.to(device), PRESETS[preset])
            assert dev.device.type == device and dev.dtype == torch.float64
            assert torch.allclose(dev.cpu(), cpu, rtol=1e-9, atol=1e-12), (spec.name, preset)


def test_fmi_none_at_576x768(tno_pair):
    """FMI_none on a full-size 576 x 768 pair (its time: benchmarks/unit_timings.py)."""
    a, b = _t(tno_pair[0]), _t(tno_pair[1])
    value = fmi.fmi_none(torch.maximum(a, b), a, b).item()
    assert 0.0 < value < 1.0
