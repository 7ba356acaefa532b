"""Reference-exact image fusion metrics, batched on any torch device.

Every metric has one signature, ``fn(fused, a, b, convention) -> Tensor[B]``, on (B, 1, H, W)
float tensors holding grey values 0..255 (see :mod:`fusion_models.metrics._spec`).
:func:`compute_metrics` is the entry point for whole images: it accepts grey or colour tensors
(B, C, H, W), C in {1, 3}, and brings colour to the grey metrics the way the chosen evaluator
does (``convention.colour``):

- ``gray_cv2`` (CDD): OpenCV BGR->GRAY on float (0.299 R + 0.587 G + 0.114 B), then rounded.
- ``gray_matlab`` (TANG): MATLAB ``rgb2gray`` on uint8 (0.298936 R + 0.587043 G + 0.114021 B),
  rounded.
- ``gray_pil`` (MPY): PIL ``convert("L")``, fixed point:
  ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``.
- ``vifb_per_channel`` (VIFB): a colour fused image is NEVER converted to grey: each metric is
  the mean over R, G, B of the metric on (fused_k, a_k, b_k), grey sources repeated; SF lays
  the channels side by side (one H x 3W strip). A grey fused image meets ``rgb2gray`` sources,
  rounded except for PSNR, RMSE and Qabf (metrics.md §7, "Gray-fused path").

Reference: ../shared/docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from fusion_models.metrics import basic, fmi, msssim, nabf, qabf, ssim, vif, vifb
from fusion_models.metrics._memo import shared_work
from fusion_models.metrics._spec import (
    PRESETS,
    Convention,
    MetricSpec,
    get_convention,
)

__all__ = [
    "METRICS",
    "PRESETS",
    "CDD_METRICS",
    "REPORT_METRICS",
    "Convention",
    "MetricSpec",
    "compute_metrics",
    "get_convention",
    "resolve_metric_names",
    "shared_work",
    "to_gray",
]

METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for module in (basic, ssim, vif, qabf, msssim, nabf, fmi, vifb)
    for spec in module.SPECS
}

#: The 12 metrics of the most-copied Python evaluator (CDDFuse's utils/Evaluator.py).
CDD_METRICS: tuple[str, ...] = (
    "EN", "SD", "SF", "AG", "MI", "MSE", "CC", "PSNR", "SCD", "VIF", "Qabf", "SSIM",
)

#: The sweep report's default table (``orchestrator report --metrics``): the CDD set without
#: MSE, CC and PSNR, so that the comparison table fits one screen width.
REPORT_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")

_VIFB_UNROUNDED = frozenset({"PSNR", "RMSE", "Qabf"})
_GRAY_WEIGHTS = {
    "gray_cv2": (0.299, 0.587, 0.114),
    "gray_matlab": (0.298936021293775, 0.587043074451121, 0.114020904255103),
}


def resolve_metric_names(names: str | Iterable[str] | None) -> list[str]:
    """Validate metric names; ``None``/``"all"`` means every registered metric.

    Raises:
        KeyError: naming the unknown metric(s) and listing the valid ones.
    """
    if names is None or names == "all":
        return list(METRICS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown metric(s) {unknown}; valid: {list(METRICS)}")
    return names


def to_gray(img: Tensor, rule: str, round_result: bool = True) -> Tensor:
    """Convert (B, 3, H, W) RGB 0..255 to (B, 1, H, W) grey the way an evaluator does.

    Args:
        img: RGB or grey tensor, 0..255; grey (C = 1) passes through unchanged.
        rule: ``gray_cv2``, ``gray_matlab``, ``gray_pil`` or ``vifb_per_channel`` (MATLAB
            rgb2gray, as VIFB applies it to 3-D sources of a grey fused image).
        round_result: round to integers (uint8 semantics); ignored for ``gray_pil``.
    """
    if img.shape[1] == 1:
        return img
    if img.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(img.shape)}")
    if rule == "gray_pil":
        q = img.round().to(torch.int64)
        y = (19595 * q[:, 0] + 38470 * q[:, 1] + 7471 * q[:, 2] + 32768) >> 16
        return y.unsqueeze(1).to(img.dtype)
    weights = _GRAY_WEIGHTS["gray_matlab" if rule == "vifb_per_channel" else rule]
    w = torch.tensor(weights, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    y = (img * w).sum(dim=1, keepdim=True)
    if round_result:
        # uint8 conversion: round half away from zero; values are non-negative.
        y = torch.floor(y + 0.5).clamp(0, 255)
    return y


def _channel(x: Tensor, k: int) -> Tensor:
    return x[:, k : k + 1] if x.shape[1] == 3 else x


def _vifb_colour(spec: MetricSpec, fused: Tensor, a: Tensor, b: Tensor, conv: Convention) -> Tensor:
    """VIFB's wrapper: channel-wise mean for colour fused images, tiled strip for SF."""
    if fused.shape[1] == 1:
        round_src = spec.name not in _VIFB_UNROUNDED
        ga = to_gray(a, conv.colour, round_src)
        gb = to_gray(b, conv.colour, round_src)
        return spec.fn(fused, ga, gb, conv)
    if spec.colour_layout == "tiled":
        strip = torch.cat([_channel(fused, k) for k in range(3)], dim=3)
        sa = torch.cat([_channel(a, k) for k in range(3)], dim=3)
        sb = torch.cat([_channel(b, k) for k in range(3)], dim=3)
        return spec.fn(strip, sa, sb, conv)
    values = [spec.fn(_channel(fused, k), _channel(a, k), _channel(b, k), conv) for k in range(3)]
    return torch.stack(values).mean(dim=0)


def compute_metrics(
    fused: Tensor,
    a: Tensor,
    b: Tensor,
    names: str | Sequence[str] | None = None,
    convention: str | Convention = "cdd",
    timings: dict[str, float] | None = None,
) -> dict[str, Tensor]:
    """Compute metrics on a batch of same-size images.

    Args:
        fused: (B, Cf, H, W) fused images, 0..255 floats, Cf in {1, 3}.
        a: (B, Ca, H, W) first sources (ir / CT / PET / near focus / under-exposed), 0..255.
        b: (B, Cb, H, W) second sources (vi / MRI / far focus / over-exposed), 0..255.
        names: metric names (``None`` or ``"all"``: every registered metric).
        convention: preset name (``cdd``, ``vifb``, ``tang``, ``mpy``) or a Convention.
        timings: when given, each metric's seconds are added to ``timings[name]`` (work it
            shares with an earlier metric counts for the earlier one; CUDA is synchronised).

    Returns:
        ``{name: Tensor[B]}`` float64 values on the inputs' device.
    """
    conv = get_convention(convention)
    metric_names = resolve_metric_names(names)
    _check_shapes(fused, a, b)
    fused, a, b = (x if x.is_floating_point() else x.float() for x in (fused, a, b))
    with shared_work():  # metrics reuse each other's intermediate results (see _memo)
        if conv.colour == "vifb_per_channel":
            def one(n: str) -> Tensor:
                return _vifb_colour(METRICS[n], fused, a, b, conv)
        else:
            gf, ga, gb = (to_gray(x, conv.colour) for x in (fused, a, b))

            def one(n: str) -> Tensor:
                return METRICS[n].fn(gf, ga, gb, conv)

        if timings is None:
            return {n: one(n) for n in metric_names}
        return {n: timed(one, n, timings, fused.device) for n in metric_names}


def timed(fn: Callable[[str], Tensor], name: str, timings: dict[str, float],
          device: torch.device) -> Tensor:
    """``fn(name)``, adding its wall seconds to ``timings[name]`` (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    value = fn(name)
    sync()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return value


def _check_shapes(fused: Tensor, a: Tensor, b: Tensor) -> None:
    for label, x in (("fused", fused), ("a", a), ("b", b)):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{label}: expected (B, 1|3, H, W), got {tuple(x.shape)}")
    inputs = (("fused", fused), ("a", a), ("b", b))
    sizes = {label: (x.shape[0], *x.shape[2:]) for label, x in inputs}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch/size mismatch between inputs: {sizes}")
