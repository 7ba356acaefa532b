"""Separable 'valid' filtering as banded matrix products, for the CPU's windowed moments.

Direct sums (one shifted multiply-add per tap) read and write the whole image once per tap
and run at the speed of memory; a product with a banded matrix does the same dot products
inside the BLAS kernel, from registers, at close to the arithmetic peak, at the price of the
band's zeros (block size + n - 1 multiplications per output instead of n). See
:func:`gemm_filter`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

#: Output rows and columns per block of the CPU's banded-matrix filter (:func:`gemm_filter`):
#: small blocks waste few multiplications on the band's zeros, large ones keep the matrix
#: products efficient; 16 measured fastest (of 8-64) on a 2-core AVX-512 CPU for 7- to 17-tap
#: windows.
GEMM_BLOCK = 16


@functools.lru_cache(maxsize=64)
def _band(taps: tuple[float, ...], rows: int, dtype: torch.dtype) -> Tensor:
    """(rows, rows + n - 1) banded Toeplitz matrix T with T[i, i + k] = taps[k]."""
    band = torch.zeros(rows, rows + len(taps) - 1, dtype=dtype)
    for k, t in enumerate(taps):
        band.diagonal(k).fill_(t)
    return band


def _horizontal(y: Tensor, taps: tuple[float, ...], lead: tuple[int, ...]) -> list[Tensor]:
    """'valid' correlation along the rows of a (M, W) contiguous matrix whose rows are the
    (..., rows) of ``lead`` = (*outer, B, C, rows): pieces (B, C, ...pixel dims)."""
    n, (m, w) = len(taps), y.shape
    w_out = w - n + 1
    outer, (b, c, rows) = lead[:-3], lead[-3:]
    blocks, rest = divmod(w_out, GEMM_BLOCK)
    d = len(outer)
    pieces = []
    if blocks:  # the blocks overlap by n - 1 columns: one strided view, no copy
        k = GEMM_BLOCK + n - 1
        view = y.as_strided((blocks, m, k), (GEMM_BLOCK, w, 1))
        band = _band(taps, GEMM_BLOCK, y.dtype).t().expand(blocks, k, GEMM_BLOCK)
        out = torch.bmm(view, band).view(blocks, *outer, b, c, rows, GEMM_BLOCK)
        pieces.append(out.permute(d + 1, d + 2, 0, *range(1, d + 1), d + 3, d + 4))
    if rest:
        out = torch.mm(y[:, blocks * GEMM_BLOCK :], _band(taps, rest, y.dtype).t())
        pieces.append(out.view(*outer, b, c, rows, rest).permute(d, d + 1, *range(d), d + 2,
                                                                 d + 3))
    return pieces


def gemm_filter(x: Tensor, taps: Sequence[float]) -> list[Tensor]:
    """'valid' separable correlation with outer(taps, taps) as banded matrix products (CPU).

    The vertical pass multiplies blocks of :data:`GEMM_BLOCK` output rows by one banded
    matrix; the horizontal pass splits the columns into blocks of as many outputs and
    multiplies every block (read in place, the blocks overlapping by n - 1 columns) by another.
    Each output is the same dot product as a direct sum (float64, another summation order:
    ~1e-16 relative), and the products run near the CPU's arithmetic peak where direct sums
    are bound by its memory bandwidth.

    Args:
        x: (B, C, s + n - 1, W) float32 or float64 (rows contiguous), W >= n = len(taps).

    Returns:
        Pieces (B, C, ...pixel dims) that together hold the (s, W - n + 1) outputs of every
        channel, each pixel once, in an unspecified layout (callers take sums over pixels).
    """
    n, key = len(taps), tuple(taps)
    b, c, rows_in, w = x.shape
    s = rows_in - n + 1
    full, rest = divmod(s, GEMM_BLOCK)
    pieces = []
    if full:
        y = x.new_empty(full, b, c, GEMM_BLOCK, w)
        band = _band(key, GEMM_BLOCK, x.dtype)
        for j in range(full):
            i = j * GEMM_BLOCK
            torch.matmul(band, x[:, :, i : i + GEMM_BLOCK + n - 1], out=y[j])
        pieces += _horizontal(y.view(-1, w), key, (full, b, c, GEMM_BLOCK))
    if rest:
        i = full * GEMM_BLOCK
        y = torch.matmul(_band(key, rest, x.dtype), x[:, :, i:])
        pieces += _horizontal(y.view(-1, w), key, (b, c, rest))
    return pieces


@functools.lru_cache(maxsize=64)
def _decimating_band(taps: tuple[float, ...], rows: int, dtype: torch.dtype) -> Tensor:
    """(rows, 2 rows + n - 2) matrix D with D[i, 2 i + k] = taps[k]: filter, keep every 2nd."""
    band = torch.zeros(rows, 2 * rows + len(taps) - 2, dtype=dtype)
    index = torch.arange(rows)
    for k, t in enumerate(taps):
        band[index, 2 * index + k] = t
    return band


def gemm_decimate(x: Tensor, taps: Sequence[float]) -> Tensor:
    """'valid' separable correlation with outer(taps, taps), keeping every second row and
    column (the first included), as blocked banded matrix products; float64 (CPU).

    Args:
        x: (B, C, H, W) float, H, W >= n = len(taps).

    Returns:
        (B, C, (H - n) // 2 + 1, (W - n) // 2 + 1) float64, the direct sums' values up to the
        summation order.
    """
    n, key = len(taps), tuple(taps)
    b, c, h, w = x.shape
    h2, w2 = (h - n) // 2 + 1, (w - n) // 2 + 1
    g = GEMM_BLOCK
    rb, cb = -(-h2 // g), -(-w2 // g)  # output blocks along H and W
    hp, wp = max(h, 2 * g * rb + n - 2), max(w, 2 * g * cb + n - 2)
    padded = x.new_zeros(b * c, hp, wp, dtype=torch.float64)  # zeros feed trimmed outputs only
    padded[:, :h, :w] = x.reshape(b * c, h, w)
    k = 2 * g + n - 2
    rows = padded.as_strided((b * c, rb, k, wp), (hp * wp, 2 * g * wp, wp, 1))
    y = torch.matmul(_decimating_band(key, g, torch.float64), rows)  # (BC, rb, g, wp)
    y = y.view(-1, wp)
    cols = y.as_strided((cb, y.shape[0], k), (2 * g, wp, 1))
    band = _decimating_band(key, g, torch.float64).t().expand(cb, k, g)
    z = torch.bmm(cols, band)  # (cb, BC * rb * g, g)
    z = z.view(cb, b * c, rb * g, g).permute(1, 2, 0, 3).reshape(b * c, rb * g, cb * g)
    return z[:, :h2, :w2].reshape(b, c, h2, w2)
