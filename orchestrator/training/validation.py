"""Validation inside training: fuse full-size pairs, measure them, draw a sample grid.

Pure PyTorch + fusion_models (no Ray/MLflow): the training loop runs on GPU machines that
have neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.data import PairSet, load_pair, to_tensor255
from fusion_models.data.colour import ColourPlan, plan_colour
from fusion_models.metrics import compute_metrics
from fusion_models.metrics.diagnostics import degeneracy
from fusion_models.models.base import FusionModel


@dataclass
class ValPair:
    """One validation pair: sources (1, C, H, W), the grey channels to fuse (1, 1, H, W) and
    the colour plan that restores colour on a fused grey channel; all 0..255."""

    name: str
    src_a: Tensor
    src_b: Tensor
    luma_a: Tensor
    luma_b: Tensor
    plan: ColourPlan


def load_val_pairs(pair_set: PairSet, rule: str, limit: int) -> list[ValPair]:
    """The first ``limit`` pairs (by name), with their colour plans (0..255 tensors)."""
    out = []
    for pair in sorted(pair_set.pairs, key=lambda p: p.name)[:limit]:
        a, b = (to_tensor255(x)[None] for x in load_pair(pair))
        plan = plan_colour(a, b, rule)
        out.append(ValPair(pair.name, a, b, plan.luma_a, plan.luma_b, plan))
    return out


@torch.no_grad()
def fuse_pair(model: FusionModel, pair: ValPair) -> Tensor:
    """(1, 1, H, W) fused grey 0..255, rounded like a saved 8-bit image."""
    device = model.device
    fused01 = model.fuse(pair.luma_a.to(device) / 255.0, pair.luma_b.to(device) / 255.0)
    return (fused01.float() * 255.0).round().clamp(0, 255)


def evaluate_model(model: FusionModel, pairs: Sequence[ValPair], metric_names: Sequence[str]
                   ) -> tuple[dict[str, float], list[Tensor]]:
    """Mean validation metrics (``val/<name>``) plus the degenerate-fusion summary.

    Returns:
        ``(metrics, fused)``: ``val/<metric>`` means over pairs (NaN-free pairs), and
        ``val/SSIM_A``, ``val/SSIM_B``, ``val/degenerate`` (fraction of flagged pairs); the
        fused grey images (1, 1, H, W) 0..255 on the CPU.
    """
    was_training = model.training
    model.eval()
    per_pair: dict[str, list[float]] = {}
    fused_all = []
    for pair in pairs:
        fused = fuse_pair(model, pair)
        a, b = pair.luma_a.to(fused.device), pair.luma_b.to(fused.device)
        values = compute_metrics(fused, a, b, list(metric_names)) if metric_names else {}
        flags = degeneracy(fused, a, b)
        values.update({k: flags[k] for k in ("SSIM_A", "SSIM_B")})
        values["degenerate"] = flags["degenerate"].double()
        for key, v in values.items():
            per_pair.setdefault(key, []).append(float(v[0]))
        fused_all.append(fused.cpu())
    model.train(was_training)
    metrics = {}
    for key, vals in per_pair.items():
        finite = [v for v in vals if np.isfinite(v)]
        metrics[f"val/{key}"] = float(np.mean(finite)) if finite else float("nan")
    return metrics, fused_all


def sample_grid(pairs: Sequence[ValPair], fused: Sequence[Tensor], height: int = 192
                ) -> np.ndarray:
    """Rows of [source A | source B | fused] (colour restored), uint8 (H, W, 3)."""
    rows = []
    for pair, f in zip(pairs, fused, strict=False):
        restored = pair.plan.restore(f.to(pair.luma_a.device))
        tiles = [_rgb(pair.src_a), _rgb(pair.src_b), _rgb(restored)]
        rows.append(torch.cat([_resize(t, height) for t in tiles], dim=-1))
    width = max(r.shape[-1] for r in rows)
    rows = [F.pad(r, (0, width - r.shape[-1])) for r in rows]
    grid = torch.cat(rows, dim=-2)[0]
    return grid.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _resize(x: Tensor, height: int) -> Tensor:
    width = max(1, round(x.shape[-1] * height / x.shape[-2]))
    return F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False)
