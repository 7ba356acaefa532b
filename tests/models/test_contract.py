"""Contract tests over the model registry (timm style): every registered model, built from its
search_spaces/<model>.yaml, fuses any size, trains, round-trips and rejects unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusion_models import registry
from orchestrator.config import load_spec

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
