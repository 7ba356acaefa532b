"""`orchestrator fuse`: a trained model on whole images, colour restored, PNGs named like the
sources (so ``orchestrator eval --fused DIR`` pairs them back)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from fusion_models.data import Pair, PairSet, load_pair, to_tensor255, write_image
from fusion_models.data.colour import plan_colour
from fusion_models.models.base import FusionModel

log = logging.getLogger(__name__)


@torch.no_grad()
def fuse_tensors(model: FusionModel, a: Tensor, b: Tensor, rule: str) -> Tensor:
    """(B, Ca, H, W), (B, Cb, H, W) sources 0..255 -> (B, C, H, W) fused uint8 (CPU)."""
    plan = plan_colour(a, b, rule)
    device = model.device
    fused01 = model.fuse(plan.luma_a.to(device) / 255.0, plan.luma_b.to(device) / 255.0)
    fused = (fused01.float().cpu() * 255.0).round().clamp(0, 255)
    return plan.restore(fused).round().clamp(0, 255).to(torch.uint8)


def _groups(pairs: Sequence[Pair], batch_size: int) -> list[list[tuple[Pair, Tensor, Tensor]]]:
    by_shape: dict[tuple, list[tuple[Pair, Tensor, Tensor]]] = defaultdict(list)
    for pair in pairs:
        a, b = (to_tensor255(x) for x in load_pair(pair))
        by_shape[(tuple(a.shape), tuple(b.shape))].append((pair, a, b))
    return [g[i : i + batch_size] for g in by_shape.values()
            for i in range(0, len(g), batch_size)]


def fuse_set(model: FusionModel, pair_set: PairSet, out_dir: str | Path, rule: str,
             batch_size: int = 4, advance: Callable[[int], None] | None = None) -> list[Path]:
    """Fuse every pair of a set into ``out_dir/<stem>.png`` (same-size pairs batched)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    model.eval()
    for group in _groups(pair_set.pairs, batch_size):
        fused = fuse_tensors(model, torch.stack([g[1] for g in group]),
                             torch.stack([g[2] for g in group]), rule)
        for (pair, _, _), img in zip(group, fused, strict=True):
            path = out_dir / f"{pair.name}.png"
            write_image(path, img.permute(1, 2, 0).numpy())
            written.append(path)
        if advance:
            advance(len(group))
    return written


def fuse_files(model: FusionModel, path_a: str | Path, path_b: str | Path,
               out_path: str | Path, rule: str) -> Path:
    """Fuse one pair of files into ``out_path``."""
    pair = Pair(Path(path_a).stem, Path(path_a), Path(path_b))
    a, b = (to_tensor255(x)[None] for x in load_pair(pair))
    fused = fuse_tensors(model.eval(), a, b, rule)[0]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_image(out_path, fused.permute(1, 2, 0).numpy())
    return Path(out_path)
