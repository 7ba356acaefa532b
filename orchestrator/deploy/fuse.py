"""`orchestrator fuse`: a trained model on whole images, colour restored, PNGs named like the
sources (so ``orchestrator eval --fused DIR`` pairs them back)."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fusion_models.data import Pair, PairSet, load_pair, to_tensor255, write_image
from fusion_models.data.colour import plan_colour
from fusion_models.inference import InferenceOptions, cached_inference_model
from fusion_models.models.base import FusionModel
from fusion_models.registration import MI_MARGIN, align_sources

log = logging.getLogger(__name__)
#: how `orchestrator fuse` and `eval --model` run a model unless told otherwise: BN folded into
#: the convolutions, channels_last weights, fp32, eager (see :mod:`fusion_models.inference`)
DEFAULT_INFERENCE = InferenceOptions()


@torch.no_grad()
def fuse_tensors(model: FusionModel, a: Tensor, b: Tensor, rule: str,
                 inference: InferenceOptions | None = DEFAULT_INFERENCE) -> Tensor:
    """(B, Ca, H, W), (B, Cb, H, W) sources 0..255 -> (B, C, H, W) fused uint8 (CPU).

    The network runs under ``torch.inference_mode`` on the copy of ``model`` that
    :func:`~fusion_models.inference.cached_inference_model` prepares once per process for
    ``inference`` (None: ``model`` itself, plain eager). fp32 results equal the plain model's
    to float rounding (a pixel may move by one grey level); bf16 ones to
    ``fusion_models.inference.BF16_*_TOL``.
    """
    plan = plan_colour(a, b, rule)
    device = model.device
    net = model if inference is None else cached_inference_model(model, inference)
    with torch.inference_mode():
        fused01 = net.fuse(plan.luma_a.to(device) / 255.0, plan.luma_b.to(device) / 255.0)
    fused = (fused01.float().cpu() * 255.0).round().clamp(0, 255)
    return plan.restore(fused).round().clamp(0, 255).to(torch.uint8)


def log_alignment(name: str, found: dict[str, float] | None, threshold: float,
                  register: str | None) -> None:
    """Log what the misregistration guard found for one pair (``found``: a
    :meth:`~fusion_models.registration.Misalignment.summary`, None when nothing was measured).

    A warning when B is off A by more than ``threshold`` px and mutual information confirms
    the estimate (without ``register``), or when registration failed; info when registered,
    when the check could not measure, or when the estimate is not confirmed.
    """
    if found is None:
        return
    px = found["misalignment_px"]
    how = (f"shift dx={found['dx']:+.2f} dy={found['dy']:+.2f} px, rotation "
           f"{found['rotation_deg']:+.2f} deg, scale {found['scale']:.4f}")
    if register is not None:
        if math.isnan(px):
            log.warning("pair %r: could not register source B onto A (%s); B is left as it is",
                        name, register)
        else:
            log.info("pair %r: registered source B onto A (%s); it was off by %.2f px (%s)",
                     name, register, px, how)
    elif math.isnan(px):
        log.info("pair %r: could not measure how source B aligns with A", name)
    elif px > threshold and not found.get("mi_gain", 0.0) > MI_MARGIN:
        log.info("pair %r: B reads %.2f px off A (%s) but mutual information does not confirm "
                 "it (%+.1f %%): too little shared structure to tell", name, px, how,
                 100 * found.get("mi_gain", math.nan))
    elif px > threshold:
        log.warning("pair %r: source B is misaligned with A by %.2f px (%s; undoing it raises "
                    "mutual information %+.1f %%; threshold %g px): fusion assumes registered "
                    "sources, try --register rigid (or affine)", name, px, how,
                    100 * found["mi_gain"], threshold)


def align_pair(name: str, a: np.ndarray, b: np.ndarray, register: str | None,
               threshold: float) -> np.ndarray:
    """The misregistration guard on one stored pair: (H, W, C) arrays in, B (warped onto A
    when ``register`` is given) out; logs through :func:`log_alignment`. ``threshold`` inf
    and no ``register``: nothing is measured."""
    b, found = align_sources(a, b, register, check=math.isfinite(threshold))
    log_alignment(name, None if found is None else found.summary(), threshold, register)
    return b


def _groups(pairs: Sequence[Pair], batch_size: int, register: str | None = None,
            threshold: float = math.inf) -> list[list[tuple[Pair, Tensor, Tensor]]]:
    by_shape: dict[tuple, list[tuple[Pair, Tensor, Tensor]]] = defaultdict(list)
    for pair in pairs:
        a, b = load_pair(pair)
        b = align_pair(pair.name, a, b, register, threshold)
        a, b = to_tensor255(a), to_tensor255(b)
        by_shape[(tuple(a.shape), tuple(b.shape))].append((pair, a, b))
    return [g[i : i + batch_size] for g in by_shape.values()
            for i in range(0, len(g), batch_size)]


def fuse_set(model: FusionModel, pair_set: PairSet, out_dir: str | Path, rule: str,
             batch_size: int = 4, advance: Callable[[int], None] | None = None,
             register: str | None = None, misalign_threshold: float = math.inf,
             inference: InferenceOptions | None = DEFAULT_INFERENCE) -> list[Path]:
    """Fuse every pair of a set into ``out_dir/<stem>.png`` (same-size pairs batched by up to
    ``batch_size``); each pair's B is first checked or registered as in :func:`align_pair`;
    ``inference`` as in :func:`fuse_tensors`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    model.eval()
    for group in _groups(pair_set.pairs, batch_size, register, misalign_threshold):
        fused = fuse_tensors(model, torch.stack([g[1] for g in group]),
                             torch.stack([g[2] for g in group]), rule, inference)
        for (pair, _, _), img in zip(group, fused, strict=True):
            path = out_dir / f"{pair.name}.png"
            write_image(path, img.permute(1, 2, 0).numpy())
            written.append(path)
        if advance:
            advance(len(group))
    return written


def fuse_files(model: FusionModel, path_a: str | Path, path_b: str | Path,
               out_path: str | Path, rule: str, register: str | None = None,
               misalign_threshold: float = math.inf,
               inference: InferenceOptions | None = DEFAULT_INFERENCE) -> Path:
    """Fuse one pair of files into ``out_path`` (B checked or registered as in
    :func:`align_pair`; ``inference`` as in :func:`fuse_tensors`)."""
    pair = Pair(Path(path_a).stem, Path(path_a), Path(path_b))
    a, b = load_pair(pair)
    b = align_pair(pair.name, a, b, register, misalign_threshold)
    a, b = (to_tensor255(x)[None] for x in (a, b))
    fused = fuse_tensors(model.eval(), a, b, rule, inference)[0]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_image(out_path, fused.permute(1, 2, 0).numpy())
    return Path(out_path)
