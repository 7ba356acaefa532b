"""Model registry: name -> class, as data (one line per model; timm-style surface).

``build(name, params)`` validates ``params`` against the model's pydantic Config
(``extra="forbid"``): an unknown key raises ``KeyError`` listing the valid keys.
``load_checkpoint(path)`` first checks the file against its ``<path>.sha256`` sidecar (written
with every checkpoint the orchestrator saves) when there is one.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from pydantic import ValidationError

from fusion_models.data.store_files import digest_file
from fusion_models.models.attentionfgan import AttentionFGAN
from fusion_models.models.base import FusionModel
from fusion_models.models.cnncp import CNNCP
from fusion_models.models.ddcgan import DDcGAN
from fusion_models.models.densefuse import DenseFuse
from fusion_models.models.fusiongan import FusionGAN
from fusion_models.models.mffgan import MFFGAN
from fusion_models.models.mfifgan import MFIFGAN
from fusion_models.models.pmgi import PMGI
from fusion_models.models.tardal import TarDAL
from fusion_models.models.ufgan import UFGAN

MODELS: dict[str, type[FusionModel]] = {
    "fusiongan": FusionGAN,
    "ddcgan": DDcGAN,
    "mffgan": MFFGAN,
    "mfifgan": MFIFGAN,
    "ufgan": UFGAN,
    "densefuse": DenseFuse,
    "pmgi": PMGI,
    "tardal": TarDAL,
    "cnncp": CNNCP,
    "attentionfgan": AttentionFGAN,
}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def get_model_class(name: str) -> type[FusionModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}") from None


def build(name: str, params: dict | None = None) -> FusionModel:
    """Instantiate a registered model from its Config fields (paper defaults for the rest).

    Raises:
        KeyError: unknown model, or unknown Config key(s) (the message lists the valid keys).
        ValueError: a value of the wrong type or out of range (pydantic's message).
    """
    cls = get_model_class(name)
    params = dict(params or {})
    valid = sorted(cls.Config.model_fields)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise KeyError(f"{name}: unknown parameter(s) {unknown}; valid keys: {valid}")
    try:
        config = cls.Config(**params)
    except ValidationError as exc:
        raise ValueError(f"{name}: invalid parameters: {exc}") from None
    return cls(config)


def sidecar_path(path: str | Path) -> Path:
    """``<path>.sha256``: the digest file written beside each checkpoint."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def verify_checkpoint_file(path: str | Path) -> str | None:
    """Check a checkpoint file against its ``.sha256`` sidecar; returns the verified digest,
    or None when there is no sidecar (a file from elsewhere loads unverified).

    Raises:
        ValueError: naming the file: its sha256 differs from the sidecar's (changed on disk,
            bytes flipped or cut short), or the sidecar is unreadable.
    """
    side = sidecar_path(path)
    try:
        expected = side.read_text(encoding="utf-8").split()[0]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"{path}: cannot read its sha256 file {side.name} ({exc!r})") from None
    try:
        actual = digest_file(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the checkpoint ({exc})") from None
    if actual != expected:
        raise ValueError(f"{path}: sha256 mismatch: file has {actual}, {side.name} says "
                         f"{expected} (the checkpoint changed or was damaged on disk)")
    return actual


def _read_checkpoint(source: str | Path, map_location: str | torch.device) -> object:
    """``torch.load(weights_only=True)`` after :func:`verify_checkpoint_file` (a path); any
    failure is a ValueError naming the file."""
    if isinstance(source, str | Path):
        verify_checkpoint_file(source)
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{source}: not a fusion-orchestrator checkpoint (torch.load with "
                         f"weights_only=True failed: {why})") from None


def load_checkpoint(source: str | Path | dict, map_location: str | torch.device = "cpu",
                    with_optimizers: bool = False) -> tuple[FusionModel, dict]:
    """Rebuild a model from a self-describing checkpoint (``torch.load(weights_only=True)``).

    Returns:
        ``(model, checkpoint_dict)``; the model is on ``map_location`` in eval mode.

    Raises:
        ValueError: naming ``source``: a file that differs from its ``.sha256`` sidecar (see
            :func:`verify_checkpoint_file`), not a loadable file, not a dict with ``model``,
            ``params``, ``state_dict`` and ``epoch``, an unknown model, parameters its Config
            refuses, or weights that do not fit the model.
    """
    ckpt = source if isinstance(source, dict) else _read_checkpoint(source, map_location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{source}: not a fusion-orchestrator checkpoint (holds a "
                         f"{type(ckpt).__name__}, not a dict)")
    for key in ("model", "params", "state_dict", "epoch"):
        if key not in ckpt:
            raise ValueError(f"{source}: not a fusion-orchestrator checkpoint (no {key!r})")
    if not isinstance(ckpt["params"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"{source}: 'params' and 'state_dict' must be dicts")
    try:
        model = build(ckpt["model"], ckpt["params"]).to(map_location)
        model.load_checkpoint_state(ckpt, with_optimizers=with_optimizers)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        first = str(message).strip().splitlines()[0]
        raise ValueError(f"{source}: cannot rebuild its model: {first}") from None
    return model.eval(), ckpt
