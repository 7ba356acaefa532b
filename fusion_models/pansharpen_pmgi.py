"""PMGI's pansharpening variant (models.md §5, ``task="pan"``) on PAN/MS sets.

What the authors' ``Code_PMGI/Pan_shapening`` pipeline does, and what we do:

- **One band at a time.** The network fuses two same-size grey images: A (the code's "ir"
  input, the intensity target of the loss) = one MS band upsampled to PAN size, B ("vi", the
  gradient target) = the PAN. Loss: 100 * [mse(F, A) + 2 mse(lap F, lap PAN)] (§5.2), no BN.
  A C-band MS takes C runs; :func:`pmgi_pansharpen` stacks the bands into the batch axis
  (the network has no BN, so each band's result does not depend on the others).
- **Upsampling**: the authors ship neither data nor resampling code; we use the project's rule
  (:func:`fusion_models.data.pansharpen.upsample_ms`, bicubic).
- **Post-processing** (optional, ``authors_match=True``): ``PMGI_pansharpening_match.m``: each
  band's output, saved as an 8-bit image by ``scipy.misc.imsave`` (min-max stretched, §0.5),
  is split into a base (3 x 3 Gaussian, sigma 0.5, replicate borders, uint8) and a detail
  layer (uint8 subtraction: negative details saturate to 0, as the script's uint8 arithmetic
  does); the base is histogram-matched (MATLAB ``histeq(base, imhist(ms_band))``, its LUT
  rule reimplemented in :func:`histeq_lut`) to the low-res MS band; result = base + detail.
- **Training** (:func:`train_pmgi_pan`): a small pure-PyTorch loop, not
  ``orchestrator/training/loop.py``: that loop's patch store and validation work on same-size grey
  pairs scored by fusion metrics, whereas here one sample is a PAN with a C-band MS at another
  resolution, and the checkpoint is chosen on a pansharpening index (ERGAS on the val split).
  It draws random ``window`` x ``window`` crops of (band, PAN) pairs and calls the model's own
  ``training_step`` (the authors' loss, Adam), so the model and its checkpoints are the same as
  everywhere else (``registry.load_checkpoint`` reads them).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fusion_models.data.pansharpen import PanSet, load_pan_sample
from fusion_models.models.base import FusionModel
from fusion_models.pansharpen_eval import PanMethod, evaluate_pan

logger = logging.getLogger(__name__)


def pmgi_pansharpen(model: FusionModel, ms_up: Tensor, pan: Tensor) -> Tensor:
    """Fuse every upsampled MS band with the PAN.

    Args:
        model: a PMGI (``task="pan"``; any two-input fusion model works).
        ms_up: (B, C, H, W) 0..255; pan: (B, 1, H, W) 0..255.

    Returns:
        (B, C, H, W) on the 0..255 scale, on ``ms_up``'s device.
    """
    b, c, h, w = ms_up.shape
    a = (ms_up.reshape(b * c, 1, h, w) / 255.0).to(model.device)
    p = (pan.repeat_interleave(c, dim=0) / 255.0).to(model.device)
    return (model.fuse(a, p) * 255.0).reshape(b, c, h, w).to(ms_up.device)


# -- the authors' post-processing ------------------------------------------------------------
def _gauss3() -> np.ndarray:
    """MATLAB ``fspecial('gaussian', [3, 3])`` (sigma 0.5)."""
    g = np.exp(-np.array([-1.0, 0.0, 1.0]) ** 2 / (2 * 0.5**2))
    k = np.outer(g, g)
    return k / k.sum()


def _imfilter_u8(img: np.ndarray) -> np.ndarray:
    """``imfilter(uint8 img, gauss3, 'replicate')``: correlation, rounded back to uint8."""
    padded = np.pad(img.astype(np.float64), 1, mode="edge")
    k = _gauss3()
    h, w = img.shape
    out = sum(k[dy, dx] * padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def histeq_lut(img: np.ndarray, hgram: np.ndarray) -> np.ndarray:
    """MATLAB ``histeq(img, hgram)``'s grey-level map for a uint8 image and a 256-bin target.

    For each level k: the first level j minimising cumd(j) - cum(k) + tol(k) among those not
    below -numel*sqrt(eps), where cum is the image's cumulative histogram, cumd the target's
    scaled to numel(img), tol(k) = count(k)/2 for 0 < k < 255 (0 at both ends).

    Returns:
        (256,) uint8 look-up table.
    """
    n = img.size
    counts = np.bincount(img.ravel(), minlength=256).astype(np.float64)
    cum = np.cumsum(counts)
    cumd = np.cumsum(hgram.astype(np.float64) * (n / hgram.sum()))
    tol = np.zeros(256)
    tol[1:-1] = counts[1:-1] / 2
    err = cumd[:, None] - cum[None, :] + tol[None, :]
    err[err < -n * np.sqrt(np.finfo(np.float64).eps)] = n
    return np.argmin(err, axis=0).astype(np.uint8)


def authors_match_band(out_u8: np.ndarray, ms_band_u8: np.ndarray) -> np.ndarray:
    """``PMGI_pansharpening_match.m`` for one band: (H, W) uint8 network output (as saved)
    and (h, w) uint8 low-res MS band -> (H, W) uint8."""
    base = _imfilter_u8(out_u8)
    detail = np.clip(out_u8.astype(np.int16) - base, 0, 255)
    hgram = np.bincount(ms_band_u8.ravel(), minlength=256)
    matched = histeq_lut(base, hgram)[base]
    return np.clip(matched.astype(np.int16) + detail, 0, 255).astype(np.uint8)


def authors_postprocess(fused: Tensor, ms: Tensor) -> Tensor:
    """The authors' save + match of every band (module docstring).

    Args:
        fused: (B, C, H, W) raw network output, 0..255; ms: (B, C, h, w) low-res MS 0..255.

    Returns:
        (B, C, H, W) float on 0..255 (integer values).
    """
    out = torch.empty_like(fused, dtype=torch.float32, device="cpu")
    for i in range(fused.shape[0]):
        for k in range(fused.shape[1]):
            band = fused[i, k].double().cpu().numpy()
            lo, hi = band.min(), band.max()
            span = hi - lo if hi > lo else 1.0
            saved = np.floor((band - lo) * (255.0 / span) + 0.5).astype(np.uint8)
            low = np.clip(np.floor(ms[i, k].double().cpu().numpy() + 0.5), 0, 255)
            out[i, k] = torch.from_numpy(authors_match_band(saved, low.astype(np.uint8)))
    return out


def pmgi_method(model: FusionModel, authors_match: bool = False) -> PanMethod:
    """PMGI as a :data:`~fusion_models.pansharpen_eval.PanMethod`."""
    def run(ms_up: Tensor, pan: Tensor, ms: Tensor) -> Tensor:
        fused = pmgi_pansharpen(model, ms_up, pan)
        return authors_postprocess(fused, ms) if authors_match else fused
    return run


# -- training --------------------------------------------------------------------------------
def band_pairs(pan_set: PanSet) -> tuple[Tensor, Tensor]:
    """Every (upsampled MS band, PAN) pair of a set: two (N*C, 1, H, W) tensors in [0, 1]
    (the samples must share one size)."""
    bands, pans = [], []
    for sample in pan_set.samples:
        data = load_pan_sample(sample, pan_set.ratio)
        c = data["ms_up"].shape[0]
        bands.append(data["ms_up"].unsqueeze(1))
        pans.append(data["pan"].unsqueeze(0).expand(c, -1, -1, -1))
    return torch.cat(bands) / 255.0, torch.cat(pans) / 255.0


@dataclass
class PanTrainResult:
    """Outcome of :func:`train_pmgi_pan`: the val indices before training (``initial``) and at
    the kept step (``best``, ``best_step``; 0 = the initial weights), and every evaluation."""

    steps: int
    initial: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def _windows(a: Tensor, b: Tensor, size: int, batch: int, gen: torch.Generator
             ) -> tuple[Tensor, Tensor]:
    """``batch`` random aligned size x size crops of random pairs."""
    idx = torch.randint(0, a.shape[0], (batch,), generator=gen)
    ys = torch.randint(0, a.shape[-2] - size + 1, (batch,), generator=gen)
    xs = torch.randint(0, a.shape[-1] - size + 1, (batch,), generator=gen)
    crop_a = [a[i, :, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs, strict=True)]
    crop_b = [b[i, :, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs, strict=True)]
    return torch.stack(crop_a), torch.stack(crop_b)


def _evaluate(model: FusionModel, val_set: PanSet | None, step: int) -> dict[str, float]:
    if val_set is None:
        return {}
    scores = {"step": float(step), **evaluate_pan(pmgi_method(model), val_set)}
    logger.info("pmgi pan step %d: %s", step,
                ", ".join(f"{k} {v:.4g}" for k, v in scores.items() if k != "step"))
    return scores


def train_pmgi_pan(model: FusionModel, train_set: PanSet, steps: int,
                   val_set: PanSet | None = None, eval_every: int = 50,
                   batch_size: int | None = None, window: int | None = None,
                   seed: int = 0) -> PanTrainResult:
    """Train PMGI's pan variant on (band, PAN) crops of ``train_set`` (module docstring).

    Args:
        model: PMGI with ``task="pan"`` (its Config sets loss, optimiser and lr).
        steps: optimiser steps.
        val_set: scored every ``eval_every`` steps and at the end (needs ``ref/``); the
            weights with the lowest val ERGAS (the initial ones included) are kept.
        batch_size, window: crops per step and their side (default: the Config's
            ``batch_size`` and ``label``, clipped to the image size).
        seed: crop sampling seed.

    Returns:
        :class:`PanTrainResult`; ``model`` holds the kept weights.
    """
    a, b = band_pairs(train_set)
    cfg = model.config
    size = min(window or cfg.label, a.shape[-1], a.shape[-2])
    batch = batch_size or cfg.batch_size
    gen = torch.Generator().manual_seed(seed)
    result = PanTrainResult(steps, initial=_evaluate(model, val_set, 0))
    result.best, result.history = dict(result.initial), [dict(result.initial)]
    best_state = copy.deepcopy(model.state_dict())
    model.train()
    for step in range(1, steps + 1):
        xa, xb = _windows(a, b, size, batch, gen)
        xa, xb = (model.to_input_scale(x).to(model.device) for x in (xa, xb))
        model.training_step({"a": xa, "b": xb, "a_label": xa, "b_label": xb})
        if val_set is not None and (step % eval_every == 0 or step == steps):
            scores = _evaluate(model, val_set, step)
            result.history.append(scores)
            if scores["ERGAS"] < result.best.get("ERGAS", float("inf")):
                result.best, result.best_step = scores, step
                best_state = copy.deepcopy(model.state_dict())
    if val_set is not None:
        model.load_state_dict(best_state)
    return result
