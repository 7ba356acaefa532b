"""Classical baselines: exact identities, shapes, and that the multi-scale rules beat averaging."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusion_models.baselines import (
    BASELINES,
    _box_mean,
    average,
    fuse_baseline,
    get_baseline,
    gff,
    guided_filter,
    max_abs,
)


def _gray(path) -> torch.Tensor:
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY).astype(np.float32)
    return torch.from_numpy(img)[None, None]


def _sf(x: torch.Tensor) -> float:
    rf = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    cf = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    return float((rf + cf).sqrt())


@pytest.fixture(scope="module")
def lytro_pair(shared_data):
    return _gray(shared_data / "lytro/a/lytro-05.jpg"), _gray(shared_data / "lytro/b/lytro-05.jpg")


def test_average_and_max_abs_exact():
    a = torch.tensor([[[[0.0, 10.0], [200.0, 7.0]]]])
    b = torch.tensor([[[[5.0, 3.0], [100.0, 7.0]]]])
    assert torch.equal(average(a, b), torch.tensor([[[[2.5, 6.5], [150.0, 7.0]]]]))
    assert torch.equal(max_abs(a, b), torch.tensor([[[[5.0, 10.0], [200.0, 7.0]]]]))
    assert torch.equal(max_abs(-a, b), torch.tensor([[[[5.0, -10.0], [-200.0, -7.0]]]]))


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("size", [(37, 53), (64, 64), (9, 200)])
def test_shape_and_range(name, size):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, *size, generator=g) * 255
    b = torch.rand(2, 1, *size, generator=g) * 255
    out = get_baseline(name)(a, b)
    assert out.shape == a.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_identical_sources_reproduce_the_image(name, lytro_pair):
    a = lytro_pair[0][..., :101, :131]
    out = get_baseline(name)(a, a.clone())
    assert float((out - a).abs().max()) < 1e-3


@pytest.mark.parametrize("name", ["laplacian", "gff", "max_abs"])
def test_multifocus_sharper_than_average(name, lytro_pair):
    a, b = lytro_pair
    fused = get_baseline(name)(a, b)
    assert _sf(fused) > 1.05 * _sf(average(a, b))


def test_gff_picks_the_focused_half():
    """Left half sharp in A, right half sharp in B: GFF follows the sharp source in each half."""
    g = torch.Generator().manual_seed(1)
    sharp = torch.rand(1, 1, 96, 128, generator=g) * 200 + 20
    blurred = F.avg_pool2d(F.pad(sharp, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    a = torch.cat([sharp[..., :64], blurred[..., 64:]], dim=-1)
    b = torch.cat([blurred[..., :64], sharp[..., 64:]], dim=-1)
    fused = gff(a, b)
    err_fused = (fused - sharp)[..., 8:-8, 16:-16].abs().mean()
    err_avg = (average(a, b) - sharp)[..., 8:-8, 16:-16].abs().mean()
    assert float(err_fused) < 0.35 * float(err_avg)


def test_box_mean_matches_pooling_reference():
    x = torch.rand(2, 1, 23, 31, dtype=torch.float64)
    for r in (1, 3, 7):
        ref = F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
        assert torch.allclose(_box_mean(x, r), ref, atol=1e-12)


def test_guided_filter_identities():
    x = torch.rand(1, 1, 40, 40, dtype=torch.float64)
    assert torch.allclose(guided_filter(x, x, 3, 1e-12), x, atol=1e-6)
    const = torch.full_like(x, 0.25)
    assert torch.allclose(guided_filter(x, const, 5, 1e-3), const, atol=1e-12)


def test_unknown_baseline_lists_valid_names():
    with pytest.raises(KeyError, match="laplacian"):
        get_baseline("wavelet")


def test_colour_sources_keep_visible_chroma(shared_data):
    """IVIF colour: grey IR + RGB visible -> RGB fused whose chroma is the visible one."""
    ir = cv2.imread(str(shared_data / "roadscene/ir/FLIR_00211.jpg"), cv2.IMREAD_GRAYSCALE)
    vi = cv2.cvtColor(cv2.imread(str(shared_data / "roadscene/vi/FLIR_00211.jpg")),
                      cv2.COLOR_BGR2RGB)
    a = torch.from_numpy(ir.astype(np.float32))[None, None]
    b = torch.from_numpy(vi.astype(np.float32)).permute(2, 0, 1)[None]
    fused = fuse_baseline("laplacian", a, b, "keep_b_chroma")
    assert fused.shape == b.shape
    from fusion_models.data.colour import rgb_to_ycbcr

    cb_cr_f = rgb_to_ycbcr(fused.round())[:, 1:]
    cb_cr_v = rgb_to_ycbcr(b)[:, 1:]
    # Restoring an RGB image and rounding moves chroma by at most a few levels.
    assert float((cb_cr_f - cb_cr_v).abs().mean()) < 1.0
