"""MFIF-GAN (models.md §8): focus-map generator, α-matte recipe, n_critic schedule, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_models.data import synthetic
from fusion_models.data.patches import PatchStore
from fusion_models.models.base import eval_context
from fusion_models.models.mfifgan import (
    MFIFGAN,
    Config,
    alpha_matte_pair,
    blob_masks,
    gaussian_blur,
    remove_small_regions,
    sharp_composite,
)

TINY = {"g_channels": 4, "g_blocks": 1, "d_channels": 4, "patch": 32, "stride": 16}
KEYS = {"loss_g", "loss_d", "loss_adv", "loss_l1"}


def _tiny(**extra) -> MFIFGAN:
    torch.manual_seed(0)
    return MFIFGAN(Config(**{**TINY, **extra}))


def _texture(n: int = 1, side: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 1, side, side) white noise in [-1, 1]: every pixel carries detail."""
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_defaults_are_the_authors_code_values() -> None:
    cfg = Config()
    assert (cfg.adversarial, cfg.lambda_gp, cfg.w_adv, cfg.w_l1, cfg.n_critic) == (
        "wgan_gp", 10.0, 1.0, 10.0, 5)
    assert (cfg.lr_g, cfg.lr_d, cfg.beta1, cfg.beta2) == (1e-4, 1e-4, 0.5, 0.999)
    assert (cfg.g_channels, cfg.g_blocks, cfg.d_channels, cfg.d_repeats) == (64, 9, 64, 3)
    assert (cfg.blur_sigma, cfg.batch_size, cfg.patch, cfg.d_norm) == (1.0, 2, 256, "layer")
    model = MFIFGAN(cfg)
    opt = model.optimizers["g"].param_groups[0]
    assert opt["lr"] == 1e-4 and opt["betas"] == (0.5, 0.999)


def test_generator_map_is_in_0_1_with_the_documented_shapes() -> None:
    model = _tiny().eval()
    a, b = torch.rand(2, 1, 37, 53), torch.rand(2, 1, 37, 53)
    raw = model.generator(a * 2 - 1, b * 2 - 1)
    assert raw.shape == (2, 1, 40, 56)  # 4 * ceil(H / 4), 4 * ceil(W / 4)
    with torch.no_grad():
        m = model.decision_map(a, b)
    assert m.shape == (2, 1, 37, 53)
    assert 0.0 < float(m.min()) and float(m.max()) < 1.0
    # torchvision CenterCrop: top = round((40 - 37) / 2) = 2, left = round((56 - 53) / 2) = 2
    assert torch.equal(m, raw.detach()[..., 2:39, 2:55])


@pytest.mark.parametrize("post_process", [True, False])
def test_fuse_is_the_map_weighted_sum_of_the_sources(post_process: bool) -> None:
    model = _tiny(post_process=post_process)
    a, b = torch.rand(2, 1, 40, 44), torch.rand(2, 1, 40, 44)
    with torch.no_grad(), eval_context(model):
        m = model.focus_map(a, b)
    fused = model.fuse(a, b)
    assert torch.allclose(fused, m * a + (1 - m) * b, atol=1e-6)
    if post_process:
        assert set(m.unique().tolist()) <= {0.0, 1.0}


def test_gaussian_blur_is_matlab_imgaussfilt_sigma_1() -> None:
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[..., 4, 4] = 1.0
    row = gaussian_blur(impulse, 1.0)[0, 0, 4]
    # fspecial('gaussian', 5, 1) separable taps: exp(-x^2 / 2) / 2.5066
    taps = torch.tensor([0.054489, 0.244201, 0.402620, 0.244201, 0.054489])
    assert torch.allclose(row[2:7] / row[2:7].sum(), taps, atol=1e-6)
    assert row[4] == pytest.approx(0.402620**2, abs=1e-6) and row[:2].abs().max() == 0


def test_alpha_matte_sources_are_sharp_where_documented() -> None:
    image = _texture(side=32)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16] = 1.0  # left half: A in focus
    src_a, src_b = alpha_matte_pair(image, mask, sigma=1.0)
    blurred = gaussian_blur(image, 1.0)
    # A = I * M + BI * (1 - M): exactly I where M = 1, exactly BI where M = 0
    assert torch.equal(src_a[..., :16], image[..., :16])
    assert torch.equal(src_a[..., 16:], blurred[..., 16:])
    # B = BI * M~ + I * (1 - M~): M~ (radius-2 kernel) is 1 / 0 beyond 2 px of the edge
    assert torch.allclose(src_b[..., :14], blurred[..., :14], atol=1e-6)
    assert torch.allclose(src_b[..., 18:], image[..., 18:], atol=1e-6)
    seam = src_b[..., 15:17]  # the matte mixes both inside the transition
    assert float((seam - image[..., 15:17]).abs().mean()) > 0.05
    assert float((seam - blurred[..., 15:17]).abs().mean()) > 0.05
    detail = (image - blurred).abs().mean()
    print(f"mean |I - BI| = {detail:.3f} (white noise, sigma 1)")
    assert detail > 0.3


def test_recipe_swaps_sources_and_target_with_swap_prob() -> None:
    a = b = _texture(4, 32)
    pairs = {}
    for p in (0.0, 1.0):
        torch.manual_seed(3)
        pairs[p] = _tiny(swap_prob=p, sharp_source="a").alpha_matte_pair(a, b)
    (a0, b0, t0), (a1, b1, t1) = pairs[0.0], pairs[1.0]
    assert torch.equal(a0, b1) and torch.equal(b0, a1) and torch.equal(t0 + t1, torch.ones_like(t0))
    # unswapped: A is the patch itself wherever the target says "A in focus"
    assert torch.equal(a0[t0 == 1], a[t0 == 1])


def test_blob_masks_are_binary_and_cover_35_to_65_percent() -> None:
    torch.manual_seed(0)
    masks = blob_masks(16, 64, 48, torch.zeros(1))
    cover = masks.mean(dim=(1, 2, 3))
    print(f"coverage min {cover.min():.3f} max {cover.max():.3f}")
    assert masks.shape == (16, 1, 64, 48) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert float(cover.min()) >= 0.34 and float(cover.max()) <= 0.66


def test_sharp_composite_takes_the_sharp_half_of_each_source() -> None:
    image = _texture(side=48)
    blurred = gaussian_blur(image, 2.0)
    a = torch.cat([image[..., :24], blurred[..., 24:]], dim=-1)
    b = torch.cat([blurred[..., :24], image[..., 24:]], dim=-1)
    out = sharp_composite(a, b)
    away = torch.cat([out[..., :20], out[..., 28:]], -1)
    truth = torch.cat([image[..., :20], image[..., 28:]], -1)
    assert torch.equal(away, truth)


def test_post_processing_removes_small_regions_and_holes() -> None:
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    mask[5:7, 5:7] = False  # a 4-pixel hole in the foreground
    mask[30:32, 30:32] = True  # a 4-pixel island in the background
    mask[10:20, 30:40] = True  # a 100-pixel region: kept
    out = remove_small_regions(mask, 0.01 * 40 * 40)  # 16 pixels
    expected = np.zeros((40, 40), bool)
    expected[:, :20] = True
    expected[10:20, 30:40] = True
    assert np.array_equal(out, expected)


def test_discriminator_is_the_codes_conditional_patch_critic() -> None:
    model = MFIFGAN(Config(adversarial="lsgan"))
    d = model.discriminator
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    out = d(torch.rand(2, 1, 256, 256), torch.rand(2, 2, 256, 256))
    assert bns == 5 and out.shape == (2, 1, 6, 6) and isinstance(d.main[-1], torch.nn.Sigmoid)
    # the split first conv is one 3 -> 64 conv over cat(A, B, map)
    whole = torch.nn.Conv2d(3, 64, 4, 2, 2)
    with torch.no_grad():
        whole.weight.copy_(torch.cat([d.source_conv.weight, d.map_conv.weight], dim=1))
        whole.bias.copy_(d.map_conv.bias)
    x = torch.rand(2, 3, 40, 40)
    split = d.map_conv(x[:, 2:]) + d.source_conv(x[:, :2])
    assert torch.allclose(split, whole(x), atol=1e-5)


def _count_steps(model: MFIFGAN) -> dict[str, int]:
    counts = {"g": 0, "d": 0}
    for key, opt in model.optimizers.items():
        step = opt.step

        def counted(*args, _key=key, _step=step, **kw):
            counts[_key] += 1
            return _step(*args, **kw)

        opt.step = counted
    return counts


@pytest.mark.parametrize(("schedule", "batches", "d_steps", "g_steps"),
                         [("interleaved", 11, 11, 3), ("same_batch", 3, 15, 3)])
def test_critic_gets_n_critic_updates_per_generator_update(schedule, batches, d_steps,
                                                           g_steps) -> None:
    model = _tiny(critic_schedule=schedule).train()
    counts = _count_steps(model)
    x = _texture(2, 32)
    for _ in range(batches):
        terms = model.training_step({"a": x, "b": x})
        assert set(terms) == KEYS and all(torch.isfinite(v) for v in terms.values())
    print(f"{schedule}: {batches} batches -> {counts['d']} critic / {counts['g']} G updates")
    assert counts == {"d": d_steps, "g": g_steps}  # interleaved: G on batches 1, 6, 11


def _eval_pairs(n: int = 4, size: int = 96) -> tuple[torch.Tensor, ...]:
    """generated:mff's recipe (sigma 2, synthetic.py) on held-out photos, with the true masks:
    (A, B) in [0, 1] and M in {0, 1}, each (n, 1, size, size); M = 1 where A is sharp."""
    rng = np.random.default_rng(5)
    out: list[list[np.ndarray]] = [[], [], []]
    for name in synthetic.TEST_PHOTOS[:n]:
        image = synthetic._crop(rng, synthetic._photo(name), size)
        image = image[..., :1] if image.shape[2] == 1 else image @ synthetic._GRAY[:, None]
        mask = synthetic._blob_mask(rng, size)
        blurred, soft = synthetic._blur(image, 2.0), synthetic._blur(mask, 2.0)
        out[0].append((image * mask + blurred * (1 - mask))[..., 0] / 255.0)
        out[1].append((blurred * soft + image * (1 - soft))[..., 0] / 255.0)
        out[2].append(mask[..., 0])
    return tuple(torch.tensor(np.stack(x), dtype=torch.float32)[:, None] for x in out)


def _agreement(model: MFIFGAN, pairs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    a, b, mask = pairs
    with torch.no_grad(), eval_context(model):
        m = model.decision_map(a, b)
    return float(((m > 0.5).float() == mask).float().mean()), float((m - mask).abs().mean())


@pytest.mark.slow
def test_short_training_learns_the_focus_map_of_generated_pairs(tmp_path) -> None:
    torch.manual_seed(0)
    model = MFIFGAN(Config(g_channels=8, g_blocks=2, d_channels=8, patch=64, stride=32,
                           batch_size=4, lr_g=1e-3, lr_d=1e-3, critic_schedule="same_batch"))
    pairs = synthetic.generated_set("mff", tmp_path / "gen", n=8, size=128)
    store = PatchStore.build_or_load(pairs, model.patch_spec(), tmp_path / "patches")
    loader = torch.utils.data.DataLoader(store.dataset("pm1"), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    held_out = _eval_pairs()
    acc0, l1_0 = _agreement(model, held_out)
    steps = 0
    while steps < 60:
        for batch in loader:
            model.training_step(batch)
            steps += 1
            if steps == 60:
                break
    acc, l1 = _agreement(model, held_out)
    print(f"held-out generated pairs, map > 0.5 vs true mask: accuracy {acc0:.3f} -> {acc:.3f},"
          f" mean |map - mask| {l1_0:.3f} -> {l1:.3f} after 60 batches of 4")
    assert acc0 < 0.6 and acc > 0.75 and l1 < l1_0 - 0.2
