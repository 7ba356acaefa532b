"""Fusing inside ``orchestrator eval``: a baseline method or a checkpoint's model, per batch.

What is measured is what a user gets on disk, the 8-bit image (written to ``--out`` when
asked).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fusion_models.baselines import fuse_baseline
from fusion_models.data import write_image

if TYPE_CHECKING:
    from orchestrator.evaluation.local import EvalSettings, Loaded


def _write_fused(out_dir: str, batch: Sequence[Loaded], fused: Tensor) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    arrays = fused.to("cpu", torch.uint8).permute(0, 2, 3, 1).numpy()
    for loaded, arr in zip(batch, arrays, strict=True):
        write_image(Path(out_dir) / f"{loaded.item.name}.png", arr)


@functools.lru_cache(maxsize=2)
def cached_model(path: str, device: str):
    """A checkpoint's model, loaded once per process (once per Ray Data actor)."""
    from fusion_models.registry import load_checkpoint

    return load_checkpoint(path, map_location=device)[0]


def fused_batch(batch: Sequence[Loaded], a: Tensor, b: Tensor, s: EvalSettings) -> Tensor:
    """The batch's fused images (B, C, H, W) 0..255 on ``a``'s device: read from disk, or
    fused here with ``s.method`` / ``s.model`` and rounded to 8 bits."""
    if s.method is None and s.model is None:
        return torch.stack([x.fused for x in batch]).to(a.device)
    if s.model is not None:
        from orchestrator.deploy import fuse_tensors

        model = cached_model(s.model, s.device)
        fused = fuse_tensors(model, a.cpu(), b.cpu(), s.colour_rule).float().to(a.device)
    else:
        fused = fuse_baseline(s.method, a, b, s.colour_rule).round().clamp(0, 255)
    if s.out_dir:
        _write_fused(s.out_dir, batch, fused)
    return fused
