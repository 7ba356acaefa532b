"""The authors' released TF1 checkpoints we know, and where each TF variable goes in our models.

Each mapping is the port's faithfulness statement: every variable of the authors' bundle has
exactly one place in our model's ``state_dict`` (and every parameter and BN statistic is
filled), or the import fails listing the names (:mod:`fusion_models.pretrained.tf_import`).

Layout conversions (``kind``):
- ``conv``: TF ``HWIO`` kernel -> PyTorch ``OIHW`` (``transpose(3, 2, 0, 1)``).
- ``vector``: biases, BN ``gamma``/``beta``/``moving_mean``/``moving_variance`` as they are
  (TF ``batch_norm(decay=0.9)`` = PyTorch ``momentum=0.1``, models.md §0.7).
- ``linear_nhwc:<C>``: MFF-GAN's D flattens its (B, H, W, C) map in NHWC order into a
  ``(H*W*C, 1)`` matmul; our D flattens NCHW into ``nn.Linear`` (weight ``(1, C*H*W)``), so
  the rows are permuted from (h, w, c) to (c, h, w) order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: "conv", "vector" or "linear_nhwc:<channels>"
Kind = str

#: our TwoPathGenerator module -> the authors' TF scope stem (MFF-GAN model.py, PMGI model.py)
_G_LAYERS = {"conv1": "1", "conv2": "2", "exchange2": "2_3", "conv3": "3", "exchange3": "3_4",
             "conv4": "4"}
_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}


@dataclass(frozen=True)
class Released:
    """One released checkpoint: our model name and Config params that reproduce the authors'
    network and test graph, the bundle's folder in the release layout (``../shared/weights``:
    ``<folder>/<file prefix>``), the file prefix, the authors' epoch (1-based: their
    ``CGAN.model-N`` is saved after epoch N+1) and the provenance."""

    model: str
    params: dict[str, object]
    folder: str
    prefix: str
    epoch: int
    source: str
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)


_MFF = "HaoZhang1018/MFF-GAN@2f674c8aa006"
_PMGI = "HaoZhang1018/PMGI_AAAI2020@61a85e49a306"
#: the authors' published images: their test scripts saved with scipy.misc.imsave, which
#: min-max stretched every image (models.md §0.5)
_AS_PUBLISHED = {"output_stretch": True}
#: PMGI's test_one_image.py builds fresh BN layers (gamma 1, beta 0, each image's statistics)
_PMGI_TEST = {"bn_eval_stats": "image_fresh", **_AS_PUBLISHED}

#: ``pretrained:<name>`` -> what it is; ``name`` is also the imported file's path below the
#: pretrained folder (``<name>.pt``). The pansharpening variants keep the raw output: the
#: authors' pipeline histogram-matches it afterwards (Pan_shapening/note.txt).
CATALOGUE: dict[str, Released] = {
    "mffgan/lytro": Released("mffgan", _AS_PUBLISHED, "mffgan/lytro", "CGAN.model-19", 20,
                             f"{_MFF}:checkpoint/Lytro_model/CGAN.model-19"),
    "mffgan/mfi-whu": Released("mffgan", _AS_PUBLISHED,
                               "mffgan/mfi-whu", "CGAN.model-19", 20,
                               f"{_MFF}:checkpoint/MFI-WHU_model/CGAN.model-19"),
    "pmgi/ir_vi": Released("pmgi", {"task": "ivif", **_PMGI_TEST}, "pmgi/ir_vi",
                           "CGAN.model-1", 2, f"{_PMGI}:Code_PMGI/IR_VI/checkpoint/CGAN_120"),
    "pmgi/medical": Released("pmgi", {"task": "medical", **_PMGI_TEST}, "pmgi/medical",
                             "CGAN.model-29", 30,
                             f"{_PMGI}:Code_PMGI/Medical/checkpoint/CGAN_120"),
    "pmgi/multi_exposure": Released("pmgi", {"task": "mef", **_PMGI_TEST},
                                    "pmgi/multi_exposure", "CGAN.model-9", 10,
                                    f"{_PMGI}:Code_PMGI/Multi-exp/checkpoint/CGAN_120"),
    "pmgi/multi_focus": Released("pmgi", {"task": "mff", **_PMGI_TEST}, "pmgi/multi_focus",
                                 "CGAN.model-1", 2,
                                 f"{_PMGI}:Code_PMGI/Multi-focus/checkpoint/CGAN_60"),
    "pmgi/pansharpening_1": Released("pmgi", {"task": "pan"}, "pmgi/pansharpening_1",
                                     "CGAN.model-9", 10,
                                     f"{_PMGI}:Code_PMGI/Pan_shapening/1/checkpoint/CGAN_80"),
    "pmgi/pansharpening_2": Released("pmgi", {"task": "pan"}, "pmgi/pansharpening_2",
                                     "CGAN.model-9", 10,
                                     f"{_PMGI}:Code_PMGI/Pan_shapening/2/checkpoint/CGAN_80"),
}


def _two_path(sfx_a: str, sfx_b: str, batch_norm: bool) -> dict[str, tuple[str, Kind]]:
    """TwoPathGenerator: path 0 has no suffix in TF, path 1 has ``sfx_b`` (``_far``/``_vi``)."""
    out: dict[str, tuple[str, Kind]] = {}
    for module, stem in _G_LAYERS.items():
        for path, sfx in enumerate((sfx_a, sfx_b)):
            scope = f"fusion_model/layer{stem}{sfx}"
            ours = f"generator.{module}.{path}"
            out[f"{scope}/w{stem}{sfx}"] = (f"{ours}.0.weight", "conv")
            out[f"{scope}/b{stem}{sfx}"] = (f"{ours}.0.bias", "vector")
            if batch_norm:
                for tf_name, torch_name in _BN_NAMES.items():
                    out[f"{scope}/BatchNorm/{tf_name}"] = (f"{ours}.1.{torch_name}", "vector")
    out["fusion_model/layer5/w5"] = ("generator.out.weight", "conv")
    out["fusion_model/layer5/b5"] = ("generator.out.bias", "vector")
    return out


def mffgan_map(d_out_channels: int = 256) -> dict[str, tuple[str, Kind]]:
    """MFF-GAN (models.md §4): G (near = path 0, far = ``_far``) and the gradient D whose last
    conv has ``d_out_channels`` maps (8 x ``d_channels``).

    D's ``nn.Sequential``: conv at 0, 2, 5, 8; BN at 3, 6, 9 (after convs 2-4); linear."""
    out = _two_path("", "_far", batch_norm=False)
    convs, norms = (0, 2, 5, 8), {2: 3, 3: 6, 4: 9}
    for i, seq in enumerate(convs, start=1):
        scope = f"discriminator/layer_{i}"
        out[f"{scope}/w_{i}"] = (f"discriminator.features.{seq}.weight", "conv")
        out[f"{scope}/b_{i}"] = (f"discriminator.features.{seq}.bias", "vector")
        if i in norms:
            for tf_name, torch_name in _BN_NAMES.items():
                out[f"{scope}/BatchNorm/{tf_name}"] = (
                    f"discriminator.features.{norms[i]}.{torch_name}", "vector")
    out["discriminator/line_5/w_5"] = ("discriminator.linear.weight",
                                           f"linear_nhwc:{d_out_channels}")
    out["discriminator/line_5/b_5"] = ("discriminator.linear.bias", "vector")
    return out


def pmgi_map(batch_norm: bool) -> dict[str, tuple[str, Kind]]:
    """PMGI (models.md §5): "ir" input = path 0, "vi" input = ``_vi``; BN unless the authors'
    pansharpening variant (no BN layers at all)."""
    return _two_path("", "_vi", batch_norm=batch_norm)
