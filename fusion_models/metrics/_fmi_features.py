"""Feature maps for FMI (Haghighat's ``fmi.m``), see ../shared/docs/metrics.md §2 "FMI".

All functions take and return (B, 1, H, W) float64 tensors (the wavelet map is (B, 1, 2h, 2w)
with h, w the sub-band size). Features:

- ``none``: the image itself.
- ``gradient``: MATLAB ``gradient(im)`` with one output, i.e. the horizontal derivative only:
  central differences inside, one-sided differences on the first and last columns.
- ``edge``: MATLAB ``edge(im)`` defaults (Sobel, automatic threshold, thinning), 0/1 map.
- ``dct``: orthonormal 2-D DCT-II of the whole image (MATLAB ``dct2``).
- ``wavelet``: one-level ``dwt2(im, 'dmey')`` with MATLAB's default 'sym' extension
  (PyWavelets mode ``symmetric``), sub-bands tiled [cA, cH; cV, cD], rescaled to [0, 1].

Neither ``edge`` nor ``wavelet`` was checked against MATLAB (Octave could not run them for the
golden values). ``edge`` follows MATLAB's documented behaviour: 'replicate' borders, automatic
cutoff = 4 * mean of the squared gradient magnitude (its RMS-noise heuristic), and the
directional non-maximum suppression of MATLAB's long-published M-code for the Sobel method
(interior pixels only). ``wavelet`` uses PyWavelets' 62-tap ``dmey``; MATLAB's ``dmey`` filter
may be longer (102 taps are commonly reported), which would change the sub-band sizes and
borders.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.metrics._ops import correlate2d, gradient

__all__ = ["FEATURES", "dct2", "edge_sobel", "feature_map", "gradient_x", "wavelet_dmey"]

FEATURES = ("none", "dct", "wavelet", "edge", "gradient")
_MATLAB_EPS = 2.220446049250313e-16


def _dct_matrix(n: int, like: Tensor) -> Tensor:
    """(n, n) orthonormal DCT-II matrix: D[k, m] = a_k cos(pi (2m + 1) k / (2n))."""
    k = torch.arange(n, dtype=torch.float64, device=like.device).view(-1, 1)
    m = torch.arange(n, dtype=torch.float64, device=like.device).view(1, -1)
    d = torch.cos(math.pi * (2 * m + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = d[0] / math.sqrt(2.0)
    return d


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II of each image (MATLAB ``dct2``), (B, 1, H, W) -> same shape."""
    h, w = x.shape[-2:]
    return _dct_matrix(h, x) @ x @ _dct_matrix(w, x).t()


def gradient_x(x: Tensor) -> Tensor:
    """Horizontal derivative as MATLAB ``gradient`` (one output) / ``numpy.gradient(axis=-1)``."""
    return gradient(x)[1]


def edge_sobel(x: Tensor) -> Tensor:
    """Binary edge map of MATLAB ``edge(im)`` (Sobel, automatic threshold, thinning).

    Steps: ``bx``/``by`` = correlation with fspecial('sobel')'/8 and fspecial('sobel')/8 under
    'replicate' borders; ``b = bx^2 + by^2``; cutoff = 4 * mean(b) per image; an interior
    pixel is an edge where ``b > cutoff`` and it is a local maximum across the dominant
    gradient direction: (|bx| >= |by| - 100 eps and b[r, c-1] <= b[r, c] > b[r, c+1]) or
    (|by| >= |bx| - 100 eps and b[r-1, c] <= b[r, c] > b[r+1, c]). Border pixels are 0.

    Args:
        x: (B, 1, H, W) float64 image, any range.

    Returns:
        (B, 1, H, W) float64 map of 0 and 1.
    """
    op = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 8
    bx = correlate2d(x, op.t(), "same", "replicate").abs()
    by = correlate2d(x, op, "same", "replicate").abs()
    b = bx * bx + by * by
    cutoff = 4 * b.mean(dim=(1, 2, 3), keepdim=True)
    c = b[..., 1:-1, 1:-1]
    tol = 100 * _MATLAB_EPS
    bxc, byc = bx[..., 1:-1, 1:-1], by[..., 1:-1, 1:-1]
    across_x = (bxc >= byc - tol) & (b[..., 1:-1, :-2] <= c) & (c > b[..., 1:-1, 2:])
    across_y = (byc >= bxc - tol) & (b[..., :-2, 1:-1] <= c) & (c > b[..., 2:, 1:-1])
    inner = (c > cutoff) & (across_x | across_y)
    return F.pad(inner.to(x.dtype), (1, 1, 1, 1))


def _rerange(x: Tensor) -> Tensor:
    """Min-max rescale each image to [0, 1]; a constant image becomes all ones."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    scaled = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.ones_like(x))


def wavelet_dmey(x: Tensor) -> Tensor:
    """One-level dmey DWT (PyWavelets, mode ``symmetric``), tiled and rescaled to [0, 1].

    Runs on the CPU through PyWavelets and returns to ``x``'s device.

    Args:
        x: (B, 1, H, W) float64.

    Returns:
        (B, 1, 2h, 2w) float64 in [0, 1], h, w the sub-band size.
    """
    arr = x.detach().cpu().numpy()[:, 0]
    import pywt  # PyWavelets: imported here so the other metrics load without it

    c_a, (c_h, c_v, c_d) = pywt.dwt2(arr, "dmey", mode="symmetric", axes=(-2, -1))
    tiled = np.concatenate(
        [np.concatenate([c_a, c_h], axis=-1), np.concatenate([c_v, c_d], axis=-1)], axis=-2
    )
    return _rerange(torch.from_numpy(np.ascontiguousarray(tiled)).unsqueeze(1).to(x.device))


def feature_map(x: Tensor, feature: str) -> Tensor:
    """Apply one FMI feature (see module docstring) to (B, 1, H, W) float64 images."""
    if feature == "none":
        return x
    if feature == "dct":
        return dct2(x)
    if feature == "wavelet":
        return wavelet_dmey(x)
    if feature == "edge":
        return edge_sobel(x)
    if feature == "gradient":
        return gradient_x(x)
    raise ValueError(f"unknown FMI feature {feature!r}; valid: {list(FEATURES)}")
