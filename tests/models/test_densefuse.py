"""DenseFuse (models.md §6): architecture, fusion rules, reconstruction losses, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.signal import convolve2d

from fusion_models.models.densefuse import (
    Config,
    DenseFuse,
    fuse_features,
    l1_activity,
    l1_weights,
    reconstruction_ssim_loss,
)


def _smooth_pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth, structured raw 0..255 images (1,1,size,size)."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij"
    )
    a = 60 + 120 * xx + 50 * torch.sin(6 * yy) * torch.cos(4 * xx)
    b = 200 - 100 * yy + 30 * torch.cos(5 * xx)
    return a[None, None], b[None, None]


def _batch(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"a": a, "b": b, "a_label": a, "b_label": b}


# -- architecture (§6.1) ----------------------------------------------------------------------
def test_encoder_gives_64_channels_at_input_size() -> None:
    torch.manual_seed(0)
    model = DenseFuse(Config())
    feats = model.encoder(torch.rand(2, 1, 19, 23) * 255)
    assert feats.shape == (2, 16 + 3 * 16, 19, 23)
    assert feats.min() >= 0  # every encoder conv ends in ReLU


def test_decoder_last_layer_is_linear() -> None:
    """TF's C5 has no ReLU (the PyTorch port's bug, densefuse-pytorch #4): negatives pass."""
    model = DenseFuse(Config())
    last = model.decoder.convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-5.0)
    out = model.decoder(torch.rand(1, 64, 9, 9))
    assert torch.equal(out, torch.full_like(out, -5.0))


def test_autoencoder_learns_to_reconstruct_one_image() -> None:
    """A few dozen steps on one image cut the reconstruction MSE far below its init value."""
    torch.manual_seed(0)
    model = DenseFuse(Config())
    a, _ = _smooth_pair(24)
    with torch.no_grad():
        mse0 = torch.mean((model.reconstruct(a) - a) ** 2).item()
    for _ in range(120):
        model.training_step(_batch(a, a))
    with torch.no_grad():
        mse = torch.mean((model.reconstruct(a) - a) ** 2).item()
    assert mse < 0.01 * mse0
    assert mse < 25.0  # RMS error below 5 grey levels on 0..255


# -- fusion strategies (§6.3) -----------------------------------------------------------------
@pytest.mark.parametrize("radius", [0, 1, 2])
def test_l1_weights_sum_to_one(radius: int) -> None:
    torch.manual_seed(1)
    fa, fb = torch.rand(2, 64, 11, 13), torch.rand(2, 64, 11, 13) * 3
    fa[:, :, :3] = 0.0
    fb[:, :, :3] = 0.0  # both silent: 0/0 in TF, 0.5/0.5 here
    wa, wb = l1_weights(fa, fb, radius)
    assert wa.shape == wb.shape == (2, 1, 11, 13)
    assert torch.allclose(wa + wb, torch.ones_like(wa), atol=1e-6)
    assert ((wa >= 0) & (wa <= 1)).all()
    if radius == 0:
        assert torch.equal(wa[:, :, :3], torch.full_like(wa[:, :, :3], 0.5))


def test_l1_radius_one_is_3x3_box_average_and_differs_from_radius_zero() -> None:
    torch.manual_seed(2)
    fa = torch.randn(1, 64, 10, 12, dtype=torch.float64)
    fb = torch.randn(1, 64, 10, 12, dtype=torch.float64)
    act = fa.abs().sum(1)[0].numpy()
    assert np.allclose(l1_activity(fa, 0)[0, 0].numpy(), act)
    for r in (1, 2):
        k = np.ones((2 * r + 1, 2 * r + 1)) / (2 * r + 1) ** 2
        # TF's commented-out mean filter: scipy convolve2d, boundary='symm', mode='same'
        ref = convolve2d(act, k, boundary="symm", mode="same")
        assert np.allclose(l1_activity(fa, r)[0, 0].numpy(), ref)
    assert not torch.allclose(l1_weights(fa, fb, 0)[0], l1_weights(fa, fb, 1)[0])
    assert not torch.allclose(fuse_features(fa, fb, "l1", 0), fuse_features(fa, fb, "l1", 1))


def test_add_is_twice_mean_in_feature_space() -> None:
    torch.manual_seed(3)
    fa, fb = torch.rand(2, 64, 8, 8), torch.rand(2, 64, 8, 8)
    add, mean = fuse_features(fa, fb, "add"), fuse_features(fa, fb, "mean")
    assert torch.allclose(add, 2 * mean)
    assert torch.allclose(add, fa + fb)


@pytest.mark.parametrize("strategy", ["mean", "l1"])
def test_fusing_an_image_with_itself_reconstructs_it(strategy: str) -> None:
    """mean and l1 (weights 0.5/0.5) leave identical features unchanged."""
    torch.manual_seed(4)
    model = DenseFuse(Config(strategy=strategy)).eval()
    a = torch.rand(1, 1, 20, 17)
    with torch.no_grad():
        expected = (model.reconstruct(a * 255) / 255).clamp(0, 1)
    assert torch.allclose(model.fuse(a, a), expected, atol=1e-5)


@pytest.mark.parametrize("strategy", ["add", "mean", "l1"])
def test_fuse_odd_size_shape_range_deterministic(strategy: str) -> None:
    torch.manual_seed(5)
    model = DenseFuse(Config(strategy=strategy)).eval()
    a, b = torch.rand(2, 1, 37, 53), torch.rand(2, 1, 37, 53)
    fused = model.fuse(a, b)
    assert fused.shape == (2, 1, 37, 53)
    assert fused.min() >= 0 and fused.max() <= 1 and torch.isfinite(fused).all()
    assert torch.equal(fused, model.fuse(a, b))


# -- reconstruction losses (§6.2) -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ssim_cs", "ms_ssim"])
def test_ssim_loss_is_zero_for_identical_images(kind: str) -> None:
    torch.manual_seed(6)
    x = torch.rand(2, 1, 40, 40) * 255
    flat = torch.full((1, 1, 16, 16), 200.0)
    assert reconstruction_ssim_loss(x, x, kind).abs().item() < 1e-12
    assert reconstruction_ssim_loss(flat, flat, kind).abs().item() < 1e-12
    assert reconstruction_ssim_loss(x + 20 * torch.randn_like(x), x, kind).item() > 0.01


def test_ssim_cs_uses_tf_constant_and_float64() -> None:
    """With L = 1 on 0..255 data C2 = 9e-4: fp32 E[x^2] - mu^2 would leave [-1, 1]."""
    torch.manual_seed(7)
    t = 200 + 0.01 * torch.randn(1, 1, 48, 48)
    o = t + 0.01 * torch.randn(1, 1, 48, 48)
    loss = reconstruction_ssim_loss(o, t, "ssim_cs")
    assert loss.dtype == torch.float64 and 0.0 <= loss.item() <= 2.0
    assert loss.item() == reconstruction_ssim_loss(o.double(), t.double(), "ssim_cs").item()
    # the conventional L = 255 constant hides that sub-grey-level noise almost entirely
    assert reconstruction_ssim_loss(o, t, "ssim_cs", data_range=255.0).item() < 1e-4
    assert loss.item() > 0.02


# -- training (§6.2) --------------------------------------------------------------------------
def test_training_step_at_paper_patch_size() -> None:
    torch.manual_seed(8)
    model = DenseFuse(Config())
    assert model.patch_spec().patch == 256 and model.patch_spec().resize == 256
    a, b = torch.rand(2, 1, 256, 256) * 255, torch.rand(2, 1, 256, 256) * 255
    out = model.training_step(_batch(a, b))
    assert set(out) == {"loss_g", "loss_pixel", "loss_ssim"}
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in out.values())
    assert torch.isclose(out["loss_g"], out["loss_pixel"] + 100.0 * out["loss_ssim"])
    for net in (model.encoder, model.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_ms_ssim_training_step_small_patch() -> None:
    torch.manual_seed(9)
    model = DenseFuse(Config(ssim_kind="ms_ssim", patch=16, stride=16))
    a, b = torch.rand(2, 1, 16, 16) * 255, torch.rand(2, 1, 16, 16) * 255
    out = model.training_step(_batch(a, b))
    assert all(torch.isfinite(v) for v in out.values())


def test_overfit_lowers_pixel_loss() -> None:
    torch.manual_seed(10)
    model = DenseFuse(Config())
    batch = _batch(*_smooth_pair(32))
    first = model.training_step(batch)["loss_pixel"].item()
    for _ in range(20):
        last = model.training_step(batch)["loss_pixel"].item()
    assert last < 0.2 * first


def test_config_rejects_bad_values() -> None:
    for bad in ({"strategy": "max"}, {"ssim_kind": "ssim"}, {"l1_radius": -1},
                {"w_ssim": -1.0}, {"patch": 300}, {"adversarial": "lsgan"}):
        with pytest.raises(ValidationError):
            Config(**bad)
