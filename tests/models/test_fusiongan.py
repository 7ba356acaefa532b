"""FusionGAN (models.md §2): shapes of the valid-conv nets, the pad-6 inference rule, the soft
labels, the 2:1 D:G ratio, spectral norm at test time and a short overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fusion_models.data.patches import PATCH_PRESETS
from fusion_models.models import losses
from fusion_models.models.base import eval_context
from fusion_models.models.fusiongan import (
    Config,
    Discriminator,
    FusionGAN,
    Generator,
    sn_frozen,
)


def _batch(patch: int, n: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 1, patch, patch, generator=g) * 2 - 1
    b = torch.rand(n, 1, patch, patch, generator=g) * 2 - 1
    o = 6
    return {"a": a, "b": b, "a_label": a[..., o:-o, o:-o], "b_label": b[..., o:-o, o:-o]}


def _model(**params) -> FusionGAN:
    torch.manual_seed(0)
    return FusionGAN(Config(**params))


def test_generator_maps_132_to_120_and_d_flattens_6x6x256():
    torch.manual_seed(0)
    g = Generator()
    assert g(torch.rand(1, 2, 132, 132)).shape == (1, 1, 120, 120)
    assert g(torch.rand(1, 2, 37, 53)).shape == (1, 1, 25, 41)  # 12-px valid shrink
    d = Discriminator(120)
    assert d.fc.in_features == 6 * 6 * 256
    assert d(torch.rand(3, 1, 120, 120)).shape == (3, 1)
    assert _model().patch_spec() == PATCH_PRESETS["fusiongan"]


def test_every_kernel_is_spectrally_normalised_and_stays_so_at_test():
    model = _model(patch=44)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(convs) == 5 + 5 and all(parametrize.is_parametrized(m, "weight") for m in convs)
    model.eval()  # the TF test graph dropped SN (§2.5); the last 1x1 conv is the exposed one
    with torch.no_grad():
        last = model.generator.net[-2].weight
    assert torch.linalg.matrix_norm(last.reshape(1, -1), ord=2) == pytest.approx(1.0, abs=1e-4)


def test_fuse_is_edge_replicate_pad_6_then_g_and_keeps_odd_sizes():
    model = _model(patch=44).eval()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 1, 37, 53, generator=g), torch.rand(2, 1, 37, 53, generator=g)
    out = model.fuse(a, b)
    assert out.shape == (2, 1, 37, 53) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out, model.fuse(a, b))
    with torch.no_grad():  # [IR, VI] = [a, b] in [-1, 1], replicate-padded by 6 (§2.5, §0.13)
        x = F.pad(torch.cat([a, b], 1) * 2 - 1, (6, 6, 6, 6), mode="replicate")
        ref = ((model.generator(x) + 1) / 2).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-6)


def test_bn_at_test_batch_uses_the_image_statistics_and_leaves_running_ones():
    model = _model(patch=44, bn_at_test="batch")
    model.train()
    bn = model.generator.net[1]
    running = bn.running_mean.clone()
    x = torch.rand(1, 1, 30, 30)
    out = model.fuse(x, 1 - x)
    assert torch.equal(bn.running_mean, running) and bn.training and bn.track_running_stats
    with torch.no_grad(), eval_context(model.generator, "running"):
        pad = F.pad(torch.cat([x, 1 - x], 1) * 2 - 1, (6, 6, 6, 6), mode="replicate")
        assert not torch.allclose(out, ((model.generator(pad) + 1) / 2).clamp(0, 1))
    assert model.generator.training  # modes restored


def test_soft_labels_drawn_fresh_per_sample_in_the_paper_ranges(monkeypatch):
    draws: list[tuple[float, float, torch.Tensor]] = []
    original = losses.soft_labels

    def record(n, low, high, like):
        out = original(n, low, high, like)
        draws.append((low, high, out.detach().clone()))
        return out

    monkeypatch.setattr(losses, "soft_labels", record)
    model = _model(patch=44)
    for _ in range(3):
        model.training_step(_batch(44, n=8))
    # per step: 2 D updates x (real U[0.7,1.2] + fake U[0,0.3]) + the G target U[0.7,1.2]
    assert [(lo, hi) for lo, hi, _ in draws[:5]] == [(0.7, 1.2), (0.0, 0.3)] * 2 + [(0.7, 1.2)]
    assert len(draws) == 15
    for low, high, values in draws:
        assert values.shape == (8, 1)  # one label per sample
        assert float(values.min()) >= low and float(values.max()) <= high
        assert values.unique().numel() == 8  # not one shared value
    assert not torch.equal(draws[0][2], draws[5][2])  # a fresh draw every step
    many = torch.cat([original(10_000, 0.7, 1.2, torch.zeros(1)), draws[0][2]])
    assert 0.7 <= float(many.min()) < 0.71 and 1.19 < float(many.max()) <= 1.2


def test_d_steps_2_means_two_d_updates_per_g_update():
    model = _model(patch=44)
    model.training_step(_batch(44))
    step = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert step(model.optimizers["d"]) == 2 and step(model.optimizers["g"]) == 1


def test_sn_frozen_stops_the_power_iteration():
    d = Discriminator(32).train()
    sn = d.features[0].parametrizations.weight
    u = lambda: sn[0]._u.clone()  # noqa: E731
    before = u()
    with sn_frozen(d):
        d(torch.rand(2, 1, 32, 32))
    assert torch.equal(u(), before) and sn.training
    d(torch.rand(2, 1, 32, 32))
    assert not torch.equal(u(), before)


def test_training_step_at_the_paper_patch_size_is_finite():
    model = _model()
    terms = model.training_step(_batch(132))
    assert set(terms) == {"loss_g", "loss_d", "loss_adv", "loss_content", "loss_int",
                          "loss_grad"}
    assert all(v.ndim == 0 and torch.isfinite(v) and not v.requires_grad for v in terms.values())
    assert float(terms["loss_g"]) == pytest.approx(
        float(terms["loss_adv"] + 100 * (terms["loss_int"] + 5 * terms["loss_grad"])), rel=1e-5)


def test_short_overfit_lowers_the_content_loss():
    model = _model(patch=44)
    batch = _batch(44)
    first = float(model.training_step(batch)["loss_content"])
    for _ in range(15):
        last = float(model.training_step(batch)["loss_content"])
    assert last < 0.5 * first


def test_config_validates():
    with pytest.raises(ValueError):
        Config(patch=40)  # the D needs a 31-px label
    with pytest.raises(ValueError):
        Config(bn_at_test="frozen")
    with pytest.raises(ValueError):
        Config(no_such_knob=1)
