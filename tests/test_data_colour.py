"""fusion_models.data.colour: §0.10 YCbCr, §0.12 IHS, the chroma rule, and colour plans."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusion_models.data.colour import (
    default_rule,
    fuse_chroma,
    ihs_to_rgb,
    plan_colour,
    rgb_to_gray,
    rgb_to_ihs,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from fusion_models.data.io import DataError, read_image, to_float255

REAL_COLOUR = [
    "lytro/a/lytro-01.jpg",
    "lytro/b/lytro-07.jpg",
    "mefb/a/Candle.png",
    "mefb/b/507.tif",
    "roadscene/vi/FLIR_00211.jpg",
    "harvard_mri_pet/pet/25015.png",
]


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_float255(img).transpose(2, 0, 1).copy())[None]


def _load(shared_data, rel: str) -> torch.Tensor:
    return _tensor(read_image(shared_data / rel))


@pytest.mark.parametrize("rel", REAL_COLOUR)
def test_ycbcr_round_trip_on_real_images(shared_data, rel):
    rgb = _load(shared_data, rel)
    assert rgb.shape[1] == 3
    ycc = rgb_to_ycbcr(rgb)
    # studio range; the rounded coefficients give 235.045 for white
    assert 16.0 - 1e-3 <= float(ycc[:, 0].min()) and float(ycc[:, 0].max()) <= 235.05
    assert 16.0 - 0.1 <= float(ycc[:, 1:].min()) and float(ycc[:, 1:].max()) <= 240.0 + 0.1
    back = ycbcr_to_rgb(ycc)
    assert float((back - rgb).abs().max()) < 0.25  # rounded inverse coefficients of §0.10
    assert float((back.round().clamp(0, 255) - rgb).abs().max()) <= 1.0


@pytest.mark.parametrize("rel", [r for r in REAL_COLOUR if "pet" in r or "lytro" in r])
def test_ihs_round_trip_on_real_images(shared_data, rel):
    rgb = _load(shared_data, rel).double()
    ihs = rgb_to_ihs(rgb)
    torch.testing.assert_close(ihs[:, :1] / math.sqrt(3), rgb.mean(dim=1, keepdim=True))
    back = ihs_to_rgb(ihs)
    assert float((back - rgb).abs().max()) < 1e-9
    assert float((back.round() - rgb).abs().max()) <= 1.0


def test_ycbcr_known_values_and_grid_round_trip():
    px = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]], dtype=torch.float64)
    ycc = rgb_to_ycbcr(px.T.reshape(1, 3, 1, 4))[0, :, 0].T
    expected = [[16, 128, 128], [235.045, 128, 128], [81.535, 90.26, 239.945],
                [40.99, 239.945, 109.895]]
    torch.testing.assert_close(ycc, torch.tensor(expected, dtype=torch.float64))
    v = torch.arange(0, 256, 5, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(1, 3, -1, 1)
    back = ycbcr_to_rgb(rgb_to_ycbcr(grid)).round().clamp(0, 255)
    assert float((back - grid).abs().max()) == 0.0


def test_chroma_rule_properties():
    c1 = torch.tensor([128.0, 128.0, 138.0, 200.0, 60.0])
    c2 = torch.tensor([128.0, 150.0, 98.0, 200.0, 190.0])
    fused = fuse_chroma(c1, c2)
    # both neutral -> 128; one neutral -> the other; (138*10 + 98*30) / 40 = 108
    torch.testing.assert_close(fused[:4], torch.tensor([128.0, 150.0, 108.0, 200.0]))
    torch.testing.assert_close(fused, fuse_chroma(c2, c1))
    assert bool(((fused >= torch.minimum(c1, c2)) & (fused <= torch.maximum(c1, c2))).all())
    grad_in = c1.clone().requires_grad_(True)
    fuse_chroma(grad_in, c2).sum().backward()
    assert bool(torch.isfinite(grad_in.grad).all())


def test_default_rule_per_task():
    assert [default_rule(t) for t in ("ivif", "medical", "mff", "mef", None)] == [
        "keep_b_chroma", "ihs", "ycbcr_weighted", "ycbcr_weighted", "gray"
    ]
    with pytest.raises(ValueError, match="known tasks"):
        default_rule("sar")


def test_ivif_plan_keeps_visible_chroma(shared_data):
    a = _load(shared_data, "roadscene/ir/FLIR_00211.jpg")
    b = _load(shared_data, "roadscene/vi/FLIR_00211.jpg")
    plan = plan_colour(a, b, "auto", task="ivif")
    assert plan.rule == "keep_b_chroma" and plan.out_channels == 3
    assert torch.equal(plan.luma_a, a)  # a grey source enters unchanged
    # B's luma is the studio Y stretched to full range ~ BT.601 luma of B
    assert float((plan.luma_b - rgb_to_gray(b)).abs().max()) < 0.6
    back = plan.restore(plan.luma_b)  # "fusing" to B's own luma gives B back
    assert float((back.round() - b).abs().max()) <= 1.0
    fused = plan.restore(0.5 * (plan.luma_a + plan.luma_b))
    chroma_diff = rgb_to_ycbcr(fused)[:, 1:] - rgb_to_ycbcr(b)[:, 1:]
    assert float(chroma_diff.abs().mean()) < 1.0  # only clamping moves chroma


def test_medical_plan_uses_ihs_of_the_colour_source(shared_data):
    pet = _load(shared_data, "harvard_mri_pet/pet/25015.png")
    mri = _load(shared_data, "harvard_mri_pet/mri/25015.png")
    plan = plan_colour(pet, mri, "auto", task="medical")
    assert plan.rule == "ihs"
    torch.testing.assert_close(plan.luma_a, pet.mean(dim=1, keepdim=True))
    assert torch.equal(plan.luma_b, mri)
    assert float((plan.restore(plan.luma_a).round() - pet).abs().max()) <= 1.0
    swapped = plan_colour(mri, pet, "ihs")  # colour source found on either side
    assert float((swapped.restore(swapped.luma_b).round() - pet).abs().max()) <= 1.0


def test_mff_plan_fuses_chroma_by_weight(shared_data):
    a = _load(shared_data, "lytro/a/lytro-03.jpg")
    b = _load(shared_data, "lytro/b/lytro-03.jpg")
    plan = plan_colour(a, b, "auto", task="mff")
    assert plan.rule == "ycbcr_weighted"
    want = fuse_chroma(rgb_to_ycbcr(a)[:, 1:], rgb_to_ycbcr(b)[:, 1:])
    torch.testing.assert_close(plan.chroma, want)
    got = rgb_to_ycbcr(plan.restore(plan.luma_a))[:, 1:]
    assert float((got - want).abs().mean()) < 0.5
    one_grey = plan_colour(rgb_to_gray(a), b, "ycbcr_weighted")  # grey = chroma 128 = weight 0
    torch.testing.assert_close(one_grey.chroma, rgb_to_ycbcr(b)[:, 1:])


def test_fallbacks_to_gray_and_gray_rule(shared_data):
    ir = _load(shared_data, "tno/ir/05.png")
    vi = _load(shared_data, "tno/vi/05.png")
    plan = plan_colour(ir, vi, "auto", task="ivif")  # tno is grey on both sides
    assert plan.rule == "gray" and plan.out_channels == 1
    assert torch.equal(plan.restore(plan.luma_b), vi)
    ct = _load(shared_data, "harvard_mri_ct/ct/2004.png")
    assert plan_colour(ct, ct, "auto", task="medical").rule == "gray"
    colour = _load(shared_data, "lytro/a/lytro-01.jpg")
    grey_b = plan_colour(colour, rgb_to_gray(colour), "keep_b_chroma")
    assert grey_b.rule == "gray"
    torch.testing.assert_close(grey_b.luma_a, rgb_to_gray(colour))
    over = plan_colour(colour, colour, "gray").restore(torch.full_like(grey_b.luma_a, 300.0))
    assert float(over.max()) == 255.0 and over.shape[1] == 1


def test_plan_rejects_bad_inputs():
    a = torch.zeros(1, 3, 8, 8)
    with pytest.raises(DataError, match="differ"):
        plan_colour(a, torch.zeros(1, 1, 8, 9))
    with pytest.raises(DataError, match="1 or 3"):
        plan_colour(torch.zeros(1, 2, 8, 8), a)
    with pytest.raises(ValueError, match="known rules"):
        plan_colour(a, a, "lab")
    with pytest.raises(DataError, match="restore expects"):
        plan_colour(a, a, "ihs").restore(torch.zeros(1, 1, 4, 4))
