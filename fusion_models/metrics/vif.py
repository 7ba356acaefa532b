"""VIF: Sheikh-Bovik pixel-domain multiscale visual information fidelity, summed over sources.

Definition: ../shared/docs/metrics.md §2 "VIF / VIFF" (CDD's ``VIFF``, TANG/MPY's ``VIF``;
not Han et al.'s VIFF). Each source is the reference, the fused image the distorted signal;
4 scales with MATLAB ``fspecial`` Gaussians N = 2^(5-s)+1, sigma = N/5, 'valid' filtering,
filter + keep every second row/column before scales 2..4, sigma_n^2 = 2, eps = 1e-10, and a
NaN ratio (flat source: 0/0) reported as 1 as CDD does.

How it is computed (float64 local statistics: float32 E[x^2]-E[x]^2 costs up to 4e-5,
metrics.md §3):

* The images of a scale are centred on (approximate) global means, which changes no variance
  or covariance (VIF uses no means) and shrinks the rounding of E[x^2] - E[x]^2.
* The eight moment images A, B, F, A^2, B^2, F^2, AF, BF are filtered together by separable
  direct sums (the reference's arithmetic, not an FFT), strip by strip on the CPU so that the
  work stays in cache (:func:`fusion_models.metrics._ops.windowed_sums`), and the local
  variances, covariances and VIF terms are formed in place. Memory traffic, not arithmetic,
  bounds this metric on CPUs.
* Between scales, the 'valid' filter-and-decimate computes only the kept outputs.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from fusion_models.metrics._gemm import gemm_decimate
from fusion_models.metrics._ops import (
    Moments,
    check_images,
    correlate_1d,
    gaussian_taps,
    over_chunks,
    pixel_sum,
    windowed_sums,
)
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec

logger = logging.getLogger(__name__)

SIGMA_N_SQ = 2.0
EPS = 1e-10
_BELOW_EPS = math.nextafter(EPS, 0.0)  # threshold keeps x > this, i.e. x >= EPS


def _window(scale: int) -> list[float]:
    """Taps g with outer(g, g) = fspecial('gaussian', N, N/5), N = 2^(5-scale)+1 (none zeroed)."""
    n = 2 ** (5 - scale) + 1
    return gaussian_taps(n, n / 5.0).tolist()


def _log_sum(x: Tensor) -> Tensor:
    """sum of log(x) over the pixel dimensions, (B, R, ...pixels) -> (B, R); overwrites x.

    Here 1 <= x <= 1 + (a local variance) / sigma_n^2 (below ~8,200 for 0..255 grey values; the
    numerator's argument is the smaller), so products of up to 8 neighbours along the last
    dimension stay far from overflow and one logarithm serves 8 pixels: the same sum up to
    the products' rounding (~1e-15 per term), with the logarithms a small part of the time.
    """
    for _ in range(3):
        half = x.shape[-1] // 2
        if x.shape[-1] % 2 or half == 0:
            break
        x = torch.mul(x[..., :half], x[..., half:])
    return pixel_sum(x.log_())


def _scale_terms(m: Moments) -> Tensor:
    """Sums of the numerator and denominator terms (natural log) -> (B, 2, 2); overwrites m.

    The reference's clean-ups (s1 < eps: g = 0 and s1 = 0; s2 < eps: g = 0; g < 0: g = 0;
    sv >= eps) leave a numerator term only where s1, s2 >= eps and s12 > 0, and a
    denominator term only where s1 >= eps; negative variances fail those tests as the
    reference's clamping to 0 does. Here, in few passes over the (B, 2, ...) maps and no
    masks: s12 is clamped to [0, hi] with hi = 0 where s2 < eps (one 1-channel map), so g = 0
    wherever the reference zeroes it because of s2 or s12, and s1 < eps is zeroed, so
    g^2 s1 = 0 there (g = s12 / eps stays finite) and the denominator term is log(1) = 0.
    """
    s1, s2, s12 = m.var_ref, m.var_dist, m.cov
    zero, one = s2.new_zeros(()), s2.new_ones(())
    hi = torch.where(s2 >= EPS, s2.new_tensor(math.inf), zero)  # (B, 1, ...): one channel
    s12 = torch.clamp(s12, min=zero, max=hi, out=s12)
    s1 = torch.threshold(s1, _BELOW_EPS, 0.0, out=s1)  # s1 < eps -> 0
    g = torch.div(s12, torch.add(s1, EPS, out=m.mu_ref), out=m.mu_ref)
    s2p = s2.add_(SIGMA_N_SQ)  # sv + sigma_n^2 = max(s2 - g s12, eps) + sigma_n^2
    sv = torch.addcmul(s2p, g, s12, value=-1.0, out=s12).clamp_min_(EPS + SIGMA_N_SQ)
    # log(1 + x) rather than log1p(x): ~2.5x faster on CPUs, absolute error ~1e-16 per term
    num = torch.addcdiv(one, g.square_().mul_(s1), sv, out=g)
    den = torch.add(one, s1, alpha=1.0 / SIGMA_N_SQ, out=s1)
    return torch.stack([_log_sum(num), _log_sum(den)], dim=-1)


def _decimate(x: Tensor, taps: list[float]) -> Tensor:
    """Filter (B, 1, H, W) with outer(taps, taps), 'valid', keep every second row and column;
    float64 (banded matrix products on the CPU, direct sums elsewhere)."""
    if x.device.type == "cpu" and min(x.shape[-2:]) >= len(taps):
        return gemm_decimate(x, taps)
    return correlate_1d(correlate_1d(x.to(torch.float64), taps, -1, step=2), taps, -2, step=2)


def _vifp_chunk(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Multiscale VIF-p ratios of (B, 1, H, W) images -> (B, 2) float64 (sources A, B)."""
    images = [a, b, fused]
    total = torch.zeros(a.shape[0], 2, 2, dtype=torch.float64, device=a.device)
    for scale in range(1, 5):
        taps = _window(scale)
        if scale > 1:  # 'valid' filter in float64, keep every second row and column
            images = [_decimate(x, taps) for x in images]
        sums = windowed_sums(images[:2], images[2], taps, _scale_terms, centre=True)
        if sums is not None:  # None: no window fits, the scale adds nothing
            total += sums
    return total[..., 0] / total[..., 1]  # log10 in both: the ln(10) cancels


def vifp_pair(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """VIF-p(A, F) and VIF-p(B, F) separately.

    Args:
        fused, a, b: (B, 1, H, W) float, grey values 0..255.

    Returns:
        (B, 2) float64, NaN (flat source) mapped to 1. Images under ~40 px lose the coarse
        scales (their windows do not fit) and those scales add nothing.
    """
    check_images(fused, a, b)
    ratio = over_chunks(_vifp_chunk, fused, a, b)
    flat = torch.isnan(ratio)
    if logger.isEnabledFor(logging.DEBUG) and bool(flat.any()):
        logger.debug("VIF: flat source in %d case(s), reported as 1", int(flat.sum()))
    return torch.where(flat, 1.0, ratio)


def vif(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]) -> Tensor:
    """VIF = VIF-p(A, F) + VIF-p(B, F) (metrics.md, VIF; identical in every preset).

    Args:
        fused, a, b: (B, 1, H, W) float, grey values 0..255.
        convention: accepted for the common signature; VIF has no options.

    Returns:
        (B,) float64, typically 0..2 (can exceed 1 per source for contrast-enhancing fusion).
    """
    return vifp_pair(fused, a, b).sum(dim=1)


SPECS: list[MetricSpec] = [
    MetricSpec("VIF", vif, True, "pixel-domain multiscale VIF, summed over the two sources"),
]
