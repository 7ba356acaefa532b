"""`orchestrator eval`: read (or fuse with a baseline) and measure a paired test set.

The in-process path reads every image first, then computes all metrics in same-size batches
on the chosen device (on the CPU shared out to forked single-threaded worker processes, one per
core: :mod:`orchestrator.evaluation.workers`); :mod:`orchestrator.evaluation.ray_data` runs the
same per-batch scoring inside Ray Data for large sets and clusters. Both return an
:class:`EvalReport` whose JSON is::

    {"convention": "cdd", "options": {...}, "method": "laplacian" | null,
     "per_pair": {stem: {metric: value}}, "mean": {metric: value},
     "not_finite": {metric: number of pairs where it is undefined (left out of the mean)},
     "diagnostics": {stem: {"CC_A": ..., "SSIM_B": ..., "verdict": "copies source B"}},
     "degenerate": [stem, ...],
     "timing": {"read_s": ..., "align_s": ..., "fuse_s": ..., "metrics_s": ...,
               "by_metric_s": {metric: s, ..., "diagnostics": s}, "pairs": N}}

``metrics_s`` is the time a user waits for the numbers: every metric and the degenerate
diagnostics (``by_metric_s`` splits it); ``align_s`` the misregistration check or registration.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fusion_models.data import (
    IMAGE_EXTENSIONS,
    DataError,
    PairSet,
    read_image,
    to_tensor255,
)
from fusion_models.metrics import (
    METRICS,
    Convention,
    compute_metrics,
    get_convention,
    shared_work,
    to_gray,
)
from fusion_models.metrics.diagnostics import degeneracy, describe
from fusion_models.metrics.ssim import psnr_gt, ssim_gt
from orchestrator.common import atomic_open, atomic_write
from orchestrator.evaluation.align import align_item
from orchestrator.evaluation.fusing import fused_batch
from orchestrator.evaluation.workers import eval_workers, score_in_workers

log = logging.getLogger(__name__)
GT_METRICS = {"PSNR_GT": True, "SSIM_GT": True}  # full-reference, higher is better


@dataclass(frozen=True)
class EvalItem:
    """One pair to score: its sources, and either a fused image on disk or None (fuse here)."""

    name: str
    path_a: str
    path_b: str
    path_fused: str | None = None
    path_gt: str | None = None


@dataclass(frozen=True)
class EvalSettings:
    """What to compute and how (picklable: Ray workers receive it)."""

    metrics: tuple[str, ...]
    convention: Convention
    method: str | None = None
    colour_rule: str = "gray"
    device: str = "cpu"
    batch_size: int = 8
    out_dir: str | None = None
    model: str | None = None  # a local checkpoint to fuse with (``--model`` after resolving)
    register: str | None = None  # rigid|affine|homography: warp B onto A first (``--register``)
    misalign_threshold: float = math.inf  # measure B's misalignment unless inf (see _align)


@dataclass
class PairResult:
    name: str
    metrics: dict[str, float]
    diagnostics: dict[str, float | str]
    read_s: float = 0.0
    fuse_s: float = 0.0
    metrics_s: float = 0.0
    alignment: dict[str, float] | None = None  # Misalignment.summary() of B, when measured
    align_s: float = 0.0
    metric_s: dict[str, float] = field(default_factory=dict)  # share of the batch, + diagnostics


@dataclass
class EvalReport:
    """Results of one evaluation; see the module docstring for the JSON layout."""

    convention: Convention
    method: str | None
    results: list[PairResult] = field(default_factory=list)

    def mean(self) -> dict[str, float]:
        """Mean over the pairs with a finite value (NaN when none has; see :meth:`nan_counts`)."""
        names = self.results[0].metrics.keys() if self.results else []
        means = {}
        for n in names:
            finite = [v for r in self.results if math.isfinite(v := r.metrics[n])]
            means[n] = float(np.mean(finite)) if finite else math.nan
        return means

    def nan_counts(self) -> dict[str, int]:
        """Metrics undefined on some pairs (e.g. SCD when the fused image equals a source)."""
        names = self.results[0].metrics.keys() if self.results else []
        counts = {n: sum(not math.isfinite(r.metrics[n]) for r in self.results) for n in names}
        return {n: c for n, c in counts.items() if c}

    def to_dict(self) -> dict:
        return {
            "convention": self.convention.name,
            "options": self.convention.as_dict(),
            "method": self.method,
            "per_pair": {r.name: r.metrics for r in self.results},
            "mean": self.mean(),
            "not_finite": self.nan_counts(),
            "diagnostics": {r.name: r.diagnostics for r in self.results},
            "degenerate": [r.name for r in self.results if r.diagnostics["verdict"]],
            "timing": {
                "read_s": round(sum(r.read_s for r in self.results), 4),
                "align_s": round(sum(r.align_s for r in self.results), 4),
                "fuse_s": round(sum(r.fuse_s for r in self.results), 4),
                "metrics_s": round(sum(r.metrics_s for r in self.results), 4),
                "by_metric_s": self._by_metric(),
                "pairs": len(self.results),
            },
        }

    def _by_metric(self) -> dict[str, float]:
        """Seconds per metric (and ``diagnostics``) over all pairs; they add up to metrics_s
        up to the scoring's own bookkeeping."""
        total: dict[str, float] = defaultdict(float)
        for r in self.results:
            for name, seconds in r.metric_s.items():
                total[name] += seconds
        return {name: round(seconds, 4) for name, seconds in total.items()}

    def write_json(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=1, allow_nan=True))

    def write_csv(self, path: str | Path) -> None:
        names = list(self.results[0].metrics) if self.results else []
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["pair", *names, "verdict"])
            for r in self.results:
                writer.writerow([r.name, *(r.metrics[n] for n in names), r.diagnostics["verdict"]])
            writer.writerow(["mean", *self.mean().values(), ""])


def plan_items(pair_set: PairSet, fused_dir: str | Path | None) -> list[EvalItem]:
    """Pair each source pair with its fused image (by stem) when ``fused_dir`` is given.

    Raises:
        DataError: the fused folder is missing, empty, lacks fused images for some pairs, or
            holds two files with one stem.
    """
    fused = _index_fused(Path(fused_dir), pair_set) if fused_dir is not None else {}
    return [
        EvalItem(
            name=p.name,
            path_a=str(p.path_a),
            path_b=str(p.path_b),
            path_fused=str(fused[p.name]) if fused else None,
            path_gt=str(p.path_gt) if p.path_gt else None,
        )
        for p in pair_set.pairs
    ]


def _index_fused(folder: Path, pair_set: PairSet) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"fused folder {folder} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
            if f.stem in found:
                raise DataError(f"fused folder {folder}: two files share stem {f.stem!r}: "
                                f"{found[f.stem].name}, {f.name}")
            found[f.stem] = f
    missing = [p.name for p in pair_set.pairs if p.name not in found]
    if missing:
        raise DataError(
            f"fused folder {folder} has no image for {len(missing)} of {len(pair_set.pairs)} "
            f"pairs of {pair_set.root}: {missing[:20]} (fused files pair with sources by stem)"
        )
    return found


def _load(path: str) -> Tensor:
    """(C, H, W) float32 0..255 from an image file."""
    return to_tensor255(read_image(path))


@dataclass
class Loaded:
    item: EvalItem
    a: Tensor
    b: Tensor
    fused: Tensor | None
    gt: Tensor | None
    read_s: float
    aligned: bool = False  # align_once ran: ``b`` is final, ``alignment`` its summary
    alignment: dict[str, float] | None = None


def align_once(x: Loaded, settings: EvalSettings) -> dict[str, float] | None:
    """:func:`align_item` the first time (it may warp ``x.b``), its summary afterwards."""
    if not x.aligned:
        x.alignment, x.aligned = align_item(x, settings), True
    return x.alignment


def read_item(item: EvalItem) -> Loaded:
    """Read one item's images; size mismatches between fused and sources raise DataError."""
    t0 = time.perf_counter()
    a, b = _load(item.path_a), _load(item.path_b)
    fused = _load(item.path_fused) if item.path_fused else None
    gt = _load(item.path_gt) if item.path_gt else None
    for label, path, img in (("fused", item.path_fused, fused), ("ground truth", item.path_gt, gt)):
        if img is not None and img.shape[1:] != a.shape[1:]:
            raise DataError(
                f"{label} image {path} is {img.shape[2]}x{img.shape[1]} but its sources "
                f"{item.path_a} and {item.path_b} are {a.shape[2]}x{a.shape[1]} (W x H)"
            )
    return Loaded(item, a, b, fused, gt, time.perf_counter() - t0)


def _diagnostic_gray(x: Tensor, conv: Convention) -> Tensor:
    rule = conv.colour if conv.colour.startswith("gray_") else "gray_matlab"
    return to_gray(x, rule)


def _metrics_of(batch: Sequence[Loaded], fused: Tensor, a: Tensor, b: Tensor,
                settings: EvalSettings, seconds: dict[str, float]) -> dict[str, Tensor]:
    """compute_metrics; a metric that cannot measure these images (e.g. MS-SSIM below 161 px)
    raises DataError naming the pairs, their size and the way out."""
    try:
        return compute_metrics(fused, a, b, settings.metrics, settings.convention, seconds)
    except ValueError as exc:
        names = ", ".join(repr(x.item.name) for x in batch[:5]) + (", ..." if len(batch) > 5
                                                                    else "")
        h, w = a.shape[-2:]
        raise DataError(f"pair(s) {names} ({w}x{h}, sources {batch[0].item.path_a} ...): "
                        f"{exc}; leave that metric out with --metrics") from exc


def score_batch(batch: Sequence[Loaded], settings: EvalSettings) -> list[PairResult]:
    """Fuse (if a method is set) and measure a batch of same-size pairs on ``settings.device``;
    B is measured for misalignment or registered onto A first when the settings ask."""
    t_align = time.perf_counter()
    alignment = [align_once(x, settings) for x in batch]
    align_s = (time.perf_counter() - t_align) / len(batch)
    device = torch.device(settings.device)
    a = torch.stack([x.a for x in batch]).to(device)
    b = torch.stack([x.b for x in batch]).to(device)
    t0 = time.perf_counter()
    fused = fused_batch(batch, a, b, settings)
    t1 = time.perf_counter()
    seconds: dict[str, float] = {}
    with shared_work():  # the diagnostics reuse the metrics' sums of products
        values = _metrics_of(batch, fused, a, b, settings, seconds)
        gray = [_diagnostic_gray(x, settings.convention) for x in (fused, a, b)]
        if batch[0].gt is not None:
            gt = _diagnostic_gray(torch.stack([x.gt for x in batch]).to(device),
                                  settings.convention)
            values["PSNR_GT"], values["SSIM_GT"] = psnr_gt(gray[0], gt), ssim_gt(gray[0], gt)
        t_diag = time.perf_counter()
        flags = degeneracy(*gray)
        values = {k: v.double().cpu() for k, v in values.items()}  # one sync for the batch
        seconds["diagnostics"] = time.perf_counter() - t_diag
    t2 = time.perf_counter()
    n = len(batch)
    return [
        PairResult(
            name=x.item.name,
            metrics={k: float(v[i]) for k, v in values.items()},
            diagnostics={
                **{k: round(float(flags[k][i]), 6) for k in ("CC_A", "CC_B", "SSIM_A", "SSIM_B")},
                "verdict": describe(flags, i),
            },
            read_s=x.read_s,
            fuse_s=(t1 - t0) / n,
            metrics_s=(t2 - t1) / n,
            alignment=alignment[i],
            align_s=align_s,
            metric_s={k: s / n for k, s in seconds.items()},
        )
        for i, x in enumerate(batch)
    ]


def group_batches(loaded: Sequence[Loaded], batch_size: int) -> list[list[Loaded]]:
    """Same-shape items together (sources, fused and ground truth), at most batch_size each."""
    groups: dict[tuple, list[Loaded]] = defaultdict(list)
    for x in loaded:
        key = (
            tuple(x.a.shape), tuple(x.b.shape),
            None if x.fused is None else tuple(x.fused.shape), x.gt is None,
        )
        groups[key].append(x)
    return [g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def score_items(
    items: Sequence[EvalItem],
    settings: EvalSettings,
    advance: Callable[[int], None] | None = None,
) -> list[PairResult]:
    """Read every item, then score them in batches; results in the items' order."""
    loaded = []
    for item in items:
        loaded.append(read_item(item))
        if advance:
            advance(1)
    batches = group_batches(loaded, settings.batch_size)
    workers = eval_workers(settings, len(loaded))
    if workers > 1:  # forked single-threaded processes (orchestrator.evaluation.workers)
        scored = score_in_workers(batches, settings, workers, score_batch,
                                  lambda x: align_once(x, settings), advance)
    else:
        scored = []
        for batch in batches:
            scored += score_batch(batch, settings)
            if advance:
                advance(len(batch))
    results = {r.name: r for r in scored}
    return [results[item.name] for item in items]


def evaluate_local(
    items: Sequence[EvalItem],
    settings: EvalSettings,
    advance: Callable[[int], None] | None = None,
) -> EvalReport:
    """In-process evaluation (the fast path for small sets: no Ray start-up)."""
    report = EvalReport(settings.convention, settings.method)
    report.results = score_items(items, settings, advance)
    return report


def metric_direction(name: str) -> bool:
    """True when higher is better."""
    return GT_METRICS[name] if name in GT_METRICS else METRICS[name].higher_is_better


def make_settings(
    metrics: Sequence[str],
    convention: str | Convention,
    method: str | None,
    colour_rule: str,
    device: str,
    out_dir: str | None = None,
    model: str | None = None,
    register: str | None = None,
    misalign_threshold: float = math.inf,
) -> EvalSettings:
    """Validated settings (unknown convention/metric names raise KeyError with the valid ones;
    an unknown ``register`` model or a negative ``misalign_threshold`` raise ValueError)."""
    from fusion_models.registration import MODELS

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if register is not None and register not in MODELS:
        raise ValueError(f"unknown registration model {register!r}; valid: {', '.join(MODELS)}")
    if not misalign_threshold >= 0:
        raise ValueError(f"misalign threshold must be >= 0 px, got {misalign_threshold}")
    return EvalSettings(
        metrics=tuple(metrics), convention=get_convention(convention), method=method,
        colour_rule=colour_rule, device=device, out_dir=out_dir, model=model,
        register=register, misalign_threshold=misalign_threshold,
    )
