"""The report's comparison on a test set: the sources, the baselines and the top trials fused
and measured with the same code as ``orchestrator eval`` (so the numbers match it), then the
metric table (best value per column marked, direction shown) and the image grid (whole image
plus the same zoomed crop for every method, degenerate outputs flagged).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusion_models.data import PairSet, read_image
from orchestrator.evaluation import EvalItem, EvalReport, evaluate_local, make_settings, plan_items


@dataclass
class Method:
    """One row of the comparison: a source, a baseline or a trial's best checkpoint."""

    key: str  # file-safe: "source_a", "baseline_laplacian", "trial_<id>", "reference_<i>"
    label: str
    kind: str  # "source" | "baseline" | "reference" | "trial"
    method: str | None = None  # baseline name
    checkpoint: str | None = None  # local best.pt of a trial, or a reference's checkpoint
    link: str | None = None  # MLflow UI page of the trial's run
    report: EvalReport | None = None
    fused_dir: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def evaluate_method(m: Method, pair_set: PairSet, metrics: list[str], rule: str,
                    out: Path) -> None:
    """Fuse (unless a source) and measure every pair; fills ``m.report`` and ``m.fused_dir``."""
    if m.kind == "source":
        items = [EvalItem(i.name, i.path_a, i.path_b, i.path_a if m.key == "source_a" else i.path_b)
                 for i in plan_items(pair_set, None)]
        settings = make_settings(metrics, "cdd", None, rule, "cpu")
    else:
        m.fused_dir = out / m.key
        items = plan_items(pair_set, None)
        settings = make_settings(metrics, "cdd", m.method, rule, "cpu", out_dir=str(m.fused_dir),
                                 model=m.checkpoint)
    m.report = evaluate_local(items, settings)


def metric_table(methods: list[Method], metrics: list[str]) -> dict[str, Any]:
    """Rows of mean values with the best per column (among baselines and trials; the sources
    are references) and each metric's direction.

    Returns:
        ``{"columns": [{"name", "arrow", "higher"}], "rows": [{"label", "kind", "link",
        "cells": [{"text", "best"}], "degenerate": [verdict, ...], "pairs": n}]}``.
    """
    from orchestrator.evaluation import metric_direction

    means = {m.key: m.report.mean() for m in methods}
    best: dict[str, float] = {}
    for name in metrics:
        higher = metric_direction(name)
        vals = [means[m.key][name] for m in methods
                if m.kind != "source" and math.isfinite(means[m.key][name])]
        if vals:
            best[name] = max(vals) if higher else min(vals)
    rows = []
    for m in methods:
        verdicts = [] if m.kind == "source" else \
            [r.diagnostics["verdict"] for r in m.report.results if r.diagnostics["verdict"]]
        cells = []
        for name in metrics:
            v = means[m.key][name]
            cells.append({"text": f"{v:.4g}" if math.isfinite(v) else "–",
                          "best": m.kind != "source" and name in best
                          and math.isclose(v, best[name], rel_tol=1e-12, abs_tol=1e-12)})
        rows.append({"label": m.label, "kind": m.kind, "link": m.link, "cells": cells,
                     "degenerate": verdicts, "pairs": len(m.report.results)})
    columns = [{"name": n, "higher": metric_direction(n),
                "arrow": "↑" if metric_direction(n) else "↓"} for n in metrics]
    return {"columns": columns, "rows": rows}


def _grey(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x[..., 0] if x.shape[-1] == 1 else x @ np.array([0.299, 0.587, 0.114])


def pick_crop(a: np.ndarray, b: np.ndarray, frac: float = 0.25) -> tuple[int, int, int]:
    """(y, x, size) of the square window with the most gradient energy in both sources
    (each normalised to its own total), ``size`` = ``frac`` of the shorter side (>= 8 px)."""
    from scipy.ndimage import uniform_filter

    energy = np.zeros(a.shape[:2])
    for img in (a, b):
        gy, gx = np.gradient(_grey(img))
        e = np.hypot(gx, gy)
        energy += e / max(e.sum(), 1e-12)
    h, w = energy.shape
    size = max(8, int(min(h, w) * frac))
    box = uniform_filter(energy, size=size, mode="constant")
    half = size // 2
    valid = box[half : h - size + half + 1, half : w - size + half + 1]
    y, x = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(y), int(x), size


def _rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def _png(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def tiles(img: np.ndarray, crop: tuple[int, int, int], thumb: int = 220, zoom: int = 110
          ) -> tuple[str, str]:
    """(whole image scaled to ``thumb`` px on its longer side with the crop outlined, the
    crop scaled to ``zoom`` px with nearest-neighbour) as PNG data URIs."""
    from PIL import Image, ImageDraw

    rgb = _rgb8(img)
    y, x, s = crop
    zoomed = Image.fromarray(np.ascontiguousarray(rgb[y : y + s, x : x + s]))
    zoomed = zoomed.resize((zoom, zoom), Image.Resampling.NEAREST)
    whole = Image.fromarray(rgb)
    scale = thumb / max(whole.size)
    whole = whole.resize((max(1, round(whole.width * scale)), max(1, round(whole.height * scale))),
                         Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(whole)
    draw.rectangle([x * scale, y * scale, (x + s) * scale, (y + s) * scale], outline=(255, 210, 0),
                   width=2)
    return _png(np.asarray(whole)), _png(np.asarray(zoomed))


def image_grid(methods: list[Method], pair_set: PairSet, n_pairs: int) -> list[dict[str, Any]]:
    """Per test pair (the first ``n_pairs``): one cell per method with its tiles and its
    degenerate-fusion verdict ("" when fine)."""
    out = []
    for index, pair in enumerate(pair_set.pairs[:n_pairs]):
        a, b = read_image(pair.path_a), read_image(pair.path_b)
        crop = pick_crop(a, b)
        cells = []
        for m in methods:
            if m.kind == "source":
                img = a if m.key == "source_a" else b
            else:
                img = read_image(m.fused_dir / f"{pair.name}.png")
            whole, zoom = tiles(img, crop)
            verdict = m.report.results[index].diagnostics["verdict"] if m.kind != "source" else ""
            cells.append({"label": m.label, "kind": m.kind, "whole": whole, "zoom": zoom,
                          "verdict": verdict})
        out.append({"name": pair.name, "crop": crop, "cells": cells})
    return out
