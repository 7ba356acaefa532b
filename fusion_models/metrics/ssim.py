"""SSIM for fusion (every evaluator's variant) and full-reference PSNR/SSIM.

Definitions: ../shared/docs/metrics.md §2 "SSIM (fusion)" and "Full-reference metrics".
Per source X, SSIM(X, F) = mean over windows of
((2 mu_X mu_F + C1)(2 sigma_XF + C2)) / ((mu_X^2 + mu_F^2 + C1)(sigma_X^2 + sigma_F^2 + C2)),
C1 = (0.01 L)^2, C2 = (0.03 L)^2; the variants (``Convention.ssim_variant``):

========== ======================= ========== ===== ======================== =======
variant    window                  covariance L     border                   combine
========== ======================= ========== ===== ======================== =======
cdd        7x7 uniform             sample     2     valid                    sum
wang       Gaussian 11, sigma 1.5  population 255   valid                    mean
vifb       Gaussian 11, sigma 1.5  population 255   valid                    sum
mpy        Gaussian 11, sigma 1.5  population 1     valid                    sum
tang_mean  Gaussian 11, sigma 1.5  population 1     replicate pad, full map  mean
========== ======================= ========== ===== ======================== =======

``cdd`` equals ``skimage.metrics.structural_similarity(f, x, data_range=2)`` on float64 (~1e-12).
Local moments are float64, filtered strip by strip by separable direct sums
(:func:`fusion_models.metrics._ops.windowed_sums`; the box windows sum integers exactly).

``mpy`` keeps one float32 artefact of its evaluator on purpose: pytorch_msssim builds the
Gaussian taps in float32, and their float64 sum is 1 - 3.1e-8. With MPY's tiny constants
(C2 = 9e-4 on 0..255 data) that deficit shows as a variance c^2 * 3.1e-8 in flat regions of
level c and moves the score by ~2e-5; with the float32 taps (and float64 arithmetic) we
reproduce MPY's published numbers to ~4e-6 (its remaining float32 rounding noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fusion_models.metrics._ops import (
    Moments,
    check_images,
    gaussian_taps,
    over_chunks,
    pad2d,
    pixel_sum,
    windowed_sums,
)
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec, SsimVariant

K1, K2 = 0.01, 0.03


@dataclass(frozen=True)
class SsimSetting:
    """One SSIM variant's knobs (see the module table)."""

    window: Literal["box7", "gauss11", "gauss11_f32"]
    sample_cov: bool
    data_range: float
    border: Literal["valid", "replicate"]
    combine: Literal["sum", "mean"]


VARIANTS: dict[str, SsimSetting] = {
    "cdd": SsimSetting("box7", True, 2.0, "valid", "sum"),
    "wang": SsimSetting("gauss11", False, 255.0, "valid", "mean"),
    "vifb": SsimSetting("gauss11", False, 255.0, "valid", "sum"),
    "mpy": SsimSetting("gauss11_f32", False, 1.0, "valid", "sum"),
    "tang_mean": SsimSetting("gauss11", False, 1.0, "replicate", "mean"),
}


def _float32_taps() -> list[float]:
    """The 11-tap sigma-1.5 Gaussian exactly as pytorch_msssim builds it (float32)."""
    r = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    return (g / g.sum()).tolist()


def _taps(setting: SsimSetting) -> tuple[list[float], float]:
    """1-D window taps and the window's total weight (the sums over that many pixels)."""
    if setting.window == "box7":
        return [1.0] * 7, 49.0  # integer sums: exact for integer images
    if setting.window == "gauss11":
        return gaussian_taps(11, 1.5).tolist(), 1.0
    return _float32_taps(), 1.0


def _ssim_map_sum(m: Moments, c1: float, c2: float, norm: float) -> Tensor:
    """Sum of the SSIM map over a strip's pixels -> (B, R); overwrites the moments.

    The map is unchanged when the moments are W times the means, variances and covariances
    (window sums, see :func:`~fusion_models.metrics._stats.split_moments_`) and the constants
    are c1 = C1 W^2, c2 = C2 W.

    Few passes over the (B, R, ...) maps: the fused image's terms are formed once on its one
    channel and broadcast (mu_F^2 + C1, norm var_F + C2).
    """
    c1_t = torch.tensor(c1, dtype=m.mu_ref.dtype)
    c2_t = torch.tensor(c2, dtype=m.mu_ref.dtype)
    lum_num = torch.addcmul(c1_t, m.mu_ref, m.mu_dist, value=2.0)
    lum_den = torch.addcmul(m.mu_dist.square().add_(c1), m.mu_ref, m.mu_ref)
    con_num = torch.add(c2_t, m.cov, alpha=2.0 * norm)
    con_den = torch.add(m.var_dist.mul_(norm).add_(c2), m.var_ref, alpha=norm)
    return pixel_sum(lum_num.mul_(con_num).div_(lum_den.mul_(con_den)))


def ssim_index(
    dist: Tensor, *refs: Tensor, variant: SsimVariant = "cdd", dtype: torch.dtype = torch.float64
) -> Tensor:
    """Mean SSIM map of ``dist`` against each reference channel.

    Args:
        dist: (B, 1, H, W) float, 0..255 (the fused image).
        *refs: (B, R, H, W) float, 0..255 (sources or ground truth), one or more.
        variant: a key of :data:`VARIANTS`.
        dtype: float64 (reference-exact) or float32 (~1e-6; about twice as fast on CPUs).

    Returns:
        (B, R) float64, at most 1 per reference. Images smaller than the window raise.
    """
    setting = VARIANTS[variant]
    taps, weight = _taps(setting)
    n = len(taps)
    if setting.border == "valid" and min(dist.shape[-2:]) < n:
        raise ValueError(f"SSIM '{variant}' needs images of at least {n}x{n}")
    c1 = (K1 * setting.data_range) ** 2
    c2 = (K2 * setting.data_range) ** 2
    norm = n * n / (n * n - 1) if setting.sample_cov else 1.0
    if setting.border == "replicate":  # MATLAB's full map = valid map of the padded images
        pad = (n // 2,) * 4
        dist, refs = pad2d(dist, pad, "replicate"), [pad2d(x, pad, "replicate") for x in refs]
    windows = (dist.shape[-2] - n + 1) * (dist.shape[-1] - n + 1)

    def chunk(d: Tensor, *x: Tensor) -> Tensor:
        # the moments are window sums (weight times the means): constants scaled to match
        sums = windowed_sums(x, d, taps,
                             lambda m: _ssim_map_sum(m, c1 * weight**2, c2 * weight, norm),
                             weight=weight, dtype=dtype)
        return sums / windows

    return over_chunks(chunk, dist, *refs)


def ssim(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]) -> Tensor:
    """Fusion SSIM: SSIM(A, F) and SSIM(B, F) combined as ``convention.ssim_variant`` says.

    Args:
        fused, a, b: (B, 1, H, W) float, grey values 0..255.
        convention: uses ``ssim_variant``.

    Returns:
        (B,) float64: up to 2 for the summing variants (cdd, vifb, mpy), up to 1 for the
        averaging ones (wang, tang_mean).
    """
    check_images(fused, a, b)
    per_source = ssim_index(fused, a, b, variant=convention.ssim_variant)
    if VARIANTS[convention.ssim_variant].combine == "sum":
        return per_source.sum(dim=1)
    return per_source.mean(dim=1)


def ssim_gt(fused: Tensor, gt: Tensor) -> Tensor:
    """Full-reference SSIM(F, G): Wang et al., Gaussian 11/1.5, population cov., L = 255, valid.

    Args:
        fused, gt: (B, 1, H, W) float, 0..255.

    Returns:
        (B,) float64 <= 1.
    """
    check_images(fused, gt, min_size=11)
    return ssim_index(fused, gt, variant="wang")[:, 0]


def psnr_gt(fused: Tensor, gt: Tensor) -> Tensor:
    """Full-reference PSNR = 10 log10(255^2 / mean((F - G)^2)).

    Args:
        fused, gt: (B, 1, H, W) float, 0..255.

    Returns:
        (B,) float64 dB (inf for identical images).
    """
    check_images(fused, gt)
    err = (fused.to(torch.float64) - gt.to(torch.float64)).square().mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / err)


SPECS: list[MetricSpec] = [
    MetricSpec("SSIM", ssim, True, "structural similarity with the two sources"),
]
