"""VGG19 features (fusion_models/models/vgg.py): torchvision layout, loader, preprocessing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fusion_models.models.vgg import (
    CONTENT_LAYERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    STYLE_LAYERS,
    VGG19Features,
    load_vgg19_features,
)

CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
POOL_INDICES = (4, 9, 18, 27, 36)


@pytest.fixture(scope="module")
def full_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A random full-size VGG19 state dict in torchvision format, saved once."""
    torch.manual_seed(0)
    net = VGG19Features(frozen=False)
    state = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    state["classifier.0.weight"] = torch.randn(4, 4)  # stands in for the ignored classifier
    state["classifier.0.bias"] = torch.randn(4)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbdd8bf.pth"
    torch.save(state, path)
    return path, state


def test_layer_order_and_keys_match_torchvision_vgg19():
    net = VGG19Features()
    assert len(net.features) == 37
    keys = [f"{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")]
    assert list(net.features.state_dict()) == keys
    assert list(net.state_dict()) == [f"features.{k}" for k in keys]  # mean/std not saved
    assert all(isinstance(net.features[i], nn.MaxPool2d) for i in POOL_INDICES)
    assert net.features[0].weight.shape == (64, 3, 3, 3)
    assert net.features[25].weight.shape == (512, 512, 3, 3)  # conv4_4, the content layer
    assert net.features[28].weight.shape == (512, 512, 3, 3)  # conv5_1
    assert set(STYLE_LAYERS) | set(CONTENT_LAYERS) <= set(CONV_INDICES)


def test_loads_torchvision_state_dict_from_path_frozen(full_state):
    path, state = full_state
    net = load_vgg19_features(str(path))
    for k, v in net.features.state_dict().items():
        assert torch.equal(v, state[f"features.{k}"])
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_none_reads_the_torch_hub_cache(full_state, tmp_path, monkeypatch):
    path, state = full_state
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / path.name).symlink_to(path)
    net = load_vgg19_features(None)
    assert torch.equal(net.features[34].bias, state["features.34.bias"])


def test_missing_weights_one_error_naming_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as exc:
        load_vgg19_features(None)
    msg = str(exc.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-*.pth") in msg
    assert "vgg19-dcbdd8bf.pth" in msg and "transfer" in msg
    missing = tmp_path / "nowhere" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_vgg19_features(str(missing))


def test_wrong_file_is_a_value_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG19"):
        load_vgg19_features(str(path))


def test_preprocess_grey_pm1_to_imagenet_normalised_rgb():
    net = VGG19Features(width_divisor=16)
    x = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2)
    y = net.preprocess(x)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert y.shape == (1, 3, 1, 2)
    torch.testing.assert_close(y[0, :, 0, 0], (0 - mean) / std)
    torch.testing.assert_close(y[0, :, 0, 1], (1 - mean) / std)


def test_pre_relu_activations_and_gradients_reach_the_input_only():
    torch.manual_seed(0)
    net = VGG19Features(width_divisor=16)  # same code path, tiny random weights
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    out = net(x, [25, 0])
    assert set(out) == {0, 25}
    assert out[25].shape == (2, 512 // 16, 4, 4)
    torch.testing.assert_close(out[0], net.features[0](net.preprocess(x)))
    assert (out[0] < 0).any()  # taken before the ReLU
    out[25].square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError):
        net(x, [37])
