"""Classical fusion baselines: the reference rows every learned model must beat.

All rules work on batched grey tensors (B, 1, H, W) holding 0..255 values and return the same
shape and range; :func:`fuse_baseline` brings them to colour inputs through the colour rules of
:mod:`fusion_models.data.colour` (fuse the luma/intensity, restore colour).

- ``average``: (A + B) / 2.
- ``max_abs``: per pixel the source with the larger magnitude (for 0..255 images, the maximum).
- ``laplacian``: Burt-Adelson Laplacian pyramid (5-tap binomial kernel, reflect borders), top
  Gaussian level averaged, detail levels by max-abs.
- ``gff``: guided filtering fusion, S. Li, X. Kang, J. Hu, "Image fusion with guided filtering",
  IEEE TIP 22(7), 2013: two-scale decomposition (31x31 mean), saliency = Gaussian(11, sigma 5)
  of |Laplacian|, binary max-saliency weights refined by guided filters (base r=45, eps=0.3;
  detail r=7, eps=1e-6, guide = the source in [0, 1]), weights normalised per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BaselineFn = Callable[[Tensor, Tensor], Tensor]


def average(a: Tensor, b: Tensor) -> Tensor:
    """Mean of the sources. a, b: (B, 1, H, W) 0..255 -> (B, 1, H, W) 0..255."""
    return (a + b) / 2


def max_abs(a: Tensor, b: Tensor) -> Tensor:
    """Per pixel the source of larger magnitude (ties take A)."""
    return torch.where(a.abs() >= b.abs(), a, b)


def _binomial_kernel(x: Tensor) -> Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    return torch.outer(k1, k1).view(1, 1, 5, 5)


def _blur(x: Tensor, kernel: Tensor) -> Tensor:
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel)


def _down(x: Tensor, kernel: Tensor) -> Tensor:
    return _blur(x, kernel)[..., ::2, ::2]


def _up(x: Tensor, size: tuple[int, int], kernel: Tensor) -> Tensor:
    y = x.new_zeros((*x.shape[:2], *size))
    y[..., ::2, ::2] = x
    return _blur(y, kernel * 4)


def laplacian_pyramid(a: Tensor, b: Tensor, levels: int = 4) -> Tensor:
    """Laplacian-pyramid fusion (averaged base, max-abs details).

    Args:
        a, b: (B, 1, H, W) 0..255.
        levels: decomposition depth; reduced automatically so the coarsest level keeps >= 4 px.

    Returns:
        (B, 1, H, W) fused, clamped to 0..255 (detail overshoot near strong edges).
    """
    kernel = _binomial_kernel(a)
    max_levels = max(0, int(math.log2(max(1, min(a.shape[-2:]) // 4))))
    levels = min(levels, max_levels)
    details, ga, gb = [], a, b
    for _ in range(levels):
        da, db = _down(ga, kernel), _down(gb, kernel)
        size = (ga.shape[-2], ga.shape[-1])
        la, lb = ga - _up(da, size, kernel), gb - _up(db, size, kernel)
        details.append(max_abs(la, lb))
        ga, gb = da, db
    fused = average(ga, gb)
    for detail in reversed(details):
        fused = _up(fused, (detail.shape[-2], detail.shape[-1]), kernel) + detail
    return fused.clamp(0, 255)


def _box_mean(x: Tensor, r: int) -> Tensor:
    """Mean over the (2r+1)^2 window clipped to the image (He et al.'s boxfilter / N), O(HW)."""
    out = x.to(torch.float64)
    for dim in (-2, -1):
        n = out.shape[dim]
        cs = torch.cat([torch.zeros_like(out.narrow(dim, 0, 1)), out.cumsum(dim)], dim=dim)
        idx = torch.arange(n, device=x.device)
        hi, lo = (idx + r + 1).clamp(max=n), (idx - r).clamp(min=0)
        shape = [1] * out.ndim
        shape[dim] = n
        count = (hi - lo).to(out.dtype).view(shape)
        out = (cs.index_select(dim, hi) - cs.index_select(dim, lo)) / count
    return out.to(x.dtype)


def guided_filter(guide: Tensor, src: Tensor, r: int, eps: float) -> Tensor:
    """He et al.'s grey guided filter. guide, src: (B, 1, H, W) in [0, 1]."""
    mean_i, mean_p = _box_mean(guide, r), _box_mean(src, r)
    cov_ip = _box_mean(guide * src, r) - mean_i * mean_p
    var_i = _box_mean(guide * guide, r) - mean_i * mean_i
    a_coef = cov_ip / (var_i + eps)
    b_coef = mean_p - a_coef * mean_i
    return _box_mean(a_coef, r) * guide + _box_mean(b_coef, r)


def _gaussian_kernel(size: int, sigma: float, like: Tensor) -> Tensor:
    ax = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    k1 = torch.exp(-(ax**2) / (2 * sigma**2))
    k2 = torch.outer(k1, k1)
    return (k2 / k2.sum()).view(1, 1, size, size)


def _saliency(x: Tensor) -> Tensor:
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype, device=x.device)
    high = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), lap.view(1, 1, 3, 3)).abs()
    return F.conv2d(F.pad(high, (5, 5, 5, 5), mode="replicate"), _gaussian_kernel(11, 5.0, x))


def gff(a: Tensor, b: Tensor) -> Tensor:
    """Guided filtering fusion (Li, Kang, Hu 2013). a, b: (B, 1, H, W) 0..255 -> 0..255."""
    srcs = torch.stack([a, b]) / 255.0  # (2, B, 1, H, W) in [0, 1]
    base = torch.stack([_box_mean(s, 15) for s in srcs])
    detail = srcs - base
    sal = torch.stack([_saliency(s) for s in srcs])
    winner = (sal[0] >= sal[1]).to(a.dtype)
    masks = torch.stack([winner, 1 - winner])
    w_base = torch.stack([guided_filter(s, m, 45, 0.3) for s, m in zip(srcs, masks, strict=True)])
    w_detail = torch.stack([guided_filter(s, m, 7, 1e-6) for s, m in zip(srcs, masks, strict=True)])
    w_base = w_base / w_base.sum(0).clamp_min(1e-12)
    w_detail = w_detail / w_detail.sum(0).clamp_min(1e-12)
    fused = (w_base * base).sum(0) + (w_detail * detail).sum(0)
    return (fused * 255.0).clamp(0, 255)


BASELINES: dict[str, BaselineFn] = {
    "average": average,
    "max_abs": max_abs,
    "laplacian": laplacian_pyramid,
    "gff": gff,
}


def get_baseline(name: str) -> BaselineFn:
    """Look a baseline up by name; unknown names raise ``KeyError`` listing the valid ones."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; valid: {sorted(BASELINES)}") from None


def fuse_baseline(name: str, a: Tensor, b: Tensor, rule: str = "gray") -> Tensor:
    """Fuse grey or colour sources with a baseline through a colour rule.

    Args:
        name: a key of :data:`BASELINES`.
        a, b: (B, Ca, H, W) and (B, Cb, H, W) sources, 0..255, C in {1, 3}.
        rule: a colour rule of :func:`fusion_models.data.colour.plan_colour` (``gray``,
            ``keep_b_chroma``, ``ycbcr_weighted``, ``ihs``); see ``default_rule(task)``.

    Returns:
        (B, C, H, W) fused image, 0..255 (C = 3 when the rule restores colour).
    """
    from fusion_models.data.colour import plan_colour

    fn = get_baseline(name)
    plan = plan_colour(a, b, rule)
    return plan.restore(fn(plan.luma_a, plan.luma_b))
