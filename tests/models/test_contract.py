"""Contract tests over the model registry (timm style): every registered model, built from its
search_spaces/<model>.yaml, fuses any size, trains, round-trips and rejects unknown keys."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from fusion_models import registry
from orchestrator.common.config import load_spec

REPO = Path(__file__).resolve().parents[2]

MODELS = registry.list_models()


def _params(name: str) -> dict:
    path = REPO / "search_spaces" / f"{name}.yaml"
    assert path.is_file(), f"model {name} has no {path}"
    spec = load_spec(path)
    assert spec.model == name
    return spec.model_params()


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return registry.build(request.param, _params(request.param))


def _batch(model) -> dict[str, torch.Tensor]:
    spec = model.patch_spec()
    g = torch.Generator().manual_seed(1)
    a01 = torch.rand(2, 1, spec.patch, spec.patch, generator=g)
    b01 = torch.rand(2, 1, spec.patch, spec.patch, generator=g)
    o, n = spec.offset, spec.label
    batch = {"a": model.to_input_scale(a01), "b": model.to_input_scale(b01)}
    batch["a_label"] = batch["a"][..., o : o + n, o : o + n]
    batch["b_label"] = batch["b"][..., o : o + n, o : o + n]
    return batch


def test_registry_has_the_founding_models():
    assert set(MODELS) >= {"fusiongan", "ddcgan", "mffgan", "ufgan", "densefuse", "pmgi"}


def test_config_has_the_training_fields(model):
    fields = type(model.config).model_fields
    for key in ("epochs", "batch_size", "patch", "stride"):
        assert key in fields, key


@pytest.mark.parametrize("size", [(37, 53), (64, 48)])
def test_fuse_shape_range_and_determinism(model, size):
    model.eval()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 1, *size, generator=g), torch.rand(2, 1, *size, generator=g)
    out = model.fuse(a, b)
    assert out.shape == (2, 1, *size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, model.fuse(a, b))
    assert not out.requires_grad


def test_training_steps_are_finite_and_update_every_network(model):
    model.train()
    before = {k: [p.detach().clone() for g in opt.param_groups for p in g["params"]]
              for k, opt in model.optimizers.items()}
    assert before, "configure_optimizers returned nothing"
    for _ in range(2):  # models that alternate D and G steps update both within two calls
        terms = model.training_step(_batch(model))
        assert "loss_g" in terms
        for key, value in terms.items():
            assert value.ndim == 0 and not value.requires_grad, key
            assert torch.isfinite(value), key
    for key, opt in model.optimizers.items():
        after = [p for g in opt.param_groups for p in g["params"]]
        changed = sum(not torch.equal(x, y) for x, y in zip(before[key], after, strict=True))
        assert changed > 0, f"optimiser {key!r} changed no parameter: gradients did not reach it"


def test_checkpoint_round_trip(model, tmp_path):
    model.eval()
    path = tmp_path / "ck.pt"
    torch.save(model.checkpoint(epoch=3), path)
    loaded, ckpt = registry.load_checkpoint(path)
    assert ckpt["model"] == model.name and ckpt["epoch"] == 3
    assert type(loaded) is type(model) and loaded.config == model.config
    x = torch.rand(1, 1, 40, 40)
    assert torch.allclose(loaded.fuse(x, 1 - x), model.fuse(x, 1 - x), atol=1e-6)


def test_unknown_parameter_lists_the_valid_keys(model):
    with pytest.raises(KeyError, match="valid keys: .*batch_size"):
        registry.build(model.name, {"no_such_knob": 1})


# -- inference contract: fuse is independent of batching and of the caller's train/eval mode ---
# Config settings that make BN normalise with each image's own statistics at inference (the
# authors' TF test graphs, models.md §0.6); every such switch of every model must be listed here.
PER_IMAGE_BN = {"fusiongan": {"bn_at_test": "batch"}, "ddcgan": {"bn_at_test": "batch"},
                "pmgi": {"bn_eval_stats": "image"}}
CASES = ([(name, {}) for name in MODELS] + list(PER_IMAGE_BN.items())
         + [("ddcgan", {"bn_at_test": "batch", "variant": "multi_resolution"})])
CASE_IDS = [name + "".join(f"-{v}" for v in extra.values()) for name, extra in CASES]


def _fresh(name: str, extra: dict) -> torch.nn.Module:
    """The YAML's model with ``extra``, its BN running statistics set away from (0, 1) so that
    using batch statistics instead of running ones (or the reverse) changes the output."""
    torch.manual_seed(0)
    model = registry.build(name, {**_params(name), **extra})
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
    return model


def _images(n: int = 4, size: tuple[int, int] = (36, 44)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    a = torch.nn.functional.avg_pool2d(torch.rand(n, 1, *size, generator=g), 3, 1, 1)
    return a, (a.flip(-1) + 0.3 * torch.rand(n, 1, *size, generator=g)).clamp(0, 1)


def test_every_per_image_bn_switch_is_covered():
    for name in MODELS:
        for key, field in registry.get_model_class(name).Config.model_fields.items():
            values = set(typing.get_args(field.annotation))
            if key.startswith("bn_") and values & {"batch", "image"}:
                assert key in PER_IMAGE_BN.get(name, {}), f"{name}.{key} not in PER_IMAGE_BN"


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_fuse_of_a_batch_equals_fusing_each_image_alone(name, extra):
    model = _fresh(name, extra).eval()
    a, b = _images()
    together = model.fuse(a, b)
    alone = torch.cat([model.fuse(a[i : i + 1], b[i : i + 1]) for i in range(len(a))])
    diff = float((together - alone).abs().max())
    print(f"{name} {extra}: max |fuse(batch of 4) - fuse(each alone)| = {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_fuse_in_train_mode_equals_eval_and_changes_no_state_or_mode(name, extra):
    model = _fresh(name, extra).eval()
    a, b = _images()
    expected = model.fuse(a, b)
    model.train()
    list(model.modules())[-1].eval()  # a mix of flags must come back as it was, too
    modes = {k: m.training for k, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.fuse(a, b)
    diff = float((out - expected).abs().max())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    flipped = [k for k, m in model.named_modules() if m.training != modes[k]]
    print(f"{name} {extra}: train-vs-eval max diff {diff:.3g}, changed {changed[:4]}, "
          f"flags changed {flipped[:4]}")
    assert diff == 0.0 and not changed and not flipped


def test_a_subclass_overriding_fuse_still_gets_the_contract():
    from fusion_models.models.base import FusionModel

    class Legacy(FusionModel):  # a model written against the old API (its own fuse)
        def __init__(self) -> None:
            super().__init__(None)
            self.bn = torch.nn.BatchNorm2d(1)

        def fuse(self, a, b):
            return self.bn(a), self.training

    model = Legacy().train()
    x = torch.arange(8.0).view(2, 1, 2, 2)
    out, training_inside = model.fuse(x, x)
    print(f"inside fuse: training={training_inside}, running_mean={model.bn.running_mean}")
    assert not training_inside and model.training and not out.requires_grad
    assert torch.equal(model.bn.running_mean, torch.zeros(1))


# -- discriminator normalisation: WGAN-GP critics without batch statistics ----------------------
ADVERSARIAL = [n for n in MODELS
               if "adversarial" in registry.get_model_class(n).Config.model_fields]
# The authors' discriminators: BN layers per model (models.md §1.3, §2.2, §3.2 x 2 Ds, §4.2).
# MFIF-GAN: BN after its 2 channel-doubling and 3 channel-keeping convs (§8, model.py);
# AttentionFGAN (no code): FusionGAN's D trunk, 3 BN, in each of its 2 Ds.
PAPER_D_BATCHNORMS = {"ufgan": 4, "fusiongan": 3, "ddcgan": 2 + 2, "mffgan": 3,
                      "mfifgan": 2 + 3, "attentionfgan": 3 + 3}


def _discriminators(model) -> list[torch.nn.Module]:
    """The top-level submodules trained by the ``d*`` optimisers."""
    d_params = {id(p) for key, opt in model.optimizers.items() if key.startswith("d")
                for group in opt.param_groups for p in group["params"]}
    nets = [m for _, m in model.named_children()
            if any(True for _ in m.parameters()) and all(id(p) in d_params for p in m.parameters())]
    assert nets, f"{model.name}: no discriminator found"
    return nets


def _batchnorms(nets) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for n in nets
               for m in n.modules())


def _critic_grad_norms(d: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ||grad_x D(x)||_2, D in training mode (as in the gradient penalty)."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x)
    return grad.flatten(1).norm(dim=1)


def test_papers_cover_every_adversarial_model():
    assert set(ADVERSARIAL) == set(PAPER_D_BATCHNORMS)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_wgan_gp_critic_has_no_batchnorm_and_per_sample_gradients(name):
    torch.manual_seed(0)
    model = registry.build(name, {**_params(name), "adversarial": "wgan_gp"}).train()
    side = model.patch_spec().label
    x = torch.rand(4, 1, side, side, generator=torch.Generator().manual_seed(5)) * 2 - 1
    worst = 0.0
    for d in _discriminators(model):
        for m in d.modules():  # spectral norm: no power iteration between the compared passes
            if parametrize.is_parametrized(m):
                m.parametrizations.eval()
        together = _critic_grad_norms(d, x)
        alone = torch.cat([_critic_grad_norms(d, x[i : i + 1]) for i in range(len(x))])
        worst = max(worst, float(((together - alone).abs() / alone).max()))
    bns = _batchnorms(_discriminators(model))
    print(f"{name} wgan_gp: {bns} BatchNorm layers in D; per-sample critic grad norm, batch of "
          f"4 vs alone: max relative diff {worst:.3g}")
    assert bns == 0 and worst <= 1e-5


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_lsgan_keeps_the_papers_batchnorm_discriminator_and_old_checkpoints_load(name):
    torch.manual_seed(0)
    model = registry.build(name, {**_params(name), "adversarial": "lsgan"})
    assert _batchnorms(_discriminators(model)) == PAPER_D_BATCHNORMS[name]
    ckpt = model.checkpoint(epoch=1)
    ckpt["params"].pop("d_norm", None)  # a checkpoint written before d_norm existed
    loaded, _ = registry.load_checkpoint(ckpt)
    x = torch.rand(1, 1, 40, 40)
    assert torch.equal(loaded.fuse(x, 1 - x), model.eval().fuse(x, 1 - x))


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_batchnorm_critic_with_wgan_gp_is_rejected_naming_the_field(name):
    with pytest.raises(ValueError, match="d_norm"):
        registry.build(name, {**_params(name), "adversarial": "wgan_gp", "d_norm": "batch"})
