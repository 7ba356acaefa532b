"""Toet's contrast (ratio-of-low-pass) pyramid and the per-level fusion rules of CNN-CP.

A. Toet, "Image fusion by a ratio of low-pass pyramid", Pattern Recognition Letters 9(4), 1989.
Gaussian levels ``G_0 = x``, ``G_{l+1} = REDUCE(G_l)`` (5-tap binomial [1 4 6 4 1]/16,
replicate borders, keep every second row/column: side n -> ceil(n/2)). Contrast levels

    C_l = (G_l + eps) / (EXPAND(G_{l+1}) + eps) - 1,   l = 0 .. L-1,   top = G_L,

and the exact inverse ``G_l = (C_l + 1) * (EXPAND(G_{l+1}) + eps) - eps``. ``eps`` (> 0) keeps
the ratio finite over the black background of CT/MRI slices (Toet's pyramid has no eps: a
zero low-pass value makes it undefined). EXPAND zero-inserts, blurs with 2x the kernel and
crops to the finer level's size; every output pixel gets weights summing to exactly 1.

Everything works on (B, 1, H, W) float tensors, per image (no statistic crosses the batch).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

BaseRule = Literal["weighted", "average"]
DetailRule = Literal["similarity", "weighted", "energy"]

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur5(x: Tensor, gain: float = 1.0) -> Tensor:
    """Separable [1 4 6 4 1]/16 * gain blur, 'valid' (each side shrinks by 4)."""
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) * (gain / 16.0)
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    return F.conv2d(x, k.view(1, 1, 5, 1))


def reduce(x: Tensor) -> Tensor:
    """Blur (replicate borders) and keep even rows/columns: (B,1,h,w) -> (B,1,ceil h/2,ceil w/2)."""
    return _blur5(F.pad(x, (2, 2, 2, 2), mode="replicate"))[..., ::2, ::2]


def expand(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Inverse-direction resampling of :func:`reduce`: (B,1,h,w) -> (B,1,*size), size <= 2h, 2w.

    The coarse image is replicate-padded by 1, zero-inserted (coarse pixel i lands on fine
    pixel 2i) and blurred with gain 4, so even and odd fine pixels both get weights summing to
    1 everywhere, borders included.
    """
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    up = xp.new_zeros((*xp.shape[:2], 2 * xp.shape[-2], 2 * xp.shape[-1]))
    up[..., ::2, ::2] = xp
    return _blur5(up, gain=4.0)[..., : size[0], : size[1]]


def auto_levels(height: int, width: int) -> int:
    """Contrast levels of the authors' pyramid depth: floor(log2(min side)) - 1, at least 1
    (Liu et al. 2017's code builds floor(log2(min side)) levels in all: 256 px -> 7 + top)."""
    return max(1, int(math.floor(math.log2(max(min(height, width), 2)))) - 1)


def max_levels(height: int, width: int) -> int:
    """Most contrast levels before the top shrinks to 1 x 1."""
    return max(1, math.ceil(math.log2(max(height, width, 2))))


def gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """``[G_0 = x, ..., G_levels]``: levels + 1 tensors, sides halving (ceil)."""
    pyr = [x]
    for _ in range(levels):
        pyr.append(reduce(pyr[-1]))
    return pyr


def contrast_pyramid(x: Tensor, levels: int, eps: float) -> list[Tensor]:
    """Toet's decomposition ``[C_0, ..., C_{levels-1}, G_levels]`` (see module docstring).

    Args:
        x: (B, 1, H, W), values >= 0 (the fusion uses [0, 1]).
        levels: number of contrast levels (>= 1).
        eps: ratio stabiliser (> 0), in the units of ``x``.

    Returns:
        levels + 1 tensors; C_l has G_l's size, values in (-1, inf) for x >= 0; the last is
        the top Gaussian level.
    """
    g = gaussian_pyramid(x, levels)
    pyr = [(g[i] + eps) / (expand(g[i + 1], g[i].shape[-2:]) + eps) - 1.0 for i in range(levels)]
    return [*pyr, g[-1]]


def reconstruct(pyr: list[Tensor], eps: float) -> Tensor:
    """Inverse of :func:`contrast_pyramid`: ``G_l = (C_l + 1)(EXPAND(G_{l+1}) + eps) - eps``."""
    g = pyr[-1]
    for c in reversed(pyr[:-1]):
        g = (c + 1.0) * (expand(g, c.shape[-2:]) + eps) - eps
    return g


def _window_sum(x: Tensor, window: int) -> Tensor:
    """Sum over a ``window`` x ``window`` neighbourhood (odd), replicate borders, same size."""
    r = window // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), window, stride=1) * window**2


def fuse_base(ga: Tensor, gb: Tensor, w: Tensor, rule: BaseRule) -> Tensor:
    """Top Gaussian level: ``weighted`` = w*A + (1-w)*B, ``average`` = (A + B) / 2."""
    if rule == "weighted":
        return w * ga + (1.0 - w) * gb
    if rule == "average":
        return (ga + gb) / 2
    raise ValueError(f"unknown base rule {rule!r}; valid: weighted, average")


def fuse_detail(ca: Tensor, cb: Tensor, w: Tensor, rule: DetailRule, threshold: float,
                window: int) -> Tensor:
    """One contrast level of A and B fused guided by the weight map's level ``w``.

    Rules (E_X = local energy = sum of C_X^2 over the window):

    - ``similarity`` (Liu et al., FUSION 2017, the CNN medical rule): local similarity
      M = 2 sum(C_A C_B) / (E_A + E_B) in [-1, 1]; where M >= ``threshold`` the weighted
      average w C_A + (1-w) C_B, elsewhere the coefficient of larger local energy.
    - ``weighted``: w C_A + (1-w) C_B everywhere.
    - ``energy``: the coefficient of larger local energy everywhere (ties take A).

    Args:
        ca, cb: (B, 1, h, w) contrast coefficients; w: (B, 1, h, w) in [0, 1].

    Returns:
        (B, 1, h, w) fused coefficients.
    """
    weighted = w * ca + (1.0 - w) * cb
    if rule == "weighted":
        return weighted
    ea, eb = _window_sum(ca * ca, window), _window_sum(cb * cb, window)
    chosen = torch.where(ea >= eb, ca, cb)
    if rule == "energy":
        return chosen
    if rule != "similarity":
        raise ValueError(f"unknown detail rule {rule!r}; valid: similarity, weighted, energy")
    total = ea + eb
    sim = 2.0 * _window_sum(ca * cb, window) / total.clamp_min(torch.finfo(total.dtype).tiny)
    similar = (sim >= threshold) | (total <= 0)  # both flat: nothing to choose, average
    return torch.where(similar, weighted, chosen)


def fuse_pyramids(pa: list[Tensor], pb: list[Tensor], pw: list[Tensor], base: BaseRule,
                  detail: DetailRule, threshold: float, window: int) -> list[Tensor]:
    """Level-by-level fusion of two :func:`contrast_pyramid` results with the Gaussian pyramid
    ``pw`` of the weight map (same lengths and sizes)."""
    fused = [fuse_detail(a, b, w, detail, threshold, window)
             for a, b, w in zip(pa[:-1], pb[:-1], pw[:-1], strict=True)]
    return [*fused, fuse_base(pa[-1], pb[-1], pw[-1], base)]
