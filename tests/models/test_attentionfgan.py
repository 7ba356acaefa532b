"""AttentionFGAN: multi-scale attention maps (shapes, ranges), how they enter G and the Ds, the
valid-conv shapes, both discriminators trained, the loss terms by hand, and a short training on
generated IVIF pairs that raises val Qabf and SF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_models.data.pairs import load_pair
from fusion_models.data.synthetic import generated_set
from fusion_models.metrics import compute_metrics
from fusion_models.models._attentionfgan_nets import (
    Discriminator,
    Generator,
    MultiScaleAttention,
)
from fusion_models.models.attentionfgan import AttentionFGAN, Config


def _model(**params) -> AttentionFGAN:
    torch.manual_seed(0)
    return AttentionFGAN(Config(**params))


def _batch(patch: int, n: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 1, patch, patch, generator=g) * 2 - 1
    b = torch.rand(n, 1, patch, patch, generator=g) * 2 - 1
    return {"a": a, "b": b, "a_label": a[..., 6:-6, 6:-6], "b_label": b[..., 6:-6, 6:-6]}


def test_attention_maps_at_each_scale_have_the_pooled_shapes_and_lie_in_0_1():
    torch.manual_seed(0)
    msa = MultiScaleAttention(8, 4)
    x = torch.randn(2, 8, 37, 53) * 3
    with torch.no_grad():
        maps, full = msa.maps_per_scale(x), msa(x)
    assert [m.shape[-2:] for m in maps] == [(37, 53), (19, 27), (10, 14), (5, 7)]  # ceil(/2^k)
    assert full.shape == (2, 4, 37, 53)
    for k, m in enumerate(maps):
        assert m.shape[:2] == (2, 1) and 0 <= float(m.min()) and float(m.max()) <= 1, k
        up = torch.nn.functional.interpolate(m, size=(37, 53), mode="bilinear")
        assert torch.allclose(full[:, k : k + 1], up if k else m), k
    assert 0 <= float(full.min()) and float(full.max()) <= 1
    assert float(full.std()) > 0  # sigmoid maps, not sum-to-one: each pixel its own weight


def test_generator_and_discriminator_attention_shapes():
    torch.manual_seed(0)
    g, d = Generator(3), Discriminator(32, 3)
    ir, vi = torch.rand(2, 1, 37, 53) * 2 - 1, torch.rand(2, 1, 37, 53) * 2 - 1
    with torch.no_grad():
        a_ir, a_vi = g.attention(ir, vi)
        assert a_ir.shape == a_vi.shape == (2, 3, 37, 53)
        assert not torch.equal(a_ir, g.att_vi(ir))  # one attention network per source
        maps = d.attention(torch.rand(4, 1, 32, 32))
        assert maps.shape == (4, 3, 32, 32)
        assert 0 <= float(maps.min()) and float(maps.max()) <= 1
        assert d(torch.rand(4, 1, 32, 32)).shape == (4, 1)


def test_fusion_network_sees_the_sources_concatenated_with_their_attention_maps():
    torch.manual_seed(0)
    g = Generator(4).eval()
    ir, vi = torch.rand(1, 1, 30, 30) * 2 - 1, torch.rand(1, 1, 30, 30) * 2 - 1
    seen = []
    g.fusion[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        g(ir, vi)
        expected = torch.cat([ir, vi, *g.attention(ir, vi)], dim=1)
    assert g.fusion[0].in_channels == 2 + 2 * 4
    assert torch.equal(seen[0], expected)


def test_discriminator_judges_the_attention_masked_input():
    torch.manual_seed(0)
    d = Discriminator(32, 4).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        mask = d.attention(x).mean(dim=1, keepdim=True)
        assert torch.allclose(d(x), d.fc(d.features(x * mask).flatten(1)))


def test_generator_valid_shrink_and_fuse_keep_odd_sizes():
    torch.manual_seed(0)
    g = Generator(4)
    assert g(torch.rand(2, 1, 37, 53), torch.rand(2, 1, 37, 53)).shape == (2, 1, 25, 41)
    model = _model(patch=44).eval()
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 1, 37, 53, generator=gen), torch.rand(2, 1, 37, 53, generator=gen)
    out = model.fuse(a, b)
    assert out.shape == (2, 1, 37, 53) and 0 <= float(out.min()) and float(out.max()) <= 1
    with torch.no_grad():  # [-1, 1], edge-replicate pad 6, G, back to [0, 1]
        pad = lambda x: torch.nn.functional.pad(x * 2 - 1, (6,) * 4, mode="replicate")  # noqa: E731
        ref = ((model.generator(pad(a), pad(b)) + 1) / 2).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-6)
    assert model.patch_spec().label == 32


def test_training_step_updates_both_discriminators_then_g():
    model = _model(patch=44)
    before = {k: [p.detach().clone() for p in net.parameters()]
              for k, net in (("d_ir", model.d_ir), ("d_vi", model.d_vi), ("g", model.generator))}
    terms = model.training_step(_batch(44))
    for key, net in (("d_ir", model.d_ir), ("d_vi", model.d_vi), ("g", model.generator)):
        changed = sum(not torch.equal(x, y) for x, y in zip(before[key], net.parameters(),
                                                             strict=True))
        assert changed == len(before[key]), key  # every tensor of every net moved
    steps = {k: int(next(iter(opt.state.values()))["step"]) for k, opt in model.optimizers.items()}
    assert steps == {"g": 1, "d_ir": 2, "d_vi": 2}  # d_steps = 2 updates of EACH D
    assert set(terms) == {"loss_g", "loss_d", "loss_d_ir", "loss_d_vi", "loss_adv",
                          "loss_adv_ir", "loss_adv_vi", "loss_content", "loss_int",
                          "loss_grad", "loss_att"}
    assert float(terms["loss_d"]) == pytest.approx(float(terms["loss_d_ir"] + terms["loss_d_vi"]))


def _laplacian_by_hand(x: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian with zero padding, on (H, W)."""
    p = np.pad(x, 1)
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * p[1:-1, 1:-1]


def test_content_and_attention_terms_equal_hand_computations():
    model = _model(patch=44, n_scales=2, w_adv=0.5, w_content=10.0, w_grad=3.0, w_att=7.0)
    g = torch.Generator().manual_seed(3)
    fused, ir, vi = (torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
                     for _ in range(3))
    loss_int, loss_grad = model.content_terms(fused, ir, vi)
    f, i, v = fused.numpy()[:, 0], ir.numpy()[:, 0], vi.numpy()[:, 0]
    assert float(loss_int) == pytest.approx(((f - i) ** 2).sum() / 72, rel=1e-12)
    lap = [(_laplacian_by_hand(f[n]) - _laplacian_by_hand(v[n])) ** 2 for n in range(2)]
    assert float(loss_grad) == pytest.approx(sum(x.sum() for x in lap) / 72, rel=1e-12)

    model.double()
    with torch.no_grad():  # the maps each D makes of F and of its own source: (2, 2, 6, 6)
        maps = [d.attention(x).numpy() for d, x in
                ((model.d_ir, fused), (model.d_ir, ir), (model.d_vi, fused), (model.d_vi, vi))]
    hand = ((maps[0] - maps[1]) ** 2).sum() / 144 + ((maps[2] - maps[3]) ** 2).sum() / 144
    with torch.no_grad():
        assert float(model.attention_loss(fused, ir, vi)) == pytest.approx(hand, rel=1e-6)

    fused, ir, vi = (torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
                     for _ in range(3))  # the D trunks need the 32-px label of patch 44
    with torch.no_grad():
        t = model.generator_terms(fused, ir, vi)
    loss_int, loss_grad = model.content_terms(fused, ir, vi)
    assert float(t["loss_content"]) == pytest.approx(float(loss_int + 3.0 * loss_grad))
    assert float(t["loss_g"]) == pytest.approx(float(
        0.5 * (t["loss_adv_ir"] + t["loss_adv_vi"]) + 10.0 * t["loss_content"]
        + 7.0 * t["loss_att"]), rel=1e-6)


def test_attention_loss_trains_g_only():
    model = _model(patch=44)
    fused = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    ir, vi = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    for d in (model.d_ir, model.d_vi):
        d.requires_grad_(False)
    model.attention_loss(fused, ir, vi).backward()
    assert fused.grad is not None and float(fused.grad.abs().sum()) > 0
    assert all(p.grad is None for d in (model.d_ir, model.d_vi) for p in d.parameters())


def test_config_defaults_and_validation():
    c = Config()
    assert (c.adversarial, c.d_norm, c.n_scales, c.patch, c.stride, c.batch_size) == (
        "lsgan", "batch", 4, 132, 14, 32)
    assert Config(adversarial="wgan_gp").d_norm == "layer"
    for bad in ({"patch": 40}, {"n_scales": 0}, {"w_att": -1.0}, {"no_such_knob": 1}):
        with pytest.raises(ValueError):
            Config(**bad)


def _pairs(root, kind: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b): (n, 1, size, size) grey generated pairs in [0, 1]."""
    loaded = [load_pair(p) for p in generated_set(kind, root, n=n, size=size, seed=0).pairs]
    stack = lambda k: torch.stack([torch.from_numpy(p[k][..., 0].astype(np.float32))  # noqa: E731
                                   for p in loaded])[:, None] / 255
    return stack(0), stack(1)


def test_short_training_on_generated_ivif_pairs_improves_val_qabf_and_sf(tmp_path):
    torch.manual_seed(0)
    train_a, train_b = _pairs(tmp_path, "ivif", 4, 96)
    val_a, val_b = _pairs(tmp_path, "ivif:val", 2, 64)
    model = AttentionFGAN(Config(patch=44, lr_g=1e-3, lr_d=1e-3, d_steps=1))

    def scores() -> dict[str, float]:
        fused = model.fuse(val_a, val_b) * 255
        out = compute_metrics(fused, val_a * 255, val_b * 255, ["Qabf", "SF"])
        return {k: float(v.mean()) for k, v in out.items()}

    start = scores()
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        idx = torch.randint(0, 4, (8,), generator=g)
        y, x = (int(v) for v in torch.randint(0, 96 - 44 + 1, (2,), generator=g))
        a, b = (s[idx, :, y : y + 44, x : x + 44] * 2 - 1 for s in (train_a, train_b))
        model.training_step({"a": a, "b": b, "a_label": a[..., 6:-6, 6:-6],
                             "b_label": b[..., 6:-6, 6:-6]})
    end = scores()
    print(f"attentionfgan val Qabf {start['Qabf']:.4f} -> {end['Qabf']:.4f}, "
          f"SF {start['SF']:.3f} -> {end['SF']:.3f} after 12 steps")
    assert end["Qabf"] > start["Qabf"] + 0.07 and end["SF"] > 2 * start["SF"]
