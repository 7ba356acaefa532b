"""TarDAL as its authors' DT recipe does it (models.md §7), and the deviations we chose."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusion_models import registry
from fusion_models.models.losses import ms_ssim_l1_loss, wgan_div_penalty
from fusion_models.models.tardal import Discriminator, Generator, TarDAL, gradient, ir_saliency


def _model(**params) -> TarDAL:
    torch.manual_seed(0)
    return registry.build("tardal", {"patch": 32, "stride": 32, **params})


def _batch(n: int = 2, side: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    a = F.avg_pool2d(torch.rand(n, 1, side, side, generator=g), 3, 1, 1)
    b = F.avg_pool2d(torch.rand(n, 1, side, side, generator=g), 3, 1, 1)
    return {"a": a, "b": b, "a_label": a, "b_label": b}


def test_generator_and_discriminator_layers_are_the_papers() -> None:
    g = Generator(32, 3)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (2, 32), (32, 32), (64, 32), (96, 32), (128, 128), (128, 64), (64, 32), (32, 1)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    # BN after every conv but the head's first (128->128) and last (32->1)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules()) == 6
    d = Discriminator(32, 224)
    assert d.linear.in_features == 28 * 28 * 128  # (224 / 8)^2 x 128, as the authors' code
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm) for m in d.modules())
    assert Discriminator(32, 37).linear.in_features == 5 * 5 * 128  # 37 -> 19 -> 10 -> 5


def test_defaults_are_the_dt_config() -> None:
    cfg = registry.get_model_class("tardal").Config()
    assert (cfg.w_src, cfg.w_adv, cfg.w_target, cfg.w_detail) == (0.8, 0.2, 0.5, 0.5)
    assert (cfg.div_k, cfg.div_p, cfg.d_warmup_epochs) == (2.0, 6.0, 10)
    assert (cfg.lr, cfg.beta1, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.937, 5e-4, 32)
    assert cfg.src_fn == "ms_ssim_l1" and cfg.detail_mask is False


def _ms_ssim_l1_dense(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same loss with full 33x33 2-D Gaussian kernels (kornia's own formulation)."""
    sigmas, size = (0.5, 1.0, 2.0, 4.0, 8.0), 33
    ax = torch.arange(size, dtype=x.dtype) - 16
    kernels = []
    for s in sigmas:
        g = torch.exp(-(ax**2) / (2 * s * s))
        kernels.append(torch.outer(g, g) / g.sum() ** 2)
    w = torch.stack(kernels).unsqueeze(1)  # (5, 1, 33, 33)
    mx, my = F.conv2d(x, w, padding=16), F.conv2d(y, w, padding=16)
    sxx = F.conv2d(x * x, w, padding=16) - mx**2
    syy = F.conv2d(y * y, w, padding=16) - my**2
    sxy = F.conv2d(x * y, w, padding=16) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ms = 1 - lum[:, -1] * cs.prod(dim=1)
    l1 = F.conv2d((x - y).abs(), w[-1:], padding=16)[:, 0]
    return (200 * (0.025 * ms + 0.975 * l1)).mean()


def test_ms_ssim_l1_matches_the_dense_2d_formulation_and_is_zero_on_equal_images() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 48, 40, generator=g)
    y = (x + 0.1 * torch.randn(2, 1, 48, 40, generator=g)).clamp(0, 1)
    ours, dense = ms_ssim_l1_loss(x.double(), y.double()), _ms_ssim_l1_dense(x.double(), y.double())
    print(f"MS-SSIM+L1: separable {float(ours):.10f} vs dense 2-D {float(dense):.10f}")
    assert float(ours) == pytest.approx(float(dense), rel=1e-9)
    assert float(ms_ssim_l1_loss(x, x)) == pytest.approx(0.0, abs=1e-5)


def test_wgan_div_penalty_of_a_linear_critic_is_the_weight_norm_to_the_sixth() -> None:
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    with torch.no_grad():
        d[1].weight.copy_(torch.linspace(-0.5, 0.5, 16).view(1, 16))
    real, fake = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    expected = float((d[1].weight.detach() + 1e-6).norm() ** 6)  # grad D = w everywhere
    assert float(wgan_div_penalty(d, real, fake, 6.0)) == pytest.approx(expected, rel=1e-5)


def test_gradient_is_kornias_normalised_sobel() -> None:
    ramp = (torch.arange(16.0) * 0.01).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    g = gradient(ramp)
    interior = g[..., 2:-2, 2:-2]
    assert torch.allclose(interior, torch.full_like(interior, (1e-4 + 1e-8) ** 0.5), atol=1e-7)


def test_saliency_marks_a_hot_target_and_stays_in_unit_range() -> None:
    ir = torch.full((1, 1, 40, 40), 0.2)
    ir[..., 15:25, 15:25] = 0.9  # a hot target on a cool background
    m = ir_saliency(ir, "ft_bright", 1.0)
    assert float(m.min()) == 0.0 and float(m.max()) == pytest.approx(1.0)
    assert float(m[..., 18:22, 18:22].min()) > 0.9 and float(m[..., :5, :5].max()) == 0.0
    assert torch.equal(ir_saliency(ir, "none", 1.0), torch.ones_like(ir))
    cold = 1 - ir  # a cold target: two-sided FT marks it, the one-sided default does not
    assert float(ir_saliency(cold, "ft", 1.0)[..., 20, 20]) > 0.9
    assert float(ir_saliency(cold, "ft_bright", 1.0)[..., 20, 20]) == 0.0


def test_adversarial_weight_is_zero_during_the_warmup_only() -> None:
    model = _model(d_warmup_epochs=1)
    model.steps_per_epoch = 2
    seen = []
    for _ in range(3):
        t = model.training_step(_batch())
        seen.append(float(t["warmup"]))
        cfg = model.config
        adv_w = 0.0 if t["warmup"] else cfg.w_adv
        assert float(t["loss_g"]) == pytest.approx(
            cfg.w_src * float(t["loss_src"]) + adv_w * float(t["loss_adv"]), rel=1e-5)
    assert seen == [1.0, 1.0, 0.0]


def test_the_g_step_never_moves_the_discriminators() -> None:
    """The authors' single optimiser let G's loss step the Ds; ours freezes them."""
    model = _model(d_warmup_epochs=0)
    for key in ("d_target", "d_detail"):
        for group in model.optimizers[key].param_groups:
            group["lr"] = 0.0  # the Ds may move only through their own optimisers
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("d_")}
    g_before = [p.clone() for p in model.generator.parameters()]
    model.training_step(_batch())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters(),
                                                      strict=True))


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    model = _model()
    decayed, plain = model.optimizers["g"].param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.generator.parameters()))


def test_short_overfit_lowers_the_source_loss() -> None:
    model = _model(lr=3e-3, d_warmup_epochs=0).train()
    batch = _batch(4)
    first = float(model.training_step(batch)["loss_src"])
    for _ in range(25):
        last = float(model.training_step(batch)["loss_src"])
    print(f"TarDAL src loss: first step {first:.2f}, after 25 more {last:.2f}")
    assert last < 0.6 * first


def test_fuse_keeps_odd_sizes_in_unit_range() -> None:
    model = _model().eval()
    a, b = torch.rand(2, 1, 37, 53), torch.rand(2, 1, 37, 53)
    out = model.fuse(a, b)
    assert out.shape == (2, 1, 37, 53) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0
