"""Evaluate a pansharpening method on a :class:`~fusion_models.data.pansharpen.PanSet`.

A method is ``fn(ms_up, pan, ms) -> fused``: ``ms_up`` (B, C, H, W) the MS upsampled by the
project's rule, ``pan`` (B, 1, H, W), ``ms`` (B, C, H/ratio, W/ratio), fused (B, C, H, W), all
float on the 0..255 scale. The fused image is clamped to 0..255 before scoring (an 8-bit
product). Scores:

- with a reference (``ref/``, Wald protocol): ``SAM`` (degrees), ``ERGAS``, ``Q2n`` (Q4 for 3
  or 4 bands);
- always (no reference, computed from the set's MS and PAN as they are): ``D_lambda``, ``D_s``,
  ``QNR`` (``paper`` variant; see :mod:`fusion_models.metrics.pansharpen`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fusion_models.data.pansharpen import PanSet, load_pan_sample
from fusion_models.metrics.pansharpen import Variant, qnr, reduced_resolution
from fusion_models.pansharpen_baselines import PAN_BASELINES

PanMethod = Callable[[Tensor, Tensor, Tensor], Tensor]


def baseline_method(name: str) -> PanMethod:
    """A :data:`~fusion_models.pansharpen_baselines.PAN_BASELINES` entry as a method."""
    fn = PAN_BASELINES[name]
    return lambda ms_up, pan, ms: fn(ms_up, pan)


def iter_samples(pan_set: PanSet) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """(name, sample) for every sample, tensors batched to B = 1 (see ``load_pan_sample``)."""
    for sample in pan_set.samples:
        data = load_pan_sample(sample, pan_set.ratio)
        yield sample.name, {k: v.unsqueeze(0) for k, v in data.items()}


def score(fused: Tensor, data: dict[str, Tensor], ratio: int,
          variant: Variant = "paper") -> dict[str, float]:
    """Every index for one fused image (B = 1) against its sample's ``ref``/``ms``/``pan``."""
    fused = fused.detach().double().clamp(0.0, 255.0).cpu()
    out: dict[str, float] = {}
    if "ref" in data:
        out.update({k: float(v[0]) for k, v in
                    reduced_resolution(fused, data["ref"], ratio).items()})
    full = qnr(fused, data["ms"], data["pan"], ratio, variant=variant)
    out.update({k: float(v[0]) for k, v in full.items()})
    return out


def evaluate_pan(method: PanMethod, pan_set: PanSet,
                 variant: Variant = "paper") -> dict[str, float]:
    """Mean of every index (:func:`score`) over the set's samples.

    Returns:
        ``{index: mean}``; ``SAM``/``ERGAS``/``Q2n`` only when the set has ``ref/``.
    """
    if not len(pan_set):
        raise ValueError(f"{pan_set.root}: the set is empty")
    sums: dict[str, float] = {}
    with torch.no_grad():
        for _, data in iter_samples(pan_set):
            fused = method(data["ms_up"], data["pan"], data["ms"])
            for key, value in score(fused, data, pan_set.ratio, variant).items():
                sums[key] = sums.get(key, 0.0) + value
    return {k: v / len(pan_set) for k, v in sums.items()}
