"""The inference path of `orchestrator fuse` (fusion_models.inference): BN folding, channels_last
and bf16 agree with the plain model for every registered model; the CLI options work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fusion_models import registry
from fusion_models.data import default_rule, make_ivif, read_image
from fusion_models.inference import (
    BF16_MEAN_TOL,
    BF16_P99_TOL,
    FOLD_ATOL,
    InferenceOptions,
    cached_inference_model,
    conv_bn_pairs,
    fold_bn_into_conv,
    prepare_for_inference,
)
from orchestrator.cli import main
from orchestrator.deploy.fuse import fuse_set

#: BN layers that must stay: DDcGAN runs ``dec0.conv`` twice, only the second pass has the BN
KEPT = {"ddcgan": {"generator.dec0_bn"}}


def _trained_like(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    """LeCun-normal conv weights, BN affine drawn at random and running statistics set to the
    statistics each BN sees on (a, b): activations stay O(1), as in a trained network, so the
    comparisons below are not swamped by exploding or saturated outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)

    def calibrate(bn: nn.BatchNorm2d, inputs: tuple) -> None:
        x = inputs[0].double()
        bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(x.var(dim=(0, 2, 3)))
        if bn.weight is not None:
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)]
    model.fuse(a, b)
    for h in hooks:
        h.remove()


def _bn_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (x.float() * 255).round()


@pytest.mark.parametrize("name", registry.list_models())
def test_folded_channels_last_and_bf16_agree_with_plain(name):
    """Per model, on 2 x 1 x 40 x 56 pairs (not the 64 x 64 probe): folded fp32 and
    channels_last within FOLD_ATOL = 1e-4 of the plain model (outputs in [0, 1]; measured
    <= 2.5e-5 and <= 4.4e-5 on an AVX-512 Xeon, <= 5.9e-5 and <= 6.2e-5 on an AVX2 EPYC, both
    FusionGAN's), bf16 within the documented grey-level tolerance; every generator BN (bar the
    known shared conv) is folded."""
    torch.manual_seed(0)
    model = registry.build(name).eval()
    gen = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 2, 1, 40, 56, generator=gen)
    _trained_like(model, a, b)
    plain = model.fuse(a, b)
    assert plain.std() > 0.01, "the test network must produce an image, not a constant"

    folded = prepare_for_inference(model, channels_last=False)
    with torch.inference_mode():
        err_fold = (folded.fuse(a, b) - plain).abs().max().item()
        folded = folded.to(memory_format=torch.channels_last)
        err_cl = (folded.fuse(a, b) - plain).abs().max().item()
        folded.amp_dtype = torch.bfloat16
        diff16 = (_grey(folded.fuse(a, b)) - _grey(plain)).abs()
    assert err_fold <= FOLD_ATOL, err_fold
    assert err_cl <= FOLD_ATOL, err_cl
    assert diff16.mean().item() <= BF16_MEAN_TOL, diff16.mean().item()
    assert diff16.flatten().quantile(0.99).item() <= BF16_P99_TOL

    left = _bn_names(folded)
    gen_bns = {n for n in _bn_names(model) if not n.startswith(("discriminator", "d_"))}
    assert left & gen_bns == KEPT.get(name, set()), left
    assert _bn_names(model) >= left  # the original keeps all its BN layers
    assert all(p.grad is None and not p.requires_grad for p in folded.parameters())


class _Residual(nn.Module):
    """conv -> bn, but the conv's output is also added back: must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def _random_bn(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=gen))
    bn.running_var.copy_(torch.rand(n, generator=gen) + 0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(n, generator=gen))
        bn.bias.copy_(torch.randn(n, generator=gen))
    return bn.eval()


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, bias=False), nn.Conv2d(4, 6, 3, groups=2),
                                  nn.ConvTranspose2d(4, 6, 4, 2, 1, bias=False)])
def test_fold_bn_into_conv_is_exact(conv):
    """Conv without bias, grouped conv, transposed conv: bn(conv(x)) == conv'(x) to 1e-5."""
    bn = _random_bn(nn.BatchNorm2d(6), seed=1)
    x = torch.randn(2, 4, 9, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = bn(conv(x))
        fold_bn_into_conv(conv, bn)
        got = conv(x)
    assert conv.bias is not None
    assert want.abs().max() > 0.5
    assert (got - want).abs().max().item() <= 1e-5


def test_conv_output_read_elsewhere_is_not_folded():
    """The trace sees that ``y`` feeds the residual add too; a plain Sequential pair folds."""
    from fusion_models.models.base import FusionModel

    class Two(FusionModel):
        name = "two"

        def __init__(self) -> None:
            super().__init__(None)
            self.res = _Residual()
            self.seq = nn.Sequential(nn.Conv2d(3, 1, 1), nn.BatchNorm2d(1))

        def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.seq(self.res(torch.cat([a, b, a * b], dim=1)))

    model = Two().eval()
    a, b = torch.rand(2, 1, 1, 8, 8)
    pairs, _ = conv_bn_pairs(model, a, b)
    assert [(c, n) for c, n in pairs] == [(model.seq[0], model.seq[1])]


def test_cache_reuses_then_follows_weight_changes():
    """One prepared copy per model and options; an in-place weight update re-prepares it."""
    torch.manual_seed(0)
    model = registry.build("pmgi", {"channels": 4}).eval()
    opts = InferenceOptions()
    first = cached_inference_model(model, opts)
    assert cached_inference_model(model, opts) is first
    assert cached_inference_model(model, InferenceOptions(channels_last=False)) is not first
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    second = cached_inference_model(model, opts)
    assert second is not first
    a, b = torch.rand(2, 1, 1, 24, 24)
    with torch.inference_mode():
        assert (second.fuse(a, b) - model.fuse(a, b)).abs().max().item() <= 2e-5


@pytest.fixture(scope="module")
def ckpt_and_pairs(tmp_path_factory):
    """A PMGI checkpoint (BN after its convs) with trained-like statistics, 3 pairs 48 x 48."""
    root = tmp_path_factory.mktemp("inference")
    pairs = make_ivif(root / "set", n=3, size=48, seed=7)
    torch.manual_seed(0)
    model = registry.build("pmgi", {"channels": 8}).eval()
    a, b = torch.rand(2, 2, 1, 48, 48, generator=torch.Generator().manual_seed(4))
    _trained_like(model, a, b)
    path = root / "pmgi.pt"
    torch.save(model.checkpoint(1), path)
    return path, pairs, model


def _fused(folder) -> dict[str, np.ndarray]:
    return {p.stem: read_image(p).astype(np.int16) for p in sorted(folder.glob("*.png"))}


def test_fuse_cli_default_and_bf16_match_plain(ckpt_and_pairs, tmp_path):
    """`orchestrator fuse` (folded, channels_last, 2 + 1 batches) writes the plain model's
    PNGs to within one grey level; ``--precision bf16`` within the bf16 tolerance."""
    ckpt, pairs, model = ckpt_and_pairs
    fuse_set(model, pairs, tmp_path / "plain", default_rule(pairs.task), inference=None)
    runs = {"fp32": [], "bf16": ["--precision", "bf16"]}
    for tag, extra in runs.items():
        res = CliRunner().invoke(main, ["fuse", str(ckpt), "--data", str(pairs.root), "--out",
                                        str(tmp_path / tag), "--device", "cpu", "--quiet",
                                        "--batch-size", "2", *extra])
        assert res.exit_code == 0, res.output
    pair = pairs.pairs[0]
    res = CliRunner().invoke(main, ["fuse", str(ckpt), "--a", str(pair.path_a), "--b",
                                    str(pair.path_b), "-o", str(tmp_path / "one" / "000.png"),
                                    "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    plain, fp32, bf16 = (_fused(tmp_path / t) for t in ("plain", "fp32", "bf16"))
    assert np.abs(_fused(tmp_path / "one")["000"] - plain["000"]).max() <= 1
    assert sorted(plain) == sorted(fp32) == sorted(bf16) == ["000", "001", "002"]
    assert np.ptp(np.stack(list(plain.values()))) > 20, "an image, not a constant"
    for stem, img in plain.items():
        assert np.abs(fp32[stem] - img).max() <= 1
        assert np.abs(bf16[stem] - img).mean() <= BF16_MEAN_TOL
        assert np.quantile(np.abs(bf16[stem] - img), 0.99) <= BF16_P99_TOL


@pytest.mark.slow
def test_fuse_cli_compile(ckpt_and_pairs, tmp_path):
    """``--compile`` (inductor, frozen weights) gives the eager path's PNGs to one grey level."""
    ckpt, pairs, model = ckpt_and_pairs
    fuse_set(model, pairs, tmp_path / "plain", default_rule(pairs.task), inference=None)
    res = CliRunner().invoke(main, ["fuse", str(ckpt), "--data", str(pairs.root), "--out",
                                    str(tmp_path / "compiled"), "--device", "cpu", "--quiet",
                                    "--compile"])
    assert res.exit_code == 0, res.output
    plain, compiled = _fused(tmp_path / "plain"), _fused(tmp_path / "compiled")
    assert sorted(compiled) == sorted(plain)
    for stem, img in plain.items():
        assert np.abs(compiled[stem] - img).max() <= 1


@pytest.mark.slow
def test_cuda_graph_replay_keeps_every_output():
    """The CUDA path of ``--compile`` (inductor with ``triton.cudagraphs``, replay wrapper:
    step marked, output copied out of the graph's pool), run here on the CPU, where inductor
    skips the capture: each call's result is its own tensor, still right after later calls."""
    from fusion_models.inference import _compiled

    def fuse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.maximum(a, b) * 0.5 + torch.minimum(a, b) * 0.25

    fast = _compiled(fuse, cuda_graphs=True)
    gen = torch.Generator().manual_seed(3)
    inputs = [(torch.rand(2, 1, 24, 32, generator=gen), torch.rand(2, 1, 24, 32, generator=gen))
              for _ in range(3)]
    with torch.inference_mode():
        outs = [fast(a, b) for a, b in inputs]
        for out, (a, b) in zip(outs, inputs, strict=True):
            torch.testing.assert_close(out, fuse(a, b))
    assert len({o.data_ptr() for o in outs}) == 3
