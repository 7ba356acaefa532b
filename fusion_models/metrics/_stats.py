"""Local and global statistics of the fusion metrics (re-exported by ``_ops``).

Windowed moments (means, variances E[x^2]-E[x]^2, covariances) of reference/distorted image
pairs, computed whole-image (:func:`local_moments`) or strip by strip in cache-sized pieces
(:func:`windowed_sums`); global sums of products (:func:`gram`); 256-level histograms and
entropies. Shapes are batches (B, C, H, W); see ../shared/docs/metrics.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from fusion_models.metrics._filters import correlate_1d
from fusion_models.metrics._gemm import gemm_filter


class Moments(NamedTuple):
    """Local (windowed) first and second moments; all broadcast to (B, R, h, w)."""

    mu_ref: Tensor
    mu_dist: Tensor
    var_ref: Tensor
    var_dist: Tensor
    cov: Tensor


def _fill_moment_stack(
    x: Tensor, images: list[Tensor], shift: list[Tensor | float], start: int, r: int
) -> Tensor:
    """Write rows start.. of [refs - shift, dist - shift] and their products into ``x``."""
    off = 0
    for img, m in zip(images, shift, strict=True):
        k = img.shape[1]
        rows, dst = img[:, :, start : start + x.shape[-2]], x[:, off : off + k]
        if img.dtype == x.dtype:
            torch.sub(rows, m, out=dst)
        else:  # convert straight into the buffer (sub would convert into a temporary first)
            dst.copy_(rows).sub_(m)
        off += k
    src, fused = x[:, :r], x[:, r : r + 1]
    torch.mul(src, src, out=x[:, r + 1 : 2 * r + 1])
    torch.mul(fused, fused, out=x[:, 2 * r + 1 : 2 * r + 2])
    torch.mul(src, fused, out=x[:, 2 * r + 2 :])
    return x


def moment_stack(ref: Tensor, dist: Tensor) -> Tensor:
    """[ref, dist, ref^2, dist^2, ref*dist] along channels: (B, 3R+2, H, W), for one filter pass.

    Args:
        ref: (B, R, H, W) references (e.g. the two sources A, B: R = 2).
        dist: (B, 1, H, W) the image compared with every reference (the fused image).
    """
    r = ref.shape[1]
    out = ref.new_empty(ref.shape[0], 3 * r + 2, *ref.shape[2:])
    return _fill_moment_stack(out, [ref, dist], [0.0, 0.0], 0, r)


def split_moments(filtered: Tensor, r: int) -> Moments:
    """Turn a filtered :func:`moment_stack` into means, variances and covariances.

    Variances are E[x^2] - E[x]^2 (population, as every reference computes them).
    """
    mu_r, mu_d, e_rr, e_dd, e_rd = torch.split(filtered, [r, 1, r, 1, r], dim=1)
    return Moments(mu_r, mu_d, e_rr - mu_r * mu_r, e_dd - mu_d * mu_d, e_rd - mu_r * mu_d)


def split_moments_(filtered: Tensor, r: int, weight: float = 1.0) -> Moments:
    """:func:`split_moments` in place: the variances and covariances overwrite E[x^2], E[xy].

    ``weight`` W: the filtered values are window sums with total weight W (e.g. 49 for 7x7
    box sums), and the moments come out W times the means, variances and covariances
    (S_xy - S_x S_y / W = W cov): no pass divides every channel by W.
    """
    mu_r, mu_d, var_r, var_d, cov = torch.split(filtered, [r, 1, r, 1, r], dim=1)
    var_r.addcmul_(mu_r, mu_r, value=-1.0 / weight)
    var_d.addcmul_(mu_d, mu_d, value=-1.0 / weight)
    cov.addcmul_(mu_r, mu_d, value=-1.0 / weight)
    return Moments(mu_r, mu_d, var_r, var_d, cov)


def local_moments(ref: Tensor, dist: Tensor, filt: Callable[[Tensor], Tensor]) -> Moments:
    """Windowed means, variances and covariances of ``ref`` channels and ``dist`` in ONE pass.

    Args:
        ref: (B, R, H, W) references; dist: (B, 1, H, W).
        filt: linear filter (B, C, H, W) -> (B, C, h, w), e.g. a window mean.

    Returns:
        :class:`Moments`; ``mu_dist``/``var_dist`` are (B, 1, h, w), the rest (B, R, h, w).
    """
    return split_moments(filt(moment_stack(ref, dist)), ref.shape[1])


#: Target bytes of one strip's float64 moment buffer on the CPU: small enough to stay in
#: cache, so the filter passes run from cache instead of main memory (measured ~2x faster than
#: whole-image passes on a 2-core CPU; the arithmetic per pixel is the same, so are results).
CPU_STRIP_BYTES = 4 << 20
#: Output rows per strip of :func:`windowed_sums` on the CPU (its banded-matrix filter blocks
#: them by 16; 64 measured faster than 32, 96 or 128 on a 2-core CPU).
CPU_STRIP_ROWS = 64


def row_strips(rows: int, halo: int, bytes_per_row: int, device: torch.device) -> list[slice]:
    """Slices of output rows to process together: all rows on accelerators, cache-sized
    strips (each needing ``rows + halo`` input rows of ``bytes_per_row``) on the CPU."""
    step = rows
    if device.type == "cpu":
        step = max(8, CPU_STRIP_BYTES // max(1, bytes_per_row) - halo)
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def pixel_sum(x: Tensor) -> Tensor:
    """Sum over every dimension after the first two: (B, R, ...) -> (B, R), accumulated and
    returned in float64."""
    return x.sum(dim=tuple(range(2, x.ndim)), dtype=torch.float64)


def _exact_in_float32(images: Sequence[Tensor], taps: Sequence[float]) -> bool:
    """True when float32 filtering is exact: integer taps and integer images whose moment
    window sums (largest |x|^2 times the window's total weight) stay below 2**24."""
    if any(t != int(t) for t in taps):
        return False
    peak = max(float(x.abs().amax()) for x in images)
    weight = sum(abs(t) for t in taps) ** 2
    return peak * peak * weight < 2**24 and all(torch.equal(x, x.round()) for x in images)


def windowed_sums(
    ref: Tensor | Sequence[Tensor],
    dist: Tensor,
    taps: Sequence[float],
    reduce: Callable[[Moments], Tensor],
    *,
    weight: float = 1.0,
    centre: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor | None:
    """Sum over all 'valid' window positions of a per-pixel map of local moments.

    The window is outer(taps, taps), of total weight ``weight``. Strip by strip (see
    :func:`row_strips`), the moment images [ref, dist, ref^2, dist^2, ref*dist] of the strip
    are written to reused buffers, filtered (on the CPU by
    :func:`~fusion_models.metrics._gemm.gemm_filter`'s banded matrix products, elsewhere by
    separable direct sums), turned into :class:`Moments` (variances and covariances formed in
    place) and handed to ``reduce``, which may overwrite them and returns its map summed over
    the pixel dimensions (B, R, ...pixels) -> (B, ...) (:func:`pixel_sum`; the pixel layout is
    unspecified). Integer windows on integer images (e.g. 7x7 box sums of grey levels) are
    filtered in float32, which is exact there, and continue in float64.

    Args:
        ref: (B, R, H, W) references, or several (B, k, H, W) stacked along channels; any
            float dtype. dist: (B, 1, H, W).
        taps: 1-D window taps (host floats).
        reduce: Moments -> (B, ...) sums.
        weight: the window's total weight W (e.g. 49 for 7x7 box sums): ``reduce`` receives W
            times the means, variances and covariances (see :func:`split_moments_`).
        centre: subtract (approximate) global means first: variances and covariances are
            unchanged, their rounding smaller, but the means are the centred ones.
        dtype: the arithmetic: float64 (reference-exact) or float32 (~1e-6 relative, for
            diagnostics; the images are centred and the means restored).

    Returns:
        The summed maps (B, ...), or None when no window fits.
    """
    images = [ref] if isinstance(ref, Tensor) else list(ref)
    b, _, h, w = dist.shape
    r = sum(x.shape[1] for x in images)
    n, c = len(taps), 3 * r + 2
    if h < n or w < n:
        return None
    images.append(dist)
    restore = dtype != torch.float64
    shift = [x.mean(dim=(-2, -1), keepdim=True).to(dtype) if centre or restore else 0.0
             for x in images]
    on_cpu = dist.device.type == "cpu"
    work = dtype
    if on_cpu and dtype == torch.float64 and not centre and _exact_in_float32(images, taps):
        work = torch.float32
    if on_cpu:
        strips = [slice(i, min(i + CPU_STRIP_ROWS, h - n + 1))
                  for i in range(0, h - n + 1, CPU_STRIP_ROWS)]
    else:
        strips = row_strips(h - n + 1, n - 1, b * c * w * 8, dist.device)
    buf = torch.empty(b, c, strips[0].stop + n - 1, w, dtype=work, device=dist.device)
    total = None
    for strip in strips:
        s = strip.stop - strip.start
        x = _fill_moment_stack(buf[:, :, : s + n - 1], images, shift, strip.start, r)
        if on_cpu:
            pieces = gemm_filter(x, taps)
        else:
            pieces = [correlate_1d(correlate_1d(x, taps, -1), taps, -2)]
        for filtered in pieces:
            filtered = filtered.to(dtype)
            moments = split_moments_(filtered, r, weight)
            if restore:
                _restore_means(moments, shift, filtered.ndim, weight)
            part = reduce(moments)
            total = part if total is None else total + part
    return total


def _restore_means(m: Moments, shift: list[Tensor], ndim: int, weight: float = 1.0) -> None:
    """Add the centring shifts (B, k, 1, 1) (times the window weight) back to the means of a
    piece with ``ndim`` dims."""
    pad = (1,) * (ndim - 2)
    m.mu_ref.add_(torch.cat(shift[:-1], dim=1).view(*m.mu_ref.shape[:2], *pad), alpha=weight)
    m.mu_dist.add_(shift[-1].view(*m.mu_dist.shape[:2], *pad), alpha=weight)


def gram(x: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel sums and sums of products of the channels, with one float64 matrix product.

    Everything that is a global first or second moment of a few images (MSE, correlations,
    covariances) follows from these. Exact in float64 for integer-valued data.

    Args:
        x: (B, C, H, W) float.

    Returns:
        (G, S): G (B, C, C) with G[i, j] = sum x_i x_j, S (B, C) with S[i] = sum x_i.
    """
    flat = x.to(torch.float64).flatten(2)
    return torch.bmm(flat, flat.transpose(1, 2)), flat.sum(dim=2)


def grey_levels(x: Tensor) -> Tensor:
    """Round (half to even, as numpy) and clamp to 0..255: (B, C, H, W) -> (B, C, H*W) int32."""
    return torch.round(x).clamp_(0, 255).to(torch.int32).flatten(2)


def _bincount_rows(index: Tensor, bins: int) -> Tensor:
    """Counts of 0..bins-1 in each row of an integer ``index`` (..., N) -> (..., bins) float64.

    One bincount for all rows (row r counted at r * bins + index), in int32 while that fits.
    """
    lead = index.shape[:-1]
    rows = index.reshape(-1, index.shape[-1])
    dtype = torch.int32 if rows.shape[0] * bins < 2**31 else torch.int64
    offset = torch.arange(rows.shape[0], device=index.device, dtype=dtype)[:, None] * bins
    flat = torch.add(rows.to(dtype), offset).flatten()
    counts = torch.bincount(flat, minlength=rows.shape[0] * bins)
    return counts.view(*lead, bins).to(torch.float64)


def histogram256(levels: Tensor) -> Tensor:
    """Counts of the 256 grey levels per row: (..., N) integer -> (..., 256) float64."""
    return _bincount_rows(levels, 256)


def joint_histogram256(lx: Tensor, ly: Tensor) -> Tensor:
    """Joint counts h[x, y] of two level maps: (..., N) x2, broadcastable -> (..., 256, 256)."""
    counts = _bincount_rows(lx * 256 + ly, 65536)
    return counts.view(*counts.shape[:-1], 256, 256)


def joint_counts(dist: Tensor, refs: Sequence[Tensor]) -> Tensor:
    """Joint level counts h[k, x, y] of each reference k (level x) with ``dist`` (level y).

    Levels as :func:`grey_levels` (round half to even, clamp to 0..255). On the CPU image by
    image, each pair's index 256 x + y formed in the images' float dtype (exact below 2^24)
    and counted by one bincount per row into 65536 cache-sized bins.

    Args:
        dist: (B, 1, H, W) float. refs: K tensors (B, 1, H, W) float.

    Returns:
        (B, K, 256, 256) float64 counts.
    """
    if dist.device.type != "cpu":
        levels = grey_levels(torch.cat([*refs, dist], dim=1))
        return joint_histogram256(levels[:, :-1], levels[:, -1:])
    work = dist.dtype if dist.dtype in (torch.float32, torch.float64) else torch.float32
    counts = torch.empty(dist.shape[0], len(refs), 65536, dtype=torch.int64)
    for i in range(dist.shape[0]):
        y = dist[i].flatten().to(work, copy=True).clamp_(0, 255).round_()
        for k, ref in enumerate(refs):
            x = ref[i].flatten().to(work, copy=True).clamp_(0, 255).round_()
            index = x.mul_(256.0).add_(y).to(torch.int32)
            counts[i, k] = torch.bincount(index, minlength=65536)
    return counts.view(*counts.shape[:2], 256, 256).to(torch.float64)


def entropy(p: Tensor, dims: tuple[int, ...], base: float = 2.0, eps: float = 0.0) -> Tensor:
    """-sum p log(p + eps) over ``dims`` in the given base; 0 log 0 = 0."""
    if eps == 0.0:
        h = -torch.special.xlogy(p, p).sum(dim=dims)
    else:
        h = -(p * torch.log(p + eps)).sum(dim=dims)
    return h / math.log(base)
