"""DDcGAN (models.md §3): dense-block widths, the [VI, IR] order, the multi-resolution D_i path,
weight clipping, the bounded adaptive schedule, TF1 RMSProp, fuse and a short overfit."""

from __future__ import annotations

import pytest
import torch

from fusion_models.data.patches import PATCH_PRESETS
from fusion_models.models._ddcgan_nets import (
    Generator,
    TFRMSprop,
    avg_pool_same,
    downsample_quarter,
)
from fusion_models.models.ddcgan import Config, DDcGAN

KEYS = {"loss_g", "loss_d", "loss_d_v", "loss_d_i", "loss_adv", "loss_adv_v", "loss_adv_i",
        "loss_content", "loss_int", "loss_grad", "steps_d_v", "steps_d_i", "steps_g"}


def _batch(patch: int, n: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(n, 1, patch, patch, generator=g), torch.rand(n, 1, patch, patch, generator=g)
    return {"a": a, "b": b, "a_label": a, "b_label": b}


def _model(**params) -> DDcGAN:
    torch.manual_seed(0)
    return DDcGAN(Config(**params))


def test_generator_dense_block_and_decoder_widths():
    g = Generator()
    assert (g.conv1.conv.in_channels, g.conv1.conv.out_channels) == (2, 48)
    assert [b.conv.in_channels for b in g.dense] == [48, 96, 144, 192]
    assert {b.conv.out_channels for b in g.dense} == {48}
    assert g.encode(torch.rand(1, 2, 20, 20)).shape == (1, 240, 20, 20)
    widths = [(m.conv.in_channels, m.conv.out_channels) for m in (g.dec0, *g.dec, g.out)]
    assert widths == [(240, 240), (240, 128), (128, 64), (64, 32), (32, 1)]
    calls = []
    g.dec0.conv.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = g(torch.rand(2, 1, 20, 20), torch.rand(2, 1, 20, 20))
    assert len(calls) == 2  # the first decoder kernel runs twice (code quirk, §3.1)
    assert out.shape == (2, 1, 20, 20) and 0 < float(out.min()) and float(out.max()) < 1


@pytest.mark.parametrize("variant", ["same_resolution", "multi_resolution"])
def test_generator_input_is_vi_then_ir(variant):
    model = _model(variant=variant, patch=32).eval()
    seen = []
    model.generator.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 1, 32, 32, generator=g), torch.rand(1, 1, 32, 32, generator=g)
    model.fuse(a, b)  # a = IR, b = VI
    vi, ir = b, a
    if variant == "multi_resolution":
        with torch.no_grad():
            vi, ir = model.generator.up_vi(b), model.generator.up_ir(downsample_quarter(a))
    assert torch.allclose(seen[0][:, :1], vi) and torch.allclose(seen[0][:, 1:], ir)


def test_multi_resolution_d_i_sees_the_quarter_size_images():
    model = _model(variant="multi_resolution", alternate=False, max_repeats=1)
    shapes: dict[str, set] = {"d_v": set(), "d_i": set(), "up_in": set(), "up_out": set()}
    model.d_v.register_forward_pre_hook(lambda _, x: shapes["d_v"].add(tuple(x[0].shape)))
    model.d_i.register_forward_pre_hook(lambda _, x: shapes["d_i"].add(tuple(x[0].shape)))

    def up_hook(_, x, y) -> None:
        shapes["up_in"].add(tuple(x[0].shape))
        shapes["up_out"].add(tuple(y.shape))

    model.generator.up_ir.register_forward_hook(up_hook)
    model.training_step(_batch(84))
    assert shapes == {"d_v": {(2, 1, 84, 84)}, "d_i": {(2, 1, 21, 21)},
                      "up_in": {(2, 1, 21, 21)}, "up_out": {(2, 1, 84, 84)}}
    assert model.d_i.fc.in_features == 3 * 3 * 64 and model.d_v.fc.in_features == 11 * 11 * 64


def test_resampling_rules():
    x = torch.full((1, 1, 84, 84), 0.3)
    ds = avg_pool_same(avg_pool_same(x))  # the padded edge is left out of the mean (TF 'SAME')
    assert ds.shape == (1, 1, 21, 21) and torch.allclose(ds, torch.full_like(ds, 0.3))
    assert downsample_quarter(torch.rand(2, 1, 84, 84)).shape == (2, 1, 21, 21)
    up = Generator(multi_resolution=True).up_ir
    with torch.no_grad():
        y = up(torch.rand(1, 1, 5, 5) + 0.5)
    assert y.shape == (1, 1, 20, 20)
    assert float(y[..., 3::4, :].abs().max()) == 0 and float(y[..., :, 3::4].abs().max()) == 0


def test_weight_clipping_holds_after_each_step():
    model = _model(patch=32, alternate=False, max_repeats=1, clip_value=0.02)
    model.training_step(_batch(32))
    for net in (model.generator, model.d_v, model.d_i):
        params = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert float(params.abs().max()) == pytest.approx(0.02)  # BN scales start at 1


def test_adaptive_schedule_alternates_and_is_bounded():
    model = _model(patch=32, d_threshold=-1.0, g_threshold=-1.0, max_repeats=3,
                   lr_decay_steps=4)
    first = model.training_step(_batch(32))  # even batch: D phase only
    assert (first["steps_d_v"], first["steps_d_i"], first["steps_g"]) == (3, 3, 0)
    second = model.training_step(_batch(32))  # odd batch: G phase only
    assert (second["steps_d_v"], second["steps_d_i"], second["steps_g"]) == (0, 0, 3)
    assert set(first) == set(second) == KEYS
    assert int(model.n_opt_steps) == 9  # one shared global step over all solvers
    lr = model.optimizers["g"].param_groups[0]["lr"]  # last step ran at global step 8
    assert lr == pytest.approx(2e-4 * 0.9 ** (8 / 4))


def test_lr_decay_period_defaults_to_the_loops_batches_per_epoch():
    """The code decays once per epoch of batches; the training loop reports that number."""
    model = _model(patch=32, d_threshold=-1.0, g_threshold=-1.0, max_repeats=3)
    model.steps_per_epoch = 2
    model.training_step(_batch(32))
    model.training_step(_batch(32))
    lr = model.optimizers["g"].param_groups[0]["lr"]
    assert lr == pytest.approx(2e-4 * 0.9 ** (8 / 2))


def test_tf_rmsprop_starts_from_ones():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = TFRMSprop([p], lr=0.1)
    p.grad = torch.tensor([0.5])
    opt.step()
    assert float(p.detach()) == pytest.approx(1 - 0.1 * 0.5 / (0.9 + 0.1 * 0.25) ** 0.5)


def test_variant_defaults_and_validation():
    same = Config()
    assert (same.w_content, same.w_int, same.w_grad, same.d_threshold, same.g_adv_threshold,
            same.g_threshold, same.max_repeats, same.clip_value) == (
        0.6, 1 / 16, 1.2, 1.7, 1.4, 200, 20, 8)
    multi = Config(variant="multi_resolution")
    assert (multi.w_content, multi.w_int, multi.w_grad, multi.d_threshold,
            multi.g_adv_threshold) == (0.8, 1.0, 1.2, 1.9, 1.0)
    assert Config(variant="multi_resolution", w_content=0.5).w_content == 0.5
    assert Config(**multi.model_dump()) == multi  # checkpoints rebuild the same config
    with pytest.raises(ValueError):
        Config(variant="multi_resolution", patch=86)
    with pytest.raises(ValueError):
        Config(optimizer_g="adagrad")
    assert DDcGAN(same).patch_spec() == PATCH_PRESETS["ddcgan"]


@pytest.mark.parametrize("variant", ["same_resolution", "multi_resolution"])
@pytest.mark.parametrize("bn", ["running", "batch"])
def test_fuse_odd_size_shape_range_determinism(variant, bn):
    model = _model(variant=variant, patch=32, bn_at_test=bn).eval()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 1, 37, 53, generator=g), torch.rand(2, 1, 37, 53, generator=g)
    out = model.fuse(a, b)
    assert out.shape == (2, 1, 37, 53) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out, model.fuse(a, b)) and not out.requires_grad


@pytest.mark.parametrize("variant", ["same_resolution", "multi_resolution"])
def test_training_step_at_the_paper_patch_size_is_finite(variant):
    model = _model(variant=variant, alternate=False, max_repeats=1)
    terms = model.training_step(_batch(84))
    assert set(terms) == KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) and not v.requires_grad for v in terms.values())
    w_content, w_int = (0.6, 1 / 16) if variant == "same_resolution" else (0.8, 1.0)
    content = w_int * terms["loss_int"] + 1.2 * terms["loss_grad"]
    assert float(terms["loss_g"]) == pytest.approx(
        float(terms["loss_adv"] + w_content * content), rel=1e-5)


def test_short_overfit_lowers_the_content_loss():
    model = _model(patch=32, alternate=False, max_repeats=1)
    batch = _batch(32)
    first = float(model.training_step(batch)["loss_content"])
    for _ in range(11):
        last = float(model.training_step(batch)["loss_content"])
    assert last < 0.6 * first
