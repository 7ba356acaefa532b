"""Filtering, window and difference helpers of the fusion metrics (re-exported by ``_ops``).

Every image tensor here is a batch ``(B, C, H, W)`` of floats; the metrics pass grey values in
0..255 (see ../shared/docs/metrics.md, notation). Filters follow the MATLAB/scipy conventions the
reference evaluators use:

* ``correlate*`` = MATLAB ``filter2`` / ``imfilter`` (no kernel flip);
  :func:`convolve2d` = MATLAB ``conv2`` / ``scipy.signal.convolve2d`` (kernel flipped).
* ``mode="valid"`` keeps only outputs whose window lies inside the image ((H-kh+1, W-kw+1));
  ``mode="same"`` keeps H x W, padding the input by ``padding`` (odd kernels only).
* Gaussian windows are built like MATLAB ``fspecial('gaussian', n, sigma)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as tnf
from torch import Tensor

Mode = Literal["valid", "same"]
Padding = Literal["zeros", "replicate", "reflect"]


# --------------------------------------------------------------------------- windows


def fspecial_gaussian(
    size: int,
    sigma: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> Tensor:
    """MATLAB ``fspecial('gaussian', size, sigma)``: taps below eps*max zeroed, sum 1.

    Returns:
        (size, size) tensor.
    """
    half = (size - 1) / 2
    r = torch.arange(size, dtype=torch.float64, device=device) - half
    h = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))
    h = torch.where(h < torch.finfo(torch.float64).eps * h.max(), torch.zeros_like(h), h)
    return (h / h.sum()).to(dtype)


def gaussian_taps(
    size: int,
    sigma: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> Tensor:
    """1-D taps ``g`` with ``outer(g, g)`` equal to :func:`fspecial_gaussian` (size, sigma).

    Raises ``ValueError`` where fspecial would zero corner taps (size > ~8.5 sigma), because the
    MATLAB window is then no longer separable; use :func:`correlate2d` with the 2-D window there.

    Returns:
        (size,) tensor summing to 1.
    """
    half = (size - 1) / 2
    if math.exp(-2 * half * half / (2 * sigma * sigma)) < torch.finfo(torch.float64).eps:
        raise ValueError(f"fspecial_gaussian({size}, {sigma}) is not separable (zeroed taps)")
    r = torch.arange(size, dtype=torch.float64, device=device) - half
    g = torch.exp(-(r**2) / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype)


# --------------------------------------------------------------------------- filtering


def pad2d(x: Tensor, pad: tuple[int, int, int, int], padding: Padding) -> Tensor:
    """Pad (left, right, top, bottom) by ``zeros``, ``replicate`` or ``reflect`` (edge once)."""
    if not any(pad):
        return x
    if padding == "zeros":
        return tnf.pad(x, pad)
    return tnf.pad(x, pad, mode=padding)


def _same_pad(kh: int, kw: int) -> tuple[int, int, int, int]:
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"mode='same' needs an odd kernel, got {kh}x{kw}")
    return (kw // 2, kw // 2, kh // 2, kh // 2)


def correlate2d(
    x: Tensor, kernel: Tensor, mode: Mode = "valid", padding: Padding = "zeros"
) -> Tensor:
    """2-D correlation of every channel with one (kh, kw) kernel (MATLAB ``filter2``).

    Args:
        x: (B, C, H, W) float.
        kernel: (kh, kw), cast to ``x``'s dtype and device.
        mode: ``valid`` -> (B, C, H-kh+1, W-kw+1); ``same`` -> (B, C, H, W).
        padding: border rule for ``same``.
    """
    kh, kw = kernel.shape
    if mode == "same":
        x = pad2d(x, _same_pad(kh, kw), padding)
    c = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, kh, kw)
    return tnf.conv2d(x, weight, groups=c)


def convolve2d(
    x: Tensor, kernel: Tensor, mode: Mode = "valid", padding: Padding = "zeros"
) -> Tensor:
    """True 2-D convolution (kernel flipped), as ``scipy.signal.convolve2d`` / MATLAB ``conv2``."""
    return correlate2d(x, kernel.flip(0, 1), mode, padding)


def correlate_1d(
    x: Tensor, taps: Sequence[float], dim: int, step: int = 1, out: Tensor | None = None
) -> Tensor:
    """'valid' 1-D correlation along ``dim`` by shifted multiply-adds (direct summation).

    Args:
        x: float tensor, any shape and device.
        taps: the kernel as host floats (a short sequence).
        dim: the axis to filter.
        step: keep every ``step``-th output, starting with the first.
        out: optional preallocated result (x's dtype, the output shape), e.g. a reused buffer.

    Returns:
        ``x``'s shape with ``dim`` of size (L - len(taps)) // step + 1 (0 if the kernel does
        not fit).
    """
    n = max(0, (x.shape[dim] - len(taps)) // step + 1)
    if n == 0:
        return x.narrow(dim, 0, 0).clone()
    index: list[slice] = [slice(None)] * x.ndim

    def shifted(i: int) -> Tensor:
        index[dim] = slice(i, i + (n - 1) * step + 1, step)
        return x[tuple(index)]

    out = torch.mul(shifted(0), taps[0], out=out)
    for i in range(1, len(taps)):  # loop over the few taps, never over pixels
        out.add_(shifted(i), alpha=taps[i])
    return out


def _host_taps(taps: Tensor) -> list[float]:
    return taps.detach().to("cpu", torch.float64).tolist()


def correlate_separable(
    x: Tensor,
    col: Tensor,
    row: Tensor,
    mode: Mode = "valid",
    padding: Padding = "zeros",
    step: int = 1,
) -> Tensor:
    """Correlation with the separable kernel ``outer(col, row)``, one 1-D pass per axis.

    Shifted multiply-adds: the summation of a direct filter, fast in float64 on CPU (where
    ``conv2d`` has no fast float64 path); best for short windows (up to ~11 taps).

    Args:
        x: (B, C, H, W) float.
        col: (kh,) taps along H; row: (kw,) taps along W (read on the host: small tensors).
        mode, padding: as :func:`correlate2d`.
        step: keep every ``step``-th output row and column, starting with the first (the
            filter-then-decimate of multiscale metrics, computing only the kept outputs).

    Returns:
        (B, C, h, w) with h = (H'-kh)//step + 1 for the (padded) height H', likewise w.
    """
    if mode == "same":
        x = pad2d(x, _same_pad(col.numel(), row.numel()), padding)
    return correlate_1d(correlate_1d(x, _host_taps(row), -1, step), _host_taps(col), -2, step)


def _box_sum_1d(x: Tensor, size: int, dim: int, inplace: bool) -> Tensor:
    s = x.cumsum_(dim) if inplace else torch.cumsum(x, dim)
    n = x.shape[dim] - size + 1
    shape = list(s.shape)
    shape[dim] = n
    out = s.new_empty(shape)
    out.narrow(dim, 0, 1).copy_(s.narrow(dim, size - 1, 1))
    torch.sub(s.narrow(dim, size, n - 1), s.narrow(dim, 0, n - 1), out=out.narrow(dim, 1, n - 1))
    return out


def box_sum_valid(x: Tensor, size: int, inplace: bool = False) -> Tensor:
    """Sum over every size x size window inside the image (separable running sums).

    Exact in float64 for integer-valued data (partial sums stay below 2**53); for other data
    the 1-D running sums keep the rounding near 1e-16 of a row/column total.

    Args:
        x: (B, C, H, W) float with H, W >= size.
        size: window side.
        inplace: allow overwriting ``x`` with its running sums (saves one buffer).

    Returns:
        (B, C, H-size+1, W-size+1), a new tensor.
    """
    return _box_sum_1d(_box_sum_1d(x, size, -1, inplace), size, -2, True)


def box_mean_valid(x: Tensor, size: int, inplace: bool = False) -> Tensor:
    """Mean over every size x size window inside the image: :func:`box_sum_valid` / size^2."""
    return box_sum_valid(x, size, inplace).div_(size * size)


# --------------------------------------------------------------------------- differences


def gradient(x: Tensor) -> tuple[Tensor, Tensor]:
    """``numpy.gradient`` / MATLAB ``gradient`` on the last two axes.

    Central differences (f[i+1]-f[i-1])/2 inside, one-sided first differences on the border.

    Returns:
        (gy, gx), each shaped like ``x`` (H, W >= 2).
    """

    def along(t: Tensor, dim: int) -> Tensor:
        n = t.shape[dim]
        out = torch.empty_like(t)
        torch.sub(t.narrow(dim, 2, n - 2), t.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2))
        out.narrow(dim, 1, n - 2).div_(2)
        torch.sub(t.narrow(dim, 1, 1), t.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
        torch.sub(t.narrow(dim, n - 1, 1), t.narrow(dim, n - 2, 1), out=out.narrow(dim, n - 1, 1))
        return out

    return along(x, -2), along(x, -1)


def sobel(x: Tensor, padded: bool = False) -> tuple[Tensor, Tensor]:
    """Sobel responses as ``conv2(x, k, 'same')`` with zero padding (true convolution).

    ``sx`` uses k = [-1 0 1; -2 0 2; -1 0 1], ``sy`` uses k = [1 2 1; 0 0 0; -1 -2 -1]
    (metrics.md, Qabf), i.e. sx[i, j] = sum over rows i-1..i+1 (weights 1, 2, 1) of
    x[., j-1] - x[., j+1], and sy[i, j] = smoothed row i+1 minus smoothed row i-1.

    Args:
        x: (B, C, H, W) float.
        padded: ``x`` already carries a 1-pixel border (e.g. a strip of a zero-padded image);
            the responses are then those of its interior, (H-2, W-2).

    Returns:
        (sx, sy), each shaped like ``x`` (or its interior), in ``x``'s dtype.
    """
    xp = x if padded else tnf.pad(x, (1, 1, 1, 1))
    left, mid, right = xp[..., :, :-2], xp[..., :, 1:-1], xp[..., :, 2:]
    diff = left - right  # (H+2, W)
    sx = torch.add(diff[..., :-2, :], diff[..., 2:, :]).add_(diff[..., 1:-1, :], alpha=2.0)
    smooth = torch.add(left, right).add_(mid, alpha=2.0)
    sy = smooth[..., 2:, :] - smooth[..., :-2, :]
    return sx, sy
