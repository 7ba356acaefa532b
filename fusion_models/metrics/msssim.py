"""Multi-scale SSIM for fusion: Wang's MS-SSIM (per source and summed) and MEF-MS-SSIM.

Definitions: ../shared/docs/metrics.md §2 "MS-SSIM". ``convention.ms_ssim_variant`` picks:

- ``wang``: Wang, Simoncelli & Bovik (2003) MS-SSIM of each source against the fused image,
  5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), Gaussian 11/1.5 window
  (separable, valid), population statistics, K = (0.01, 0.03), 2x2 average pooling between
  scales with zero padding of odd sizes (``avg_pool2d(padding=size % 2)``), ReLU on the
  contrast-structure terms and on the last-scale SSIM; data_range 255; SUM over the sources.
- ``mpy``: the same with data_range 1 on 0..255 data, which is what the Python port computes
  (it multiplies 0..255 floats by 255 again and keeps data_range 255).
- ``mef``: TANG's ``analysis_ms_ssim``, i.e. MEF-MS-SSIM (Ma, Zeng & Wang 2015): 3 scales,
  weights (0.0448, 0.2856, 0.3001) renormalised, structure-only SSIM with C = (0.03 * 255)^2
  against a reference patch synthesised from both sources, 2x2 mean downsampling with
  symmetric padding. One value for the pair, not a sum.

Wang MS-SSIM needs the short side > 160 px, MEF-MS-SSIM >= 44 px; smaller images raise
``ValueError``. All statistics are computed in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.metrics._ops import (
    batch_chunks,
    box_mean_valid,
    check_images,
    correlate_separable,
    gaussian_taps,
    local_moments,
)
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec

__all__ = ["SPECS", "mef_ssim", "ms_ssim", "ms_ssim_pair", "ms_ssim_per_source"]

_WANG_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN, _SIGMA = 11, 1.5
_K1, _K2 = 0.01, 0.03
_MEF_WEIGHTS = tuple(w / sum(_WANG_WEIGHTS[:3]) for w in _WANG_WEIGHTS[:3])
_MEF_C = (0.03 * 255.0) ** 2
_MEF_ED_EPS = 0.001  # MEF-SSIM's "signal strength" offset
_EPS = 2.220446049250313e-16  # MATLAB eps


def _gauss_filter(x: Tensor) -> Tensor:
    """'valid' correlation of every channel with the normalised Gaussian 11/1.5 window."""
    g = gaussian_taps(_WIN, _SIGMA, dtype=x.dtype)
    return correlate_separable(x, g, g)


def _ssim_cs(ref: Tensor, dist: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term of each reference channel, (B, R) each."""
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    m = local_moments(ref, dist, _gauss_filter)
    cs_map = (2 * m.cov + c2) / (m.var_ref + m.var_dist + c2)
    ssim_map = (2 * m.mu_ref * m.mu_dist + c1) / (m.mu_ref**2 + m.mu_dist**2 + c1) * cs_map
    return ssim_map.mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))


def _ms_ssim(ref: Tensor, dist: Tensor, data_range: float) -> Tensor:
    """Wang MS-SSIM of every channel of ``ref`` (B, R, H, W) against ``dist`` (B, 1, H, W)."""
    if min(ref.shape[-2:]) <= (_WIN - 1) * 2 ** (len(_WANG_WEIGHTS) - 1):
        raise ValueError(f"MS-SSIM needs min(H, W) > 160, got {tuple(ref.shape[-2:])}")
    ref, dist = ref.to(torch.float64), dist.to(torch.float64)
    terms = []
    for level in range(len(_WANG_WEIGHTS)):
        ssim_val, cs = _ssim_cs(ref, dist, data_range)
        if level == len(_WANG_WEIGHTS) - 1:
            terms.append(torch.relu(ssim_val))
            break
        terms.append(torch.relu(cs))
        pad = [s % 2 for s in ref.shape[-2:]]
        ref = F.avg_pool2d(ref, kernel_size=2, padding=pad)
        dist = F.avg_pool2d(dist, kernel_size=2, padding=pad)
    weights = torch.tensor(_WANG_WEIGHTS, dtype=ref.dtype, device=ref.device).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** weights, dim=0)


def ms_ssim_pair(x: Tensor, y: Tensor, data_range: float = 255.0) -> Tensor:
    """Wang MS-SSIM of two images (symmetric), as in metrics.md §2 "MS-SSIM".

    Args:
        x: (B, 1, H, W) images, min(H, W) > 160.
        y: (B, 1, H, W) images on the same scale as ``x``.
        data_range: L in C1 = (0.01 L)^2, C2 = (0.03 L)^2 (255 for 0..255 data).

    Returns:
        (B,) float64 in [0, 1] (1 for identical images), on the inputs' device.
    """
    check_images(x, y)
    return torch.cat([_ms_ssim(x[c], y[c], data_range)[:, 0] for c in batch_chunks(x)])


def ms_ssim_per_source(
    fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]
) -> Tensor:
    """Wang MS-SSIM of each source against the fused image.

    Args:
        fused, a, b: (B, 1, H, W) grey images, 0..255, min(H, W) > 160.
        convention: ``ms_ssim_variant`` ``wang`` (data_range 255) or ``mpy`` (data_range 1).

    Returns:
        (B, 2) float64: column 0 = MS-SSIM(A, F), column 1 = MS-SSIM(B, F).

    Raises:
        ValueError: for the ``mef`` variant, which gives one value per pair (see
            :func:`mef_ssim`), or for images that are too small.
    """
    if convention.ms_ssim_variant == "mef":
        raise ValueError("MEF-MS-SSIM has no per-source values; use mef_ssim()")
    check_images(fused, a, b)
    data_range = 1.0 if convention.ms_ssim_variant == "mpy" else 255.0
    refs = torch.cat([a, b], dim=1)
    return torch.cat([_ms_ssim(refs[c], fused[c], data_range) for c in batch_chunks(fused)])


def ms_ssim(
    fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]
) -> Tensor:
    """The fusion MS-SSIM score of ``convention.ms_ssim_variant`` (metrics.md §2).

    Args:
        fused, a, b: (B, 1, H, W) grey images, 0..255.
        convention: ``wang``/``mpy``: sum of the two per-source MS-SSIMs, in [0, 2];
            ``mef``: MEF-MS-SSIM, in [-1, 1] (one value for the pair).

    Returns:
        (B,) float64 on the inputs' device. Higher is better.
    """
    if convention.ms_ssim_variant == "mef":
        return mef_ssim(fused, a, b, convention)
    return ms_ssim_per_source(fused, a, b, convention).sum(dim=1)


def _mef_downsample(x: Tensor) -> Tensor:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` then ``x(1:2:end, 1:2:end)``."""
    return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2)


def _mef_reference_coefficients(box_cov: dict[tuple[int, int], Tensor]) -> tuple[Tensor, Tensor]:
    """Per-window coefficients c_k with reference patch r = sum_k c_k (x_k - mu_k).

    Args:
        box_cov: box (population) (co)variances keyed (0, 0), (1, 1), (0, 1).

    Returns:
        ``(c0, c1)``, each (B, 1, h, w).
    """
    n = float(_WIN * _WIN)
    sd = [torch.sqrt(torch.clamp(n * box_cov[(k, k)], min=0)) for k in (0, 1)]
    ed = [s + _MEF_ED_EPS for s in sd]
    var_sum = box_cov[(0, 0)] + box_cov[(1, 1)] + 2 * box_cov[(0, 1)]
    consistency = (torch.sqrt(torch.clamp(n * var_sum, min=0)) + _EPS) / (sd[0] + sd[1] + _EPS)
    consistency = torch.where(consistency > 1, 1 - _EPS, consistency)
    p = torch.clamp(torch.tan(math.pi / 2 * consistency), max=10.0)
    w = [(e / _WIN) ** p + _EPS for e in ed]
    coef = [w[k] / (w[0] + w[1]) / ed[k] for k in (0, 1)]
    norm_sq = n * (
        coef[0] ** 2 * box_cov[(0, 0)]
        + coef[1] ** 2 * box_cov[(1, 1)]
        + 2 * coef[0] * coef[1] * box_cov[(0, 1)]
    )
    norm = torch.sqrt(torch.clamp(norm_sq, min=0))
    scale = torch.where(norm > 0, torch.maximum(ed[0], ed[1]) / torch.where(norm > 0, norm, 1), 1)
    return coef[0] * scale, coef[1] * scale


def _mef_scale(x0: Tensor, x1: Tensor, f: Tensor) -> Tensor:
    """MEF-SSIM at one scale: mean of the structural quality map, (B,)."""
    box = box_mean_valid(torch.cat([x0, x1, x0 * x0, x1 * x1, x0 * x1], dim=1), _WIN)
    mu0, mu1 = box[:, 0:1], box[:, 1:2]
    box_cov = {
        (0, 0): box[:, 2:3] - mu0 * mu0,
        (1, 1): box[:, 3:4] - mu1 * mu1,
        (0, 1): box[:, 4:5] - mu0 * mu1,
    }
    c0, c1 = _mef_reference_coefficients(box_cov)
    g = local_moments(torch.cat([x0, x1], dim=1), f, _gauss_filter)
    m0, m1 = g.mu_ref[:, 0:1], g.mu_ref[:, 1:2]
    cov01 = _gauss_filter(x0 * x1) - m0 * m1
    var_r = c0 * c0 * g.var_ref[:, 0:1] + c1 * c1 * g.var_ref[:, 1:2] + 2 * c0 * c1 * cov01
    cov_rf = c0 * g.cov[:, 0:1] + c1 * g.cov[:, 1:2]
    q = (2 * cov_rf + _MEF_C) / (var_r + g.var_dist + _MEF_C)
    return q.mean(dim=(1, 2, 3))


def mef_ssim(
    fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["tang"]
) -> Tensor:
    """MEF-MS-SSIM (Ma, Zeng & Wang 2015) = TANG's ``analysis_ms_ssim`` (metrics.md §2).

    Args:
        fused, a, b: (B, 1, H, W) grey images, 0..255, min(H, W) >= 44.
        convention: unused (the metric has no options); kept for the common signature.

    Returns:
        (B,) float64 on the inputs' device: product over 3 scales of the mean structural
        similarity to the synthesised reference, raised to the renormalised weights; 1 at
        best. Symmetric in ``a`` and ``b``.
    """
    del convention
    check_images(fused, a, b)
    if min(fused.shape[-2:]) / 2 ** (len(_MEF_WEIGHTS) - 1) < _WIN:
        raise ValueError(f"MEF-MS-SSIM needs min(H, W) >= 44, got {tuple(fused.shape[-2:])}")
    return torch.cat([_mef_ms_ssim(fused[c], a[c], b[c]) for c in batch_chunks(fused)])


def _mef_ms_ssim(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    x0, x1, f = (t.to(torch.float64) for t in (a, b, fused))
    result = torch.ones(f.shape[0], dtype=torch.float64, device=f.device)
    for level, weight in enumerate(_MEF_WEIGHTS):
        if level:
            x0, x1, f = (_mef_downsample(t) for t in (x0, x1, f))
        result = result * _mef_scale(x0, x1, f) ** weight
    return result


SPECS: list[MetricSpec] = [
    MetricSpec(
        "MS_SSIM", ms_ssim, True,
        "multi-scale SSIM: Wang (sum over sources) or MEF-MS-SSIM (ms_ssim_variant)",
    ),
]
