"""Import an authors' TF1 tensor bundle into one of our models and a self-describing checkpoint.

``import_bundle(src, "pmgi", {"task": "ivif", ...})`` reads the bundle with the project's own
reader (:mod:`~fusion_models.pretrained.tf_bundle`, no TensorFlow), checks that the bundle's
variables and the model's ``state_dict`` match one to one through the model's mapping
(:mod:`~fusion_models.pretrained.released`), converts layouts and loads them. Any mismatch
raises :class:`ImportMismatch` listing every offending name: a variable with no place in our
model, a parameter or BN statistic the bundle does not fill, or a shape that disagrees.

The checkpoint it returns is our usual one (``model``, ``params``, ``state_dict``, ``epoch``;
loads with ``torch.load(weights_only=True)``) plus ``source``: the bundle's file names and
sha256 digests, the release name, provenance and the TF variable -> parameter table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fusion_models.data.patches import sha256_file
from fusion_models.models.base import FusionModel
from fusion_models.pretrained.released import CATALOGUE, Released, mffgan_map, pmgi_map
from fusion_models.pretrained.tf_bundle import bundle_prefix, read_bundle
from fusion_models.registry import build

log = logging.getLogger(__name__)

#: model name -> its TF variable map, given the built model (the map may depend on its Config)
TF_MAPS: dict[str, Callable[[FusionModel], dict[str, tuple[str, str]]]] = {
    "mffgan": lambda model: mffgan_map(8 * model.config.d_channels),
    "pmgi": lambda model: pmgi_map(model.config.batch_norm),
}


class ImportMismatch(ValueError):
    """The bundle and our model do not correspond one to one (names listed in the message)."""


def _convert(kind: str, arr: np.ndarray) -> np.ndarray:
    """One TF array in our layout (see :mod:`~fusion_models.pretrained.released`); a shape
    that does not fit the conversion is returned as is (the shape check then reports it)."""
    if kind == "conv" and arr.ndim == 4:
        return arr.transpose(3, 2, 0, 1)
    if kind.startswith("linear_nhwc:") and arr.ndim == 2:
        channels = int(kind.partition(":")[2])
        side = int(round((arr.shape[0] // channels) ** 0.5))
        if side * side * channels == arr.shape[0]:
            rows = arr.reshape(side, side, channels, arr.shape[1])  # (h, w, c, out)
            return rows.transpose(3, 2, 0, 1).reshape(arr.shape[1], -1)  # (out, c*h*w)
    return arr


def _filled_keys(model: FusionModel) -> set[str]:
    """Every parameter and BN running statistic (``num_batches_tracked`` is a step counter,
    not a weight: left at 0)."""
    return {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}


def match_names(tensors: dict[str, np.ndarray], model: FusionModel,
                mapping: dict[str, tuple[str, str]], where: str) -> dict[str, torch.Tensor]:
    """The state-dict entries for ``tensors`` through ``mapping`` (TF name -> (state key,
    kind)); :class:`ImportMismatch` listing every unplaced variable, unfilled parameter and
    shape disagreement."""
    state = model.state_dict()
    problems = []
    extra = sorted(set(tensors) - set(mapping))
    if extra:
        problems.append(f"variables with no place in our {model.name}: {extra}")
    missing = sorted(set(mapping) - set(tensors))
    if missing:
        problems.append(f"variables our {model.name} needs that the bundle lacks: {missing}")
    unfilled = sorted(_filled_keys(model) - {t for t, _ in mapping.values()})
    if unfilled:
        problems.append(f"parameters no variable fills: {unfilled}")
    out = {}
    for name in sorted(set(tensors) & set(mapping)):
        key, kind = mapping[name]
        arr = _convert(kind, tensors[name])
        if tuple(arr.shape) != tuple(state[key].shape):
            problems.append(f"{name} {tuple(tensors[name].shape)} -> {key}: expected "
                            f"{tuple(state[key].shape)} ({kind})")
            continue
        out[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(state[key].dtype)
    if problems:
        raise ImportMismatch(f"{where}: bundle does not match model {model.name!r}:\n  "
                             + "\n  ".join(problems))
    return out


def import_bundle(src: str | Path, model_name: str, params: dict[str, object] | None = None,
                  epoch: int = 0, release: str | None = None) -> tuple[FusionModel, dict]:
    """Build ``model_name`` with ``params`` and load the bundle at ``src`` into it.

    Args:
        src: bundle prefix, its ``.index`` file or a folder holding one bundle.
        model_name: ``mffgan`` or ``pmgi`` (the models with a TF map).
        params: Config fields (e.g. ``{"task": "ivif", "bn_eval_stats": "image_fresh"}``).
        epoch: stored as the checkpoint's ``epoch``.
        release: catalogue name (``pmgi/ir_vi``) recorded in ``source``.

    Returns:
        ``(model in eval mode, checkpoint dict)``.

    Raises:
        TFBundleError: unreadable bundle. ImportMismatch: names/shapes do not correspond.
        KeyError: a model with no TF map.
    """
    if model_name not in TF_MAPS:
        raise KeyError(f"no TF import for model {model_name!r}; importable: {sorted(TF_MAPS)}")
    prefix = bundle_prefix(src)
    tensors = read_bundle(prefix)
    model = build(model_name, dict(params or {}))
    mapping = TF_MAPS[model_name](model)
    loaded = match_names(tensors, model, mapping, str(prefix))
    model.load_state_dict(loaded, strict=False)
    files = sorted(prefix.parent.glob(prefix.name + ".*"))
    files = [f for f in files if f.name.endswith(".index") or ".data-" in f.name]
    ckpt = model.checkpoint(epoch)
    del ckpt["optimizers"]  # the authors' optimiser state is not in the bundle
    entry = CATALOGUE.get(release) if release else None
    ckpt["source"] = {
        "format": "tensorflow-bundle", "release": release or "",
        "provenance": entry.source if entry else "",
        "files": {f.name: sha256_file(f) for f in files},
        "variables": {name: mapping[name][0] for name in sorted(tensors)},
    }
    log.info("imported %d variables from %s into %s", len(tensors), prefix, model_name)
    return model.eval(), ckpt


def import_release(weights_dir: str | Path, name: str, params: dict[str, object] | None = None
                   ) -> tuple[FusionModel, dict]:
    """Import catalogue entry ``name`` (``pmgi/ir_vi``) from a folder laid out like the
    authors' release (``<weights_dir>/<folder>/<prefix>.index``, see ``../shared/weights``);
    ``params`` replace catalogue Config fields (``{"output_stretch": False}``: the raw
    generator output instead of the published stretch)."""
    if name not in CATALOGUE:
        raise KeyError(f"unknown released checkpoint {name!r}; known: {sorted(CATALOGUE)}")
    entry: Released = CATALOGUE[name]
    src = Path(weights_dir) / entry.folder / entry.prefix
    return import_bundle(src, entry.model, {**entry.params, **(params or {})}, entry.epoch, name)
