"""Pansharpening: PAN/MS data layout, generated Wald-protocol set, SAM/ERGAS/Q2n/QNR,
baselines and PMGI's pan variant (docs/pansharpening.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusion_models.data import DataError, read_image, synthetic, write_image
from fusion_models.data import pansharpen as pan_data
from fusion_models.data.pansharpen import (
    degrade,
    generated_pan_set,
    load_pan_sample,
    mtf_sigma,
    open_pan_set,
    upsample_ms,
)
from fusion_models.metrics.pansharpen import (
    d_lambda,
    d_s,
    downsample_pan,
    ergas,
    hypercomplex_mult,
    q2n,
    qnr,
    sam,
    uiqi_blocks,
)
from fusion_models.pansharpen_baselines import bicubic, brovey, ihs
from fusion_models.pansharpen_eval import baseline_method, evaluate_pan, iter_samples
from fusion_models.pansharpen_pmgi import (
    authors_postprocess,
    histeq_lut,
    pmgi_pansharpen,
    train_pmgi_pan,
)
from fusion_models.registry import build


def _rand(shape, seed=0, lo=20.0, hi=220.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo


# -- metrics ---------------------------------------------------------------------------------
def test_identity_is_perfect():
    ref = _rand((2, 3, 64, 64)).round()
    assert torch.equal(sam(ref, ref), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(ergas(ref, ref), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(q2n(ref, ref), torch.ones(2, dtype=torch.float64), atol=1e-12)
    four = _rand((1, 4, 64, 64), seed=1).round()
    assert q2n(four, four).item() == pytest.approx(1.0, abs=1e-12)


def test_sam_of_known_angles():
    ref = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    ref[:, 0] = 100.0
    fused = ref.clone()
    fused[:, 1] = 100.0  # (1, 0, 0) vs (1, 1, 0): 45 degrees everywhere
    assert sam(fused, ref).item() == pytest.approx(45.0, abs=1e-9)
    # a constant 30-degree rotation in the R-G plane of spectra with B = 0
    spectra = _rand((2, 3, 8, 8))
    spectra[:, 2] = 0
    t = math.radians(30)
    rot = torch.tensor([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]],
                       dtype=torch.float64)
    assert torch.allclose(sam(torch.einsum("ij,bjhw->bihw", rot, spectra), spectra),
                          torch.full((2,), 30.0, dtype=torch.float64))
    assert sam(3 * spectra, spectra).max() < 1e-6  # scale-invariant


def test_ergas_hand_value_and_ratio():
    ref = torch.empty(1, 2, 8, 8, dtype=torch.float64)
    ref[:, 0], ref[:, 1] = 100.0, 50.0
    fused = ref.clone()
    fused[:, 0] += 10.0  # RMSE/mean = 0.1 in both bands
    fused[:, 1] -= 5.0
    assert ergas(fused, ref, ratio=4).item() == pytest.approx(100 / 4 * 0.1)
    assert ergas(fused, ref, ratio=2).item() == pytest.approx(100 / 2 * 0.1)


def test_hypercomplex_product_and_q4_match_quaternions():
    one, i, j = torch.eye(4, dtype=torch.float64)[:3]
    assert torch.equal(hypercomplex_mult(i, i), -one)  # i^2 = -1
    assert torch.equal(hypercomplex_mult(one, j), j)
    z = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])  # complex: (1+2i)(3-i) = 5+5i
    assert torch.equal(hypercomplex_mult(*z), torch.tensor([5.0, 5.0]))

    def hamilton(p, q):
        a1, b1, c1, d1 = p.unbind(-1)
        a2, b2, c2, d2 = q.unbind(-1)
        return torch.stack([a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
                            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
                            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
                            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2], -1)

    def conj(q):
        return torch.cat([q[..., :1], -q[..., 1:]], -1)

    ref = _rand((1, 4, 32, 32), seed=2)
    fused = 0.8 * ref + _rand((1, 4, 32, 32), seed=3, lo=0, hi=40)
    x, y = ref[0].reshape(4, -1).T, fused[0].reshape(4, -1).T  # one 32 x 32 block
    mu, sd = x.mean(0), x.std(0)
    x, y = (x - mu) / sd + 1, (y - mu) / sd + 1  # both normalised by the reference block
    k = x.shape[0] / (x.shape[0] - 1)
    m1, m2 = x.mean(0), y.mean(0)
    cov = k * (hamilton(x, conj(y)).mean(0) - hamilton(m1, conj(m2)))
    var = k * ((x - m1) ** 2).sum(1).mean() + k * ((y - m2) ** 2).sum(1).mean()
    expected = cov.norm() * 2 / var * 2 * m1.norm() * m2.norm() / (m1.norm() ** 2
                                                                      + m2.norm() ** 2)
    assert q2n(fused, ref, quantize=False).item() == pytest.approx(expected.item(), rel=1e-12)


def test_q2n_pads_bands_and_image_edges():
    ref = _rand((1, 3, 50, 45), seed=4).round()
    assert q2n(ref, ref).item() == pytest.approx(1.0, abs=1e-12)  # mirrored to 64 x 64
    assert q2n(0.5 * ref, ref).item() < q2n(0.9 * ref, ref).item() < 1.0


def test_uiqi_and_qnr_hand_values():
    x = _rand((1, 64, 64), seed=5)
    assert uiqi_blocks(x, x, 32).item() == pytest.approx(1.0)
    assert uiqi_blocks(x, 2 * x, 32).item() == pytest.approx(4 * 4 / 25)  # 4a^2/(1+a^2)^2
    with pytest.raises(ValueError, match="not a multiple of the block size 32"):
        uiqi_blocks(x[:, :40], x[:, :40], 32)
    ms = _rand((1, 3, 16, 16), seed=6)
    nearest = ms.repeat_interleave(4, -1).repeat_interleave(4, -2)  # same band relations
    assert d_lambda(nearest, ms, ratio=4).item() == pytest.approx(0.0, abs=1e-12)
    pan = _rand((1, 1, 64, 64), seed=7)
    same = pan.expand(1, 3, 64, 64)  # every band = PAN, every MS band = the PAN downsampled
    assert d_s(same, downsample_pan(pan, 4).expand(1, 3, 16, 16), pan).item() \
        == pytest.approx(0.0, abs=1e-12)
    scores = qnr(nearest, ms, pan)
    assert scores["QNR"].item() == pytest.approx(
        (1 - scores["D_lambda"].item()) * (1 - scores["D_s"].item()))


# -- data layout -----------------------------------------------------------------------------
def _write_set(root, pan_size=32, ms_size=(8, 8), ref=True):
    rng = np.random.default_rng(0)
    for sub in ("pan", "ms") + (("ref",) if ref else ()):
        (root / sub).mkdir(parents=True)
    write_image(root / "pan" / "001.png", rng.integers(0, 256, (pan_size, pan_size), np.uint8))
    write_image(root / "ms" / "001.png", rng.integers(0, 256, (*ms_size[::-1], 3), np.uint8))
    if ref:
        write_image(root / "ref" / "001.png",
                    rng.integers(0, 256, (pan_size, pan_size, 3), np.uint8))


def test_layout_loads_and_upsamples_by_the_documented_rule(tmp_path):
    _write_set(tmp_path)
    pan_set = open_pan_set(tmp_path)
    assert len(pan_set) == 1 and pan_set.has_ref and pan_set.ratio == 4
    data = load_pan_sample(pan_set.samples[0])
    assert data["pan"].shape == (1, 32, 32) and data["ms"].shape == (3, 8, 8)
    assert data["ref"].shape == data["ms_up"].shape == (3, 32, 32)
    expected = F.interpolate(data["ms"][None], size=(32, 32), mode="bicubic",
                             align_corners=False).clamp(0, 255)[0]
    assert torch.equal(data["ms_up"], expected)
    flat = torch.full((1, 2, 5, 7), 80.0)
    assert torch.allclose(upsample_ms(flat, 3), torch.full((1, 2, 15, 21), 80.0))


def test_size_mismatch_names_the_file_and_the_expected_size(tmp_path):
    _write_set(tmp_path, ms_size=(9, 8), ref=False)
    with pytest.raises(DataError) as err:
        open_pan_set(tmp_path)
    msg = str(err.value)
    assert "ms/001.png' is 9x8" in msg and "pan/001.png' is 32x32" in msg
    assert "ratio 4 the MS must be 8x8" in msg
    (tmp_path / "ms").rename(tmp_path / "msx")
    with pytest.raises(DataError, match="no 'ms/' folder"):
        open_pan_set(tmp_path)
    (tmp_path / "msx").rename(tmp_path / "ms")
    write_image(tmp_path / "pan" / "002.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="ms' lacks files for: \\[002\\]"):
        open_pan_set(tmp_path)


def test_generated_set_is_deterministic_wald_consistent_and_split_disjoint(tmp_path,
                                                                          monkeypatch):
    used: dict[str, set[str]] = {}
    real = synthetic._photo
    split = {"now": ""}
    monkeypatch.setattr(synthetic, "_photo",
                        lambda n: used.setdefault(split["now"], set()).add(n) or real(n))
    images = {}
    for name in ("train", "val", "test"):
        split["now"] = name
        ps = generated_pan_set(f"pan:{name}", tmp_path / "a", n=3, size=64)
        again = generated_pan_set(f"pan:{name}", tmp_path / "b", n=3, size=64)
        images[name] = [read_image(s.path_ref).tobytes() for s in ps.samples]
        assert images[name] == [read_image(s.path_ref).tobytes() for s in again.samples]
        assert json.loads((ps.root / ".generated.json").read_text())["split"] == name
    flat = [b for v in images.values() for b in v]
    assert len(set(flat)) == len(flat), "no reference appears in two splits"
    assert used["test"] <= set(synthetic.TEST_PHOTOS)
    assert not used["test"] & (used["train"] | used["val"])
    data = load_pan_sample(ps.samples[0])
    ref = data["ref"].permute(1, 2, 0).double().numpy()
    assert np.abs(degrade(ref) - data["ms"].permute(1, 2, 0).numpy()).max() <= 0.5
    luma = ref @ np.array(pan_data.PAN_WEIGHTS)
    assert np.abs(luma - data["pan"][0].numpy()).max() <= 0.5
    with pytest.raises(ValueError, match="known: pan, pan:val, pan:test"):
        generated_pan_set("pan:tset", tmp_path)
    with pytest.raises(ValueError, match="pansharpening: data.pansharpen.generated_pan_set"):
        synthetic.generated_set("pan", tmp_path)  # the pair-set maker points here


def test_mtf_blur_has_the_documented_nyquist_gain():
    sigma = mtf_sigma(4, 0.3)
    assert math.exp(-2 * math.pi**2 * sigma**2 / 8**2) == pytest.approx(0.3)
    flat = np.full((16, 16, 3), 100.0)
    assert np.allclose(degrade(flat), 100.0) and degrade(flat).shape == (4, 4, 3)


# -- baselines and PMGI ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pan")
    return {s: generated_pan_set(f"pan:{s}", root, n=2, size=64) for s in ("train", "val",
                                                                           "test")}


def test_baselines_keep_what_they_promise_and_beat_bicubic(small_sets):
    _, data = next(iter_samples(small_sets["test"]))
    ms_up, pan = data["ms_up"].double(), data["pan"].double()
    assert torch.equal(bicubic(ms_up, pan), ms_up)
    assert sam(brovey(ms_up, pan), ms_up).item() < 1e-6  # Brovey keeps every spectral angle
    fused = ihs(ms_up, pan)  # IHS adds one detail image to every band
    assert torch.allclose(fused[:, 0] - fused[:, 1], ms_up[:, 0] - ms_up[:, 1])
    scores = {n: evaluate_pan(baseline_method(n), small_sets["test"])
              for n in ("bicubic", "brovey", "ihs")}
    for name in ("brovey", "ihs"):  # PAN detail: closer to the reference, less D_s
        assert scores[name]["ERGAS"] < scores["bicubic"]["ERGAS"]
        assert scores[name]["Q2n"] > scores["bicubic"]["Q2n"]
        assert scores[name]["D_s"] < scores["bicubic"]["D_s"]
        # ... at a spectral cost: the upsampled MS has the MS's own band relations
        assert scores[name]["D_lambda"] > scores["bicubic"]["D_lambda"]
    assert scores["ihs"]["SAM"] > scores["brovey"]["SAM"]


def test_pmgi_fuses_each_band_with_the_pan_alone(small_sets):
    torch.manual_seed(0)
    model = build("pmgi", {"task": "pan"})
    _, data = next(iter_samples(small_sets["test"]))
    fused = pmgi_pansharpen(model, data["ms_up"], data["pan"])
    assert fused.shape == data["ms_up"].shape
    alone = model.fuse(data["ms_up"][:, 1:2] / 255, data["pan"] / 255) * 255
    assert torch.allclose(fused[:, 1:2], alone, atol=1e-4)
    post = authors_postprocess(fused, data["ms"])
    assert post.shape == fused.shape and torch.equal(post, post.round())


def test_histeq_lut_follows_matlab_rule():
    img = np.repeat(np.array([0, 255], np.uint8), 50)
    lut = histeq_lut(img, np.bincount(np.repeat([100, 200], 50), minlength=256))
    assert lut[0] == 100 and lut[255] == 200
    own = np.arange(256, dtype=np.uint8).repeat(3)
    assert np.array_equal(histeq_lut(own, np.bincount(own, minlength=256)), np.arange(256))


def test_short_training_improves_on_the_val_split(small_sets):
    torch.manual_seed(0)
    model = build("pmgi", {"task": "pan", "lr_g": 1e-3})
    result = train_pmgi_pan(model, small_sets["train"], steps=12, val_set=small_sets["val"],
                            eval_every=6, batch_size=4, window=32)
    assert result.best_step > 0
    assert result.best["ERGAS"] < result.initial["ERGAS"]
    assert result.best["SAM"] < result.initial["SAM"]
    kept = evaluate_pan(lambda m, p, _: pmgi_pansharpen(model, m, p), small_sets["val"])
    assert kept["ERGAS"] == pytest.approx(result.best["ERGAS"])
