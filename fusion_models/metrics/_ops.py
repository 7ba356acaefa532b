"""Shared tensor helpers for the fusion metrics: the one place other metric modules import from.

Device-agnostic, batched, no numpy. Every image tensor is a batch ``(B, C, H, W)`` of floats
holding grey values 0..255 (../shared/docs/metrics.md, notation). The implementations live in
:mod:`._filters` (MATLAB/scipy-convention filtering: ``fspecial`` Gaussians, valid/same 2-D and
separable correlation, box sums, ``numpy.gradient``, Sobel) and :mod:`._stats` (windowed
moments, strip-wise local statistics, global sums of products, histograms, entropy); this
module re-exports them and adds input checks and batch chunking.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fusion_models.metrics._filters import (
    Mode,
    Padding,
    box_mean_valid,
    box_sum_valid,
    convolve2d,
    correlate2d,
    correlate_1d,
    correlate_separable,
    fspecial_gaussian,
    gaussian_taps,
    gradient,
    pad2d,
    sobel,
)
from fusion_models.metrics._stats import (
    CPU_STRIP_BYTES,
    Moments,
    entropy,
    gram,
    grey_levels,
    histogram256,
    joint_counts,
    joint_histogram256,
    local_moments,
    moment_stack,
    pixel_sum,
    row_strips,
    split_moments,
    split_moments_,
    windowed_sums,
)

__all__ = [
    "CPU_CHUNK_PIXELS", "CPU_STRIP_BYTES", "DEVICE_CHUNK_PIXELS", "Mode", "Moments", "Padding",
    "batch_chunks", "box_mean_valid", "box_sum_valid", "check_images", "convolve2d",
    "correlate_1d", "correlate2d", "correlate_separable", "entropy", "fspecial_gaussian",
    "gaussian_taps", "gradient", "gram", "grey_levels", "histogram256", "joint_counts",
    "joint_histogram256",
    "local_moments", "moment_stack", "over_chunks", "pad2d", "pixel_sum", "row_strips", "sobel",
    "split_moments", "split_moments_", "windowed_sums",
]


def check_images(*images: Tensor, min_size: int = 2) -> None:
    """Raise ``ValueError`` unless all tensors are float (B, 1, H, W) of one shape and device.

    Args:
        *images: tensors to check (fused first, then sources).
        min_size: smallest H and W accepted.
    """
    first = images[0]
    for x in images:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (B, 1, H, W) grey images, got shape {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"expected a float tensor of 0..255 grey values, got {x.dtype}")
        if x.shape != first.shape or x.device != first.device:
            raise ValueError(
                f"images differ: {tuple(x.shape)} on {x.device} vs "
                f"{tuple(first.shape)} on {first.device}"
            )
    if min(first.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size}, got {tuple(first.shape)}")


#: Pixels per chunk on the CPU: keeps an 8-channel float64 stack (the largest temporary) under
#: glibc's 32 MiB dynamic mmap threshold; larger temporaries are mmapped afresh on every
#: allocation and each one costs page faults (measured: ~10x slower batched metrics).
CPU_CHUNK_PIXELS = 480_000
#: Pixels per chunk on accelerators (the caching allocator reuses memory; bounded for memory).
DEVICE_CHUNK_PIXELS = 1 << 22


def batch_chunks(x: Tensor, max_pixels: int | None = None) -> list[slice]:
    """Slices of the batch axis holding at most ``max_pixels`` image pixels each (>= 1 image).

    Defaults to :data:`CPU_CHUNK_PIXELS` on the CPU and :data:`DEVICE_CHUNK_PIXELS` elsewhere.
    """
    if max_pixels is None:
        max_pixels = CPU_CHUNK_PIXELS if x.device.type == "cpu" else DEVICE_CHUNK_PIXELS
    per_chunk = max(1, max_pixels // max(1, x.shape[-2] * x.shape[-1]))
    return [slice(i, i + per_chunk) for i in range(0, x.shape[0], per_chunk)]


def over_chunks(fn: Callable[..., Tensor], *images: Tensor) -> Tensor:
    """``fn(*images)`` -> (B,) evaluated on :func:`batch_chunks` of the batch and concatenated.

    The metrics' work and temporaries are per image, so chunking changes no value; it bounds
    memory and keeps the CPU allocator fast (see :data:`CPU_CHUNK_PIXELS`).
    """
    chunks = batch_chunks(images[0])
    if len(chunks) == 1:
        return fn(*images)
    return torch.cat([fn(*(x[c] for x in images)) for c in chunks])
