"""VIFB's extra metrics: CE, EI, RMSE, Qcb and Qcv, as VIFB's MATLAB code computes them.

Definitions: ../shared/docs/metrics.md §7 (table "The other three metrics ...") and §2
("Qcb (Chen-Blum) and Qcv (Chen-Varshney)", "Other VIFB extras"). VIFB calls
``metricsX(visible, infrared, fused)``; every metric here is symmetric in the two sources, so
``a``/``b`` order does not matter. All five are per 2-D channel; VIFB's colour handling
(mean over R, G, B) happens in :func:`fusion_models.metrics.compute_metrics`.

- ``CE`` (lower is better): mean over the sources of sum_k P_X(k) log2(P_X(k) / P_F(k)) over
  the grey levels where both 256-bin histograms are non-zero.
- ``EI``: mean Sobel magnitude of the fused image, ``imfilter(F, fspecial('sobel'))`` and its
  transpose (correlation, 'replicate' border).
- ``RMSE`` (lower is better): VIFB's ``(sqrt(SSE(A, F)) + sqrt(SSE(B, F))) / (2 H W)`` (a bug
  kept for table compatibility, VIFB issue #15).
- ``Qcb``: Chen-Blum contrast preservation with a DoG CSF in the frequency domain.
- ``Qcv`` (lower is better): Chen-Varshney regional CSF-weighted squared difference.

Qcb and Qcv first rescale every image to round(255 (x - min) / (max - min)) (an all-zero image
stays; any other constant image gives NaN, as in MATLAB); their frequency-domain filtering uses
the real part of the inverse FFT; ``freqspace`` and ``blkproc`` (zero-padded partial blocks)
follow MATLAB's documented semantics. Computed in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.metrics._ops import (
    batch_chunks,
    check_images,
    correlate2d,
    correlate_separable,
    grey_levels,
    histogram256,
    sobel,
)
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec

__all__ = ["SPECS", "cross_entropy", "edge_intensity", "qcb", "qcv", "rmse"]

_BLOCK = 16  # Qcv region size
_QCV_ALPHA = 5  # Qcv saliency exponent
_CONTRAST_Z = 1e-4  # Qcb: C' = C^3 / (C^2 + Z)


def _f64(*xs: Tensor) -> list[Tensor]:
    return [x.to(torch.float64) for x in xs]


def _histogram(x: Tensor) -> Tensor:
    """Normalised 256-bin histograms of the integer grey levels of (B, 1, H, W) -> (B, 256)."""
    levels = grey_levels(x).flatten(1)
    return histogram256(levels) / levels.shape[-1]


def _kl_bits(p: Tensor, q: Tensor) -> Tensor:
    """sum P log2(P / Q) over bins where both are non-zero, (B,)."""
    both = (p > 0) & (q > 0)
    ratio = torch.where(both, p / torch.where(both, q, 1.0), 1.0)
    return (p * torch.log2(ratio)).sum(dim=1)


def cross_entropy(
    fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["vifb"]
) -> Tensor:
    """VIFB ``Cross_entropy`` (metrics.md §7): mean of KL(P_A || P_F) and KL(P_B || P_F), bits.

    Args:
        fused, a, b: (B, 1, H, W) grey images with integer values 0..255 (rounded if not).
        convention: unused; kept for the common signature.

    Returns:
        (B,) float64 >= 0 on the inputs' device; 0 when the histograms match. Lower is better.
    """
    del convention
    check_images(fused, a, b)
    p_f = _histogram(fused)
    return (_kl_bits(_histogram(a), p_f) + _kl_bits(_histogram(b), p_f)) / 2


def edge_intensity(
    fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["vifb"]
) -> Tensor:
    """VIFB ``Edge_intensity`` (metrics.md §7): mean Sobel gradient magnitude of the fused image.

    Args:
        fused: (B, 1, H, W) grey, 0..255. a, b, convention: unused (common signature).

    Returns:
        (B,) float64 >= 0 on the input's device. Higher is better.
    """
    del a, b, convention
    check_images(fused)
    (x,) = _f64(fused)
    op = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    gx = correlate2d(x, op, "same", "replicate")
    gy = correlate2d(x, op.t(), "same", "replicate")
    return torch.sqrt(gx * gx + gy * gy).mean(dim=(1, 2, 3))


def rmse(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["vifb"]) -> Tensor:
    """VIFB ``Rmse`` (metrics.md §7): mean over sources of sqrt(SSE(X, F)) / (H W).

    Args:
        fused, a, b: (B, 1, H, W) grey, 0..255. convention: unused (common signature).

    Returns:
        (B,) float64 >= 0 on the inputs' device (the true mean RMSE / sqrt(H W)). Lower is
        better.
    """
    del convention
    check_images(fused, a, b)
    f, xa, xb = _f64(fused, a, b)
    n_pix = f.shape[-2] * f.shape[-1]
    sse_a = ((xa - f) ** 2).sum(dim=(1, 2, 3))
    sse_b = ((xb - f) ** 2).sum(dim=(1, 2, 3))
    return (torch.sqrt(sse_a) + torch.sqrt(sse_b)) / n_pix / 2


def _normalize1(x: Tensor) -> Tensor:
    """Z. Liu's ``normalize1``: round(255 (x - min) / (max - min)); all-zero images unchanged."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    scaled = torch.floor((x - lo) / (hi - lo) * 255 + 0.5)  # MATLAB round, values >= 0
    return torch.where((hi == 0) & (lo == 0), x, scaled)


def _radial_frequency(h: int, w: int, like: Tensor, divisor: float) -> Tensor:
    """r = sqrt(u^2 + v^2) on MATLAB's ``freqspace([h, w], 'meshgrid')`` grid, u scaled by
    w / divisor and v by h / divisor; (h, w), zero frequency at (floor(h/2), floor(w/2))."""
    def axis(n: int) -> Tensor:
        k = torch.arange(n, dtype=torch.float64, device=like.device)
        return (k - n // 2) * (2.0 / n) * (n / divisor)

    v, u = torch.meshgrid(axis(h), axis(w), indexing="ij")
    return torch.sqrt(u * u + v * v)


def _csf_filter(x: Tensor, csf: Tensor) -> Tensor:
    """``real(ifft2(ifftshift(fftshift(fft2(x)) .* csf)))`` for a centred CSF (h, w)."""
    spectrum = torch.fft.fft2(x) * torch.fft.ifftshift(csf)
    return torch.fft.ifft2(spectrum).real


def _gauss_same(x: Tensor, sigma: float) -> Tensor:
    """``filter2(G, x, 'same')`` with the unnormalised 31x31 Gaussian
    exp(-(i^2 + j^2) / (2 sigma^2)) / (2 pi sigma^2), zero padding (separable)."""
    t = torch.arange(-15, 16, dtype=torch.float64)
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    return correlate_separable(x, g / (2 * math.pi * sigma * sigma), g, "same", "zeros")


def _contrast(x: Tensor) -> Tensor:
    """Qcb's transformed local contrast C' = |C|^3 / (|C|^2 + Z), C = (G2 * x) / (G4 * x) - 1."""
    c = torch.abs(_gauss_same(x, 2.0) / _gauss_same(x, 4.0) - 1)
    return c**3 / (c**2 + _CONTRAST_Z)


def _preserved(c_x: Tensor, c_f: Tensor) -> Tensor:
    """MATLAB's ``(cx ./ cf) .* mask + (cf ./ cx) .* (1 - mask)``, mask = cx < cf."""
    mask = (c_x < c_f).to(c_x.dtype)
    return (c_x / c_f) * mask + (c_f / c_x) * (1 - mask)


def qcb(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["vifb"]) -> Tensor:
    """Chen-Blum Qcb as in VIFB's ``metricsQcb`` (metrics.md §2 and §7).

    DoG CSF S(r) = exp(-(r/15.3870)^2) - 0.7622 exp(-(r/1.3456)^2), r on the ``freqspace``
    grid with u scaled by W/30 and v by H/30; contrast from unnormalised 31x31 Gaussians
    (sigma 2 and 4); saliency-weighted contrast preservation, averaged over all pixels.

    Args:
        fused, a, b: (B, 1, H, W) grey, 0..255. convention: unused (common signature).

    Returns:
        (B,) float64 in [0, 1] on the inputs' device (NaN where MATLAB divides 0 by 0, e.g. a
        constant image). Higher is better.
    """
    del convention
    check_images(fused, a, b)
    return torch.cat([_qcb(fused[c], a[c], b[c]) for c in batch_chunks(fused)])


def _qcb(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    imgs = [_normalize1(x) for x in _f64(a, b, fused)]
    r = _radial_frequency(imgs[0].shape[-2], imgs[0].shape[-1], imgs[0], 30.0)
    csf = torch.exp(-((r / 15.3870) ** 2)) - 0.7622 * torch.exp(-((r / 1.3456) ** 2))
    c_a, c_b, c_f = (_contrast(_csf_filter(x, csf)) for x in imgs)
    sal = c_a * c_a + c_b * c_b
    q = (c_a * c_a) / sal * _preserved(c_a, c_f) + (c_b * c_b) / sal * _preserved(c_b, c_f)
    return q.mean(dim=(1, 2, 3))


def _block_sums(x: Tensor) -> Tensor:
    """Sums over 16x16 blocks, partial blocks zero-padded (``blkproc``), (B, 1, h, w)."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (-w) % _BLOCK, 0, (-h) % _BLOCK))
    n, c, hp, wp = x.shape
    return x.reshape(n, c, hp // _BLOCK, _BLOCK, wp // _BLOCK, _BLOCK).sum(dim=(3, 5))


def _sobel_magnitude_same(x: Tensor) -> Tensor:
    """Sobel magnitude with zero-padded 'same' filtering (``filter2`` and ``conv2`` agree)."""
    sx, sy = sobel(x)
    return torch.sqrt(sx * sx + sy * sy)


def qcv(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["vifb"]) -> Tensor:
    """Chen-Varshney Qcv as in VIFB's ``metricsQcv`` (metrics.md §2 and §7).

    Region saliency lambda = sum of g^5 over 16x16 blocks (g = Sobel magnitude of the source);
    D = block mean (over 256 padded pixels) of the squared Mannos-Sakrison-filtered difference
    X - F (CSF 2.6 (0.0192 + 0.144 r) exp(-(0.144 r)^1.1), u scaled by W/8, v by H/8);
    Qcv = sum(lambda_A D_A + lambda_B D_B) / sum(lambda_A + lambda_B).

    Args:
        fused, a, b: (B, 1, H, W) grey, 0..255. convention: unused (common signature).

    Returns:
        (B,) float64 >= 0 on the inputs' device, unbounded (hundreds on 0..255 data). Lower
        is better.
    """
    del convention
    check_images(fused, a, b)
    return torch.cat([_qcv(fused[c], a[c], b[c]) for c in batch_chunks(fused)])


def _qcv(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    xa, xb, f = (_normalize1(x) for x in _f64(a, b, fused))
    r = _radial_frequency(f.shape[-2], f.shape[-1], f, 8.0)
    csf = 2.6 * (0.0192 + 0.144 * r) * torch.exp(-((0.144 * r) ** 1.1))
    num = torch.zeros(f.shape[0], dtype=torch.float64, device=f.device)
    den = torch.zeros_like(num)
    for x in (xa, xb):
        sal = _block_sums(_sobel_magnitude_same(x) ** _QCV_ALPHA)
        dist = _block_sums(_csf_filter(x - f, csf) ** 2) / (_BLOCK * _BLOCK)
        num = num + (sal * dist).sum(dim=(1, 2, 3))
        den = den + sal.sum(dim=(1, 2, 3))
    return num / den


SPECS: list[MetricSpec] = [
    MetricSpec("CE", cross_entropy, False, "VIFB cross entropy: mean KL(source || fused), bits"),
    MetricSpec("EI", edge_intensity, True, "VIFB edge intensity: mean Sobel magnitude of fused"),
    MetricSpec("RMSE", rmse, False, "VIFB Rmse: mean sqrt(SSE)/(H*W) over sources (VIFB bug)"),
    MetricSpec("Qcb", qcb, True, "Chen-Blum contrast-preservation metric (VIFB)"),
    MetricSpec("Qcv", qcv, False, "Chen-Varshney CSF-weighted regional distortion (VIFB)"),
]
