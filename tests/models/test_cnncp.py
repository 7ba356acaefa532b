"""CNN-CP paper details (Wang et al., Sensors 2020): the contrast pyramid is exactly invertible,
the siamese weight map has the documented shapes and range, the network learns to prefer the
sharp patch, and the per-level rules do what Liu et al.'s rule says."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusion_models import registry
from fusion_models.models import _contrast_pyramid as cp
from fusion_models.models._cnncp_nets import (
    SiameseNet,
    blur,
    blurred_copies,
    gaussian_kernel,
    window_average,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs run far faster on one thread (and do not fight other jobs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _texture(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 1, size, size) in [0, 1]: fine noise on a smooth field, with a black corner."""
    g = torch.Generator().manual_seed(seed)
    fine = F.avg_pool2d(torch.rand(n, 1, size, size, generator=g), 3, 1, 1)
    coarse = F.interpolate(torch.rand(n, 1, max(size // 16, 1), max(size // 16, 1),
                                      generator=g), size=(size, size), mode="bilinear")
    x = (0.5 * fine + 0.5 * coarse).clamp(0, 1)
    x[..., : size // 4, : size // 4] = 0.0  # CT/MRI-like black background
    return x


def _model(**params):
    torch.manual_seed(0)
    return registry.build("cnncp", params)


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (256, 256)])
@pytest.mark.parametrize("eps", [1e-6, 1.0 / 255.0])
def test_contrast_pyramid_reconstructs_exactly(size, eps):
    x = _texture(2, 256, 1)[..., : size[0], : size[1]]
    levels = cp.auto_levels(*size)
    pyr = cp.contrast_pyramid(x, levels, eps)
    err32 = float((cp.reconstruct(pyr, eps) - x).abs().max())
    x64 = x.double()
    err64 = float((cp.reconstruct(cp.contrast_pyramid(x64, levels, eps), eps) - x64).abs().max())
    print(f"{size} eps={eps:.2g} levels={levels}: float32 err {err32:.2g}, float64 {err64:.2g}")
    assert err32 <= 1e-5 and err64 <= 1e-12


@pytest.mark.parametrize("rules", [("weighted", "similarity"), ("average", "weighted"),
                                   ("weighted", "energy")])
def test_fusing_an_image_with_itself_gives_it_back(rules):
    model = _model(width=8, base_rule=rules[0], detail_rule=rules[1])
    x = _texture(2, 72, 2)
    err = float((model.fuse(x, x) - x).abs().max())
    print(f"{rules}: max |fuse(x, x) - x| = {err:.2g}")
    assert err <= 1e-5


def test_pyramid_shapes_and_depth():
    pyr = cp.contrast_pyramid(torch.rand(1, 1, 37, 53), 4, 1e-6)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(37, 53), (19, 27), (10, 14), (5, 7), (3, 4)]
    assert cp.auto_levels(256, 256) == 7  # Liu's floor(log2 256) = 8 levels in all
    assert cp.auto_levels(37, 53) == 4 and cp.auto_levels(3, 3) == 1
    assert cp.max_levels(5, 7) == 3  # 5x7 -> 3x4 -> 2x2 -> 1x1
    model = _model(width=8, levels=20)
    assert model.pyramid_levels(5, 7) == 3


def test_siamese_scores_each_16px_window_at_stride_2():
    net = SiameseNet(width=4)
    assert net(torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)).shape == (3, 1, 1, 1)
    assert net(torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)).shape == (1, 1, 12, 20)
    head = SiameseNet(width=4, head_channels=8)
    assert head(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)).shape == (2, 1, 1, 1)


@pytest.mark.parametrize("size", [(37, 53), (64, 48), (15, 16), (5, 7), (1, 1)])
def test_weight_map_shape_and_range(size):
    model = _model(width=8)
    a, b = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        w = model.weight_map(a, b)
    assert w.shape == (2, 1, *size)
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0


def test_window_average_covers_every_pixel_with_the_mean_of_its_windows():
    scores = torch.rand(1, 1, 12, 20)  # windows of a 37 x 53 image
    w = window_average(scores, (37, 53))
    assert w.shape == (1, 1, 37, 53)
    assert torch.allclose(window_average(torch.full_like(scores, 0.3), (37, 53)),
                          torch.full_like(w, 0.3))
    assert torch.isclose(w[0, 0, 0, 0], scores[0, 0, 0, 0])  # only window (0, 0) covers it
    assert torch.isclose(w[0, 0, 2, 0], scores[0, 0, :2, 0].mean())


def test_similarity_rule_averages_similar_levels_and_selects_dissimilar_ones():
    c = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    w = torch.full_like(c, 0.25)
    similar = cp.fuse_detail(c, 0.9 * c, w, "similarity", 0.6, 3)  # M close to 1
    assert torch.allclose(similar, 0.25 * c + 0.75 * 0.9 * c)
    opposite = cp.fuse_detail(2 * c, -c, w, "similarity", 0.6, 3)  # M = -0.8: choose energy
    assert torch.equal(opposite, 2 * c)
    flat = torch.zeros_like(c)
    assert torch.equal(cp.fuse_detail(flat, flat, w, "similarity", 0.6, 3), flat)


def test_blurred_copies_are_blurred_one_to_five_times():
    x = _texture(64, 16, 3)
    g = torch.Generator().manual_seed(0)
    out = blurred_copies(x, 2.0, 7, 5, generator=g)
    kernel = gaussian_kernel(7, 2.0, x)
    stages, cur = [], x
    for _ in range(5):
        cur = blur(cur, kernel)
        stages.append(cur)
    matched = [min(range(5), key=lambda k, i=i: float((stages[k][i] - out[i]).abs().max()))
               for i in range(len(x))]
    for i, k in enumerate(matched):
        assert torch.allclose(out[i], stages[k][i])
    assert set(matched) == set(range(5))


def test_flat_patches_are_left_out_of_the_loss():
    model = _model(width=8)
    flat = torch.full((4, 1, 16, 16), 0.5)
    terms = model.training_step({"a": flat, "b": torch.zeros_like(flat)})
    assert float(terms["kept"]) == 0.0 and float(terms["loss_g"]) == 0.0
    terms = model.training_step({"a": _texture(4, 16, 4), "b": flat})
    assert float(terms["kept"]) == pytest.approx(0.5)


def test_short_training_gives_the_sharp_source_the_weight():
    model = _model(width=8, lr_g=1e-3, batch_size=16)
    image = _texture(1, 64, 5)
    kernel = gaussian_kernel(7, 2.0, image)
    blurred = blur(blur(image, kernel), kernel)
    with torch.no_grad():
        before = float(model.weight_map(image, blurred)[..., 16:, 16:].mean())
    losses = []
    for step in range(40):
        a, b = _texture(16, 16, 100 + 2 * step), _texture(16, 16, 101 + 2 * step)
        losses.append(float(model.training_step({"a": a, "b": b})["loss_g"]))
    with torch.no_grad():
        sharp_first = float(model.weight_map(image, blurred)[..., 16:, 16:].mean())
        sharp_second = float(model.weight_map(blurred, image)[..., 16:, 16:].mean())
    print(f"W(sharp, blurred) {before:.3f} -> {sharp_first:.3f}; W(blurred, sharp) "
          f"{sharp_second:.3f}; BCE {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert abs(before - 0.5) < 0.05
    assert sharp_first > 0.8 and sharp_second < 0.2 and losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("symmetric", [False, True])
def test_fusing_a_batch_equals_fusing_each_pair_alone(symmetric):
    model = _model(width=8, symmetric=symmetric)
    a, b = _texture(3, 40, 6), _texture(3, 40, 7).flip(-1)
    together = model.fuse(a, b)
    alone = torch.cat([model.fuse(a[i : i + 1], b[i : i + 1]) for i in range(3)])
    diff = float((together - alone).abs().max())
    print(f"symmetric={symmetric}: batch vs alone max diff {diff:.2g}")
    assert diff <= 1e-5


def test_symmetric_weights_are_antisymmetric_in_the_sources():
    model = _model(width=8, symmetric=True)
    a, b = _texture(1, 40, 8), _texture(1, 40, 9)
    with torch.no_grad():
        assert torch.allclose(model.weight_map(a, b), 1 - model.weight_map(b, a), atol=1e-6)


def test_config_rejects_even_windows_and_has_no_adversarial_field():
    with pytest.raises(ValueError, match="energy_window"):
        registry.build("cnncp", {"energy_window": 4})
    assert "adversarial" not in registry.get_model_class("cnncp").Config.model_fields
