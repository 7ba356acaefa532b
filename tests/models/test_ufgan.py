"""UFGAN (models.md §1) as intended: generators, the fixed losses, the G/D schedule, contract."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from fusion_models.models._ufgan_nets import UNetGenerator, valid_unet_output
from fusion_models.models.ufgan import UFGAN, Config, gram_matrix, transfer_loss
from fusion_models.models.vgg import VGG19Features

G_KEYS = {"loss_g", "loss_adv", "loss_int", "loss_grad", "loss_content", "loss_ssim"}
TR_KEYS = {"loss_transfer", "loss_tr_content", "loss_tr_style", "loss_tr_tv"}
SMALL = {"unet": {"base_width": 8, "depth": 3}, "fusionmodel": {}, "dense": {}}


def _tiny_vgg() -> VGG19Features:
    torch.manual_seed(123)
    return VGG19Features(width_divisor=16)  # the real code path, random tiny weights


def _model(feature_net: nn.Module | None = None, **params) -> UFGAN:
    torch.manual_seed(0)
    return UFGAN(Config(**params), feature_net=feature_net)


def _scene(n: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired smooth IR-like blobs and VI-like stripes, (n, 1, side, side) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side),
                            indexing="ij")
    cx, cy = torch.rand(n, 1, 1, 1, generator=g), torch.rand(n, 1, 1, 1, generator=g)
    ir = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05) * 2 - 1
    freq = 4 + 8 * torch.rand(n, 1, 1, 1, generator=g)
    vi = 0.8 * torch.sin(2 * math.pi * freq * (xx + 0.5 * yy))
    return ir, vi


def _batch(n: int, side: int, seed: int = 0) -> dict[str, torch.Tensor]:
    a, b = _scene(n, side, seed)
    return {"a": a, "b": b, "a_label": a, "b_label": b}  # same padding: label = patch


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def _changed(before: list[torch.Tensor], net: nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_config_defaults_are_the_repo_values():
    c = Config()
    assert (c.generator, c.base_width, c.depth, c.unet_padding) == ("unet", 64, 4, "same")
    assert (c.w_adv, c.w_content, c.w_grad, c.w_ssim, c.ssim_vi_weight) == (1, 100, 5, 300, 5)
    assert (c.transfer, c.w_transfer, c.w_transfer_content, c.w_transfer_style,
            c.w_transfer_tv) == (True, 100, 1, 1e4, 10)
    assert (c.lr_g, c.lr_d, c.generator_interval, c.d_steps, c.adversarial) == (
        1e-4, 1e-4, 2, 1, "lsgan")
    assert (c.epochs, c.batch_size, c.patch, c.stride) == (30, 32, 160, 60)
    with pytest.raises(ValidationError):
        Config(generator="resnet")
    with pytest.raises(ValidationError):
        Config(dropout=1.0)


def test_training_step_on_paper_size_patches_default_unet():
    model = _model(_tiny_vgg())
    spec = model.patch_spec()
    assert (spec.patch, spec.label, spec.stride, spec.end) == (160, 160, 60, "exclusive")
    g0, d0 = _params(model.generator), _params(model.discriminator)
    out = model.training_step(_batch(2, 160))
    assert set(out) == {"loss_d"} | G_KEYS | TR_KEYS
    assert all(v.dim() == 0 and not v.requires_grad and math.isfinite(v) for v in out.values())
    assert _changed(g0, model.generator) and _changed(d0, model.discriminator)


@pytest.mark.parametrize("generator", ["unet", "fusionmodel", "dense"])
def test_each_generator_trains_and_fuses_odd_sizes(generator):
    model = _model(_tiny_vgg(), generator=generator, patch=32, **SMALL[generator])
    g0 = _params(model.generator)
    out = model.training_step(_batch(2, 32))
    assert all(math.isfinite(v) for v in out.values()) and _changed(g0, model.generator)
    model.eval()
    a, b = torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)
    f1, f2 = model.fuse(a, b), model.fuse(a, b)
    assert f1.shape == (1, 1, 37, 53) and 0 <= f1.min() and f1.max() <= 1
    assert torch.equal(f1, f2)


def test_dropout_is_a_registered_module_and_eval_is_deterministic():
    unet = UNetGenerator(base_width=4, depth=4)
    assert sum(isinstance(m, nn.Dropout) for m in unet.modules()) == 2
    fm = _model(generator="fusionmodel", transfer=False).generator
    assert sum(isinstance(m, nn.Dropout2d) for m in fm.modules()) == 2  # not on the output
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    unet.train()
    unet(x)  # one batch for BN running statistics
    assert not torch.equal(unet(x), unet(x))  # training: stochastic
    unet.eval()
    assert torch.equal(unet(x), unet(x))


def test_unet_size_rules():
    same = UNetGenerator(base_width=4, depth=4).eval()
    for h, w in ((37, 53), (16, 16), (160, 160)):
        assert same(torch.zeros(1, 2, h, w)).shape[-2:] == (h, w)
    # valid convs + centre-cropped skips: the original U-Net loses 184 px at depth 4
    assert [valid_unet_output(n, 4) for n in (160, 188, 220, 572)] == [None, 4, 36, 388]
    with pytest.raises(ValidationError, match="admissible"):
        Config(unet_padding="valid")  # 160 cannot be a valid-conv U-Net input
    model = _model(unet_padding="valid", patch=220, base_width=2, transfer=False)
    assert model.patch_spec().label == 36
    assert model.generator(torch.zeros(1, 2, 220, 220)).shape[-2:] == (36, 36)
    with pytest.raises(ValueError):
        model.generator(torch.zeros(1, 2, 200, 200))
    model.eval()
    assert model.fuse(torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)).shape == (1, 1, 37, 53)


def test_gram_is_per_sample_not_batch_folded():
    x = torch.randn(2, 3, 4, 5)
    g = gram_matrix(x)
    assert g.shape == (2, 3, 3)
    for i in range(2):
        f = x[i].reshape(3, 20)
        torch.testing.assert_close(g[i], f @ f.T / 60)
    folded = x.permute(1, 0, 2, 3).reshape(3, 40)  # the repo's (C, B*H*W)
    assert not torch.allclose(g[0], folded @ folded.T / 120)


def test_transfer_loss_gradient_flows_through_fused_features():
    vgg = _tiny_vgg()
    ir, vi = _scene(2, 32)
    fused = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    ir.requires_grad_(True)
    vi.requires_grad_(True)
    for w_content, w_style in ((1.0, 0.0), (0.0, 1e4)):  # TV off: the repo's bug gives 0
        fused.grad = None
        terms = transfer_loss(vgg, fused, vi, ir, w_content=w_content, w_style=w_style, w_tv=0.0)
        terms["loss_transfer"].backward()
        assert fused.grad is not None and fused.grad.abs().sum() > 0
        assert ir.grad is None and vi.grad is None  # sources are detached targets


def test_transfer_only_g_loss_still_updates_g():
    model = _model(_tiny_vgg(), generator="fusionmodel", patch=32, w_adv=0, w_content=0,
                   w_ssim=0, w_transfer_tv=0)
    model.training_step(_batch(2, 32))
    grads = [p.grad for p in model.generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_generator_interval_and_d_loss_never_reaches_g():
    model = _model(generator="fusionmodel", patch=32, transfer=False, generator_interval=2)
    batch = _batch(2, 32)
    g_updated = []
    for _ in range(4):
        g0, d0 = _params(model.generator), _params(model.discriminator)
        model.training_step(batch)
        assert _changed(d0, model.discriminator)  # D every call
        g_updated.append(_changed(g0, model.generator))
        if len(g_updated) == 1:
            grads = [p.grad.clone() for p in model.generator.parameters()]
    assert g_updated == [True, False, True, False]
    assert int(model.state_dict()["step_count"]) == 4
    # a D-only call leaves G's gradients as its G step left them (the repo's D backward added
    # D-loss gradients to them before the next G step)
    model2 = _model(generator="fusionmodel", patch=32, transfer=False)
    model2.training_step(batch)
    model2.training_step(batch)  # D-only call
    for g, p in zip(grads, model2.generator.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_vgg_needed_only_for_training_with_transfer(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = _model(generator="fusionmodel", patch=32)  # transfer on, no weights anywhere
    model.eval()
    assert model.fuse(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 20, 20)).shape[-1] == 20
    model.train()
    with pytest.raises(FileNotFoundError, match="vgg19"):
        model.training_step(_batch(2, 32))
    off = _model(generator="fusionmodel", patch=32, transfer=False)
    assert set(off.training_step(_batch(2, 32))) == {"loss_d"} | G_KEYS


def test_checkpoint_holds_g_d_and_step_not_vgg():
    model = _model(_tiny_vgg(), **SMALL["unet"], patch=32)
    model.training_step(_batch(2, 32))
    state = model.state_dict()
    assert not any("vgg" in k or k.startswith("features") for k in state)
    fresh = _model(**SMALL["unet"], patch=32, transfer=False)
    fresh.load_state_dict(state)
    a, b = torch.rand(1, 1, 33, 35), torch.rand(1, 1, 33, 35)
    assert torch.equal(model.eval().fuse(a, b), fresh.eval().fuse(a, b))


@pytest.mark.parametrize("adversarial", ["bce", "wgan_gp"])
def test_other_adversarial_kinds_run(adversarial):
    model = _model(generator="fusionmodel", patch=32, transfer=False, adversarial=adversarial,
                   d_norm="none")
    out = model.training_step(_batch(2, 32))
    assert all(math.isfinite(v) for v in out.values())


def test_overfit_one_batch_lowers_content_loss():
    # transfer off: with a random tiny VGG its 1e6-weighted style term would drown the rest
    model = _model(**SMALL["unet"], patch=32, lr_g=1e-3, generator_interval=1, transfer=False)
    batch = _batch(4, 32, seed=1)
    first = model.training_step(batch)
    for _ in range(24):
        last = model.training_step(batch)
    assert last["loss_content"] < 0.3 * first["loss_content"]
    assert last["loss_ssim"] < 0.5 * first["loss_ssim"]
    assert last["loss_g"] < 0.3 * first["loss_g"]
