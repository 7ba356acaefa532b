"""The TF tensor-bundle reader/writer and the import of the authors' released checkpoints.

Synthetic bundles are written by the tests themselves (our writer; that TensorFlow reads them
is checked by benchmarks/authors_reference); the released bundles come from ../shared/weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusion_models.pretrained.released import CATALOGUE, mffgan_map, pmgi_map
from fusion_models.pretrained.tf_bundle import TFBundleError, read_bundle, write_bundle
from fusion_models.pretrained.tf_import import ImportMismatch, import_bundle, import_release
from fusion_models.registry import build, load_checkpoint
from orchestrator.cli import main


def _to_tf(model, mapping: dict[str, tuple[str, str]]) -> dict[str, np.ndarray]:
    """Our state_dict in the authors' TF layout (the inverse of the import's conversions)."""
    state = model.state_dict()
    out = {}
    for tf_name, (key, kind) in mapping.items():
        arr = state[key].numpy()
        if kind == "conv":
            arr = arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif kind.startswith("linear_nhwc:"):
            c = int(kind.partition(":")[2])
            side = int(round((arr.shape[1] // c) ** 0.5))
            arr = arr.reshape(arr.shape[0], c, side, side).transpose(2, 3, 1, 0).reshape(-1, 1)
        out[tf_name] = np.ascontiguousarray(arr)
    return out


def _randomised(name: str, params: dict, seed: int = 0):
    """A model whose every parameter and BN statistic is random (nothing left at its init)."""
    torch.manual_seed(seed)
    model = build(name, params)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in key else
                        torch.randn_like(t) * 0.1)
    return model


# -- the bundle format ------------------------------------------------------------------------
def test_bundle_round_trip_keeps_names_dtypes_shapes_values(tmp_path):
    tensors = {"a/w": np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32),
               "a/b": np.arange(4, dtype=np.float32), "global_step": np.array(7, dtype=np.int64),
               "flag": np.array([True, False]), "d": np.linspace(0, 1, 5)}
    write_bundle(tmp_path / "m", tensors)
    back = read_bundle(tmp_path / "m")
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    # the prefix, its .index file and the folder all name the same bundle
    assert sorted(read_bundle(tmp_path / "m.index")) == sorted(read_bundle(tmp_path))


def test_every_released_bundle_reads_with_its_crc_checked(shared_dir):
    sizes = {}
    for name, entry in CATALOGUE.items():
        tensors = read_bundle(shared_dir / "weights" / entry.folder / entry.prefix)
        sizes[name] = (len(tensors), sum(v.size for v in tensors.values()))
    # G + D for MFF-GAN (430,690 floats = its 1,722,760-byte data file / 4), G with BN for PMGI,
    # G without BN for the pansharpening variants
    assert sizes["mffgan/lytro"] == (48, 430_690)
    assert sizes["pmgi/ir_vi"] == (74, 42_401)
    assert sizes["pmgi/pansharpening_1"] == (26, 41_633)


@pytest.mark.parametrize("damage, message", [
    ("index_byte", "CRC32C"), ("index_truncated", "too short"), ("index_magic", "magic"),
    ("data_missing", "data file missing"), ("data_byte", "fails its CRC32C"),
    ("data_short", "expected"),
])
def test_a_damaged_bundle_is_one_clear_error_naming_the_file(tmp_path, damage, message):
    write_bundle(tmp_path / "m", {"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float32)})
    index, data = tmp_path / "m.index", tmp_path / "m.data-00000-of-00001"
    raw = bytearray(index.read_bytes())
    if damage == "index_byte":
        raw[3] ^= 0xFF
        index.write_bytes(bytes(raw))
    elif damage == "index_truncated":
        index.write_bytes(bytes(raw[:20]))
    elif damage == "index_magic":
        raw[-1] ^= 0xFF
        index.write_bytes(bytes(raw))
    elif damage == "data_missing":
        data.unlink()
    elif damage == "data_byte":
        blob = bytearray(data.read_bytes())
        blob[5] ^= 0x01
        data.write_bytes(bytes(blob))
    else:
        data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(TFBundleError, match=message) as err:
        read_bundle(tmp_path / "m")
    assert "m" in str(err.value) and str(tmp_path) in str(err.value)


def test_a_folder_with_two_bundles_or_none_is_refused(tmp_path):
    with pytest.raises(TFBundleError, match="found 0"):
        read_bundle(tmp_path)
    write_bundle(tmp_path / "a", {"x": np.zeros(1, np.float32)})
    write_bundle(tmp_path / "b", {"x": np.zeros(1, np.float32)})
    with pytest.raises(TFBundleError, match=r"found 2 \['a.index', 'b.index'\]"):
        read_bundle(tmp_path)


# -- layout conversions -----------------------------------------------------------------------
@pytest.mark.parametrize("name, params, mapping", [
    ("pmgi", {"task": "ivif"}, pmgi_map(True)),
    ("pmgi", {"task": "pan"}, pmgi_map(False)),
    ("mffgan", {}, mffgan_map(256)),
])
def test_import_restores_every_weight_and_bn_statistic(tmp_path, name, params, mapping):
    source = _randomised(name, params)
    write_bundle(tmp_path / "m", _to_tf(source, mapping))
    model, ckpt = import_bundle(tmp_path / "m", name, params)
    want, got = source.state_dict(), model.state_dict()
    filled = [k for k in want if not k.endswith("num_batches_tracked")]
    assert len(filled) == len(mapping)
    for key in filled:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)
    assert ckpt["source"]["files"].keys() == {"m.index", "m.data-00000-of-00001"}
    assert all(len(d) == 64 for d in ckpt["source"]["files"].values())


def test_nhwc_flatten_of_the_mffgan_discriminator_is_permuted(tmp_path):
    """The authors' D: NHWC feature map -> reshape(B, -1) -> matmul(W (H*W*C, 1)). Our D must
    give the same score with the imported weight (computed here independently)."""
    source = _randomised("mffgan", {}, seed=3)
    tensors = _to_tf(source, mffgan_map(256))
    w_tf = np.random.default_rng(1).normal(size=(1024, 1)).astype(np.float32)
    tensors["discriminator/line_5/w_5"] = w_tf
    write_bundle(tmp_path / "m", tensors)
    model, _ = import_bundle(tmp_path / "m", "mffgan", {})
    d = model.discriminator.eval()
    x = torch.rand(2, 1, 60, 60)
    with torch.no_grad():
        feats = d.features(x)  # (2, 256, 2, 2)
        nhwc = feats.permute(0, 2, 3, 1).reshape(2, -1).numpy()
        expected = nhwc @ w_tf + tensors["discriminator/line_5/b_5"]
        torch.testing.assert_close(d(x), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)


def test_conv_kernels_are_transposed_not_reshaped(tmp_path):
    """A TF HWIO kernel with one non-zero tap lands on the same (out, in, row, col) tap."""
    source = _randomised("pmgi", {"task": "pan"})
    tensors = _to_tf(source, pmgi_map(False))
    kernel = np.zeros((5, 5, 3, 16), np.float32)
    kernel[1, 4, 2, 7] = 1.0  # row 1, col 4, input channel 2, output channel 7
    tensors["fusion_model/layer1/w1"] = kernel
    write_bundle(tmp_path / "m", tensors)
    model, _ = import_bundle(tmp_path / "m", "pmgi", {"task": "pan"})
    w = model.generator.conv1[0][0].weight
    assert w[7, 2, 1, 4] == 1.0 and float(w.abs().sum()) == 1.0


# -- mismatches -------------------------------------------------------------------------------
def test_a_wrong_model_bundle_lists_the_names(shared_dir):
    with pytest.raises(ImportMismatch) as err:
        import_bundle(shared_dir / "weights" / "pmgi" / "ir_vi", "mffgan", {})
    text = str(err.value)
    assert "variables with no place in our mffgan" in text and "layer1_vi/w1_vi" in text
    assert "the bundle lacks" in text and "discriminator/line_5/w_5" in text


def test_extra_missing_and_misshapen_variables_are_all_listed(tmp_path):
    source = _randomised("pmgi", {"task": "pan"})
    tensors = _to_tf(source, pmgi_map(False))
    tensors["fusion_model/layer1/w1/Adam"] = np.zeros(3, np.float32)  # an optimiser slot
    del tensors["fusion_model/layer5/b5"]
    tensors["fusion_model/layer2/w2"] = np.zeros((3, 3, 16, 8), np.float32)
    write_bundle(tmp_path / "m", tensors)
    with pytest.raises(ImportMismatch) as err:
        import_bundle(tmp_path / "m", "pmgi", {"task": "pan"})
    text = str(err.value)
    assert "['fusion_model/layer1/w1/Adam']" in text
    assert "lacks: ['fusion_model/layer5/b5']" in text
    assert "parameters no variable fills" not in text  # b5 is missing from the bundle instead
    assert "fusion_model/layer2/w2 (3, 3, 16, 8) -> generator.conv2.0.0.weight" in text
    # a BN model cannot take the BN-free bundle: every BN variable is missing
    with pytest.raises(ImportMismatch, match="BatchNorm/gamma"):
        import_bundle(tmp_path / "m", "pmgi", {"task": "ivif"})


# -- the released checkpoints -----------------------------------------------------------------
def test_released_checkpoints_import_and_save_self_describing(tmp_path, shared_dir):
    model, ckpt = import_release(shared_dir / "weights", "pmgi/ir_vi")
    assert ckpt["params"]["bn_eval_stats"] == "image_fresh" and ckpt["epoch"] == 2
    assert ckpt["source"]["files"]["CGAN.model-1.index"].startswith("043868b3410d2373")
    torch.save(ckpt, tmp_path / "x.pt")
    again, _ = load_checkpoint(tmp_path / "x.pt")  # torch.load(weights_only=True)
    a, b = torch.rand(1, 1, 40, 48), torch.rand(1, 1, 40, 48)
    torch.testing.assert_close(again.fuse(a, b), model.fuse(a, b))


def test_fresh_bn_ignores_the_trained_affine_and_stretch_spans_0_1(shared_dir):
    model, _ = import_release(shared_dir / "weights", "pmgi/ir_vi")
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = model.fuse(a, b)
    assert torch.allclose(out.amin(dim=(1, 2, 3)), torch.zeros(2))
    assert torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(2))
    before = model.fuse(a, b)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.mul_(3.0)
                m.bias.add_(1.0)
    torch.testing.assert_close(model.fuse(a, b), before)  # image_fresh: affine not used
    # one image alone or in a batch: the same (each image's own statistics)
    torch.testing.assert_close(model.fuse(a[:1], b[:1]), before[:1])


# -- the command line and pretrained: references ----------------------------------------------
def test_import_weights_cli_and_pretrained_refs(tmp_path, shared_dir, monkeypatch):
    monkeypatch.setenv("FUSION_PRETRAINED_DIR", str(tmp_path / "pre"))
    runner = CliRunner()
    missing = runner.invoke(main, ["fuse", "pretrained:pmgi/ir_vi", "--a", str(tmp_path),
                                   "--b", str(tmp_path), "-o", str(tmp_path / "f.png")])
    assert missing.exit_code != 0
    res = runner.invoke(main, ["import-weights", str(shared_dir / "weights"), "--all"])
    assert res.exit_code == 0, res.output
    assert res.output.count("sha256") == len(CATALOGUE)
    pt = tmp_path / "pre" / "pmgi" / "ir_vi.pt"
    assert pt.is_file() and (tmp_path / "pre" / "pmgi" / "ir_vi.pt.sha256").is_file()
    bad = runner.invoke(main, ["eval", "--data", "generated:ivif:test", "--reference",
                               "pretrained:pmgi/ir_v", "--quiet"])
    assert bad.exit_code != 0 and "known: pretrained:mffgan/lytro" in bad.output
    # a changed file is refused by its sha256
    blob = bytearray(pt.read_bytes())
    blob[-3] ^= 0x01
    pt.write_bytes(bytes(blob))
    res = runner.invoke(main, ["eval", "--data", "generated:ivif:test", "--reference",
                               "pretrained:pmgi/ir_vi", "--quiet"])
    assert res.exit_code != 0 and "sha256 mismatch" in res.output


def test_import_weights_cli_errors(tmp_path, shared_dir):
    runner = CliRunner()
    res = runner.invoke(main, ["import-weights", str(shared_dir / "weights" / "pmgi" / "ir_vi"),
                               "--model", "mffgan", "--out", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "bundle does not match model 'mffgan'" in res.output
    assert not (tmp_path / "x.pt").exists()
    res = runner.invoke(main, ["import-weights", str(tmp_path), "--release", "pmgi/ir_vi"])
    assert res.exit_code != 0 and "expected one '<prefix>.index'" in res.output
    res = runner.invoke(main, ["import-weights", str(shared_dir / "weights" / "pmgi" / "ir_vi"),
                               "--release", "pmgi/nope"])
    assert res.exit_code != 0 and "unknown release 'pmgi/nope'" in res.output
