"""Statistical fusion metrics: EN, SD, SF, AG, MI, MSE, PSNR, CC, SCD.

Definitions: ../shared/docs/metrics.md §2 (one subsection per metric); every option that the
evaluators disagree on is read from the :class:`Convention`. All functions share the signature
``fn(fused, a, b, convention=PRESETS["cdd"]) -> Tensor`` with ``fused``, ``a``, ``b`` float
tensors (B, 1, H, W) of grey values 0..255 on any device, and return float64 (B,) on that
device. Arithmetic is float64 throughout, so float32 and float64 inputs give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fusion_models.metrics._memo import in_shared_scope, memoised
from fusion_models.metrics._ops import (
    check_images,
    entropy,
    gram,
    grey_levels,
    histogram256,
    joint_counts,
    over_chunks,
)
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec

CDD = PRESETS["cdd"]


def _per_image(fn: Callable[[Tensor], Tensor], fused: Tensor) -> Tensor:
    """fn on float64 chunks of the fused batch (B, 1, H, W) -> (B, ...)."""
    check_images(fused)
    return over_chunks(lambda f: fn(f.to(torch.float64)), fused)


def en(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """EN: Shannon entropy (bits) of the 256-level histogram of round(F) (metrics.md, EN).

    ``convention.en_eps`` > 0 gives MPY's -sum p log2(p + eps). ``a``, ``b`` are unused.

    Returns:
        (B,) float64 in [0, 8].
    """
    check_images(fused)
    if in_shared_scope() and _same_kind(fused, a, b):  # F's marginal of MI's joint counts
        counts = _joint_counts(fused, a, b)[:, 0].sum(dim=-2)
    else:
        counts = over_chunks(lambda f: histogram256(grey_levels(f)[:, 0]), fused)
    p = counts / (fused.shape[-2] * fused.shape[-1])
    return entropy(p, (-1,), base=2.0, eps=convention.en_eps)


def _same_kind(fused: Tensor, a: Tensor, b: Tensor) -> bool:
    """Whether a and b are float images of the fused image's shape and device (MI inputs)."""
    return all(x.shape == fused.shape and x.device == fused.device and x.is_floating_point()
               for x in (a, b))


def sd(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """SD: population standard deviation of F on the 0..255 scale (metrics.md, SD).

    Returns:
        (B,) float64 >= 0.
    """
    return memoised("sd", (fused,),  # shared with the degenerate-fusion diagnostic
                    lambda: _per_image(lambda f: f.std(dim=(1, 2, 3), correction=0), fused))


def sf(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """SF: sqrt(RF^2 + CF^2) of first differences (metrics.md, SF).

    ``sf_norm="diff"`` (CDD/TANG/MPY) averages each sum over its own count of differences,
    ``"hw"`` (VIFB) divides both by H*W.

    Returns:
        (B,) float64 >= 0.
    """

    def sums(f: Tensor) -> Tensor:  # sums of squares as dot products (one pass each)
        dh = (f[..., :, 1:] - f[..., :, :-1]).flatten(1)
        dv = (f[..., 1:, :] - f[..., :-1, :]).flatten(1)
        return torch.stack([_self_dot(dh), _self_dot(dv)], dim=1)

    dh, dv = _per_image(sums, fused).unbind(dim=1)
    h, w = fused.shape[-2:]
    if convention.sf_norm == "diff":
        return (dh / (h * (w - 1)) + dv / ((h - 1) * w)).sqrt()
    return ((dh + dv) / (h * w)).sqrt()


def _self_dot(d: Tensor) -> Tensor:
    """Row-wise sums of squares of a contiguous (B, N) float64 tensor -> (B,)."""
    return torch.bmm(d[:, None, :], d[:, :, None]).view(-1)


def ag(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """AG: sum of sqrt((Gx^2 + Gy^2)/2) with numpy.gradient differences (metrics.md, AG).

    Divided by H*W (``ag_norm="hw"``, CDD) or (H-1)(W-1) (``"h1w1"``, VIFB/TANG/MPY).

    Returns:
        (B,) float64 >= 0.
    """

    def total(f: Tensor) -> Tensor:
        dy, dx = _doubled_gradient(f, -2), _doubled_gradient(f, -1)
        # (G/2)^2 sums exactly like G^2 / 4: the values of numpy.gradient's, in fewer passes
        return torch.addcmul(dx.square_(), dy, dy).mul_(0.125).sqrt_().sum(dim=(1, 2, 3))

    h, w = fused.shape[-2:]
    return _per_image(total, fused) / (h * w if convention.ag_norm == "hw" else (h - 1) * (w - 1))


def _doubled_gradient(t: Tensor, dim: int) -> Tensor:
    """2x ``numpy.gradient`` along ``dim`` (H, W >= 2): f[i+1] - f[i-1] inside, twice the
    one-sided differences on the border (exact scalings: no rounding differs)."""
    n = t.shape[dim]
    out = torch.empty_like(t)
    torch.sub(t.narrow(dim, 2, n - 2), t.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2))
    for edge, (hi, lo) in ((0, (1, 0)), (n - 1, (n - 1, n - 2))):
        torch.sub(t.narrow(dim, hi, 1), t.narrow(dim, lo, 1), out=out.narrow(dim, edge, 1))
        out.narrow(dim, edge, 1).mul_(2.0)
    return out


def _joint_counts(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Joint level counts h[source, x, f] of (A, F) and (B, F): (B, 2, 256, 256) float64,
    computed once per :func:`~fusion_models.metrics._memo.shared_work` scope (MI and EN)."""
    return memoised("joint", (fused, a, b), lambda: joint_counts(fused, (a, b)))


def _saturate_254(joint: Tensor) -> Tensor:
    """TANG's ``uint8 + 1`` index saturates: levels 254 and 255 share one joint bin per axis."""
    joint = torch.cat([joint[..., :254, :], joint[..., 254:, :].sum(-2, keepdim=True)], dim=-2)
    return torch.cat([joint[..., :254], joint[..., 254:].sum(-1, keepdim=True)], dim=-1)


def mi(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """MI: MI(A, F) + MI(B, F) = sum over sources of H(X) + H(F) - H(X, F).

    256x256 joint histograms of the rounded levels (bincount). Nats for ``mi_base="e"``
    (CDD/VIFB, = sklearn ``mutual_info_score``), bits for ``"2"``; ``mi_tang_saturate``
    merges levels 254/255 in the joint histogram only (metrics.md, MI).

    Returns:
        (B,) float64 >= 0 (up to TANG's bias).
    """
    check_images(fused, a, b)
    counts = _joint_counts(fused, a, b)
    p = counts / (fused.shape[-2] * fused.shape[-1])
    h_x = entropy(p.sum(dim=-1), (-1,), base=math.e)  # (B, 2)
    h_f = entropy(p[:, 0].sum(dim=-2), (-1,), base=math.e)[:, None]
    if convention.mi_tang_saturate:
        p = _saturate_254(p)
    total = (h_x + h_f - entropy(p, (-2, -1), base=math.e)).sum(dim=1)
    return total if convention.mi_base == "e" else total / math.log(2.0)


def _gram_and_sums(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """[G | S] of [A, B, F] (see :func:`gram`): (B, 3, 4) float64; the three images are
    converted straight into one float64 stack (no float32 concatenation first)."""
    stack = fused.new_empty(fused.shape[0], 3, *fused.shape[2:], dtype=torch.float64)
    for k, x in enumerate((a, b, fused)):
        stack[:, k : k + 1].copy_(x)
    g, s = gram(stack)
    return torch.cat([g, s[:, :, None]], dim=2)


def _global_moments(fused: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int]:
    """Sums of products G (B, 3, 3) and sums S (B, 3) of [A, B, F], and the pixel count."""
    check_images(fused, a, b)
    gs = memoised("gram", (fused, a, b), lambda: over_chunks(_gram_and_sums, fused, a, b))
    return gs[:, :, :3], gs[:, :, 3], fused.shape[-2] * fused.shape[-1]


def _sse(g: Tensor) -> Tensor:
    """Sum of squared errors to F per source from G: (B, 2) = G_xx - 2 G_xf + G_ff."""
    diag = torch.diagonal(g, dim1=1, dim2=2)
    return diag[:, :2] - 2 * g[:, :2, 2] + diag[:, 2:]


def mse(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """MSE: mean of the two per-source errors, in the scale of ``convention.mse_scale``.

    ``"255"``: mean((X-F)^2) on 0..255 (CDD); ``"unit"``: the same on 0..1 (TANG/MPY);
    ``"vifb_sqrt_sse"``: VIFB's bug sqrt(sum((X-F)^2))/(H*W) (metrics.md, PSNR and MSE).

    Returns:
        (B,) float64 >= 0.
    """
    g, _, n = _global_moments(fused, a, b)
    sse = _sse(g).clamp_min(0.0)
    if convention.mse_scale == "vifb_sqrt_sse":
        return (sse.sqrt() / n).mean(dim=1)
    per_source = sse / n
    if convention.mse_scale == "unit":
        per_source = per_source / 255.0**2
    return per_source.mean(dim=1)


def psnr(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """PSNR = 10 log10(peak^2 / MSE) with MSE as :func:`mse` (metrics.md, PSNR).

    ``psnr_peak="max_f"`` (CDD) uses max(F), ``"255"`` uses 255.

    Returns:
        (B,) float64 dB (inf where MSE is 0).
    """
    err = mse(fused, a, b, convention)
    if convention.psnr_peak == "max_f":
        peak = fused.amax(dim=(1, 2, 3)).to(torch.float64)
    else:
        peak = torch.full_like(err, 255.0)
    return 10 * torch.log10(peak * peak / err)


def covariance(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Centred sums of products C = G - S S^T / N of [A, B, F]: (B, 3, 3)."""
    g, s, n = _global_moments(fused, a, b)
    return g - s[:, :, None] * s[:, None, :] / n


def cc(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """CC: (corr(A, F) + corr(B, F)) / 2, Pearson over all pixels (metrics.md, CC).

    Returns:
        (B,) float64 in [-1, 1] (NaN where an image is constant).
    """
    return correlations(fused, a, b).mean(dim=1)


def correlations(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Pearson corr(A, F) and corr(B, F) over all pixels: (B, 2) float64 in [-1, 1] (NaN
    where an image is constant); from the shared sums of products (see :func:`covariance`)."""
    c = covariance(fused, a, b)
    var = torch.diagonal(c, dim1=1, dim2=2)
    return c[:, :2, 2] / torch.sqrt(var[:, :2] * var[:, 2:])


def scd(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = CDD) -> Tensor:
    """SCD: corr(F - B, A) + corr(F - A, B) (Aslantas and Bendes 2015; metrics.md, SCD).

    With C the covariance of [A, B, F]: cov(F - B, A) = C_fa - C_ba and
    var(F - B) = C_ff - 2 C_fb + C_bb (likewise with A and B swapped).

    Returns:
        (B,) float64 in [-2, 2].
    """
    c = covariance(fused, a, b)
    var_a, var_b, var_f = torch.diagonal(c, dim1=1, dim2=2).unbind(dim=1)
    c_ab, c_af, c_bf = c[:, 0, 1], c[:, 0, 2], c[:, 1, 2]
    r1 = (c_af - c_ab) / torch.sqrt((var_f - 2 * c_bf + var_b) * var_a)
    r2 = (c_bf - c_ab) / torch.sqrt((var_f - 2 * c_af + var_a) * var_b)
    return r1 + r2


SPECS: list[MetricSpec] = [
    MetricSpec("EN", en, True, "entropy of the fused image (bits)"),
    MetricSpec("SD", sd, True, "standard deviation of the fused image"),
    MetricSpec("SF", sf, True, "spatial frequency of the fused image", colour_layout="tiled"),
    MetricSpec("AG", ag, True, "average gradient of the fused image"),
    MetricSpec("MI", mi, True, "mutual information MI(A,F)+MI(B,F)"),
    MetricSpec("MSE", mse, False, "mean squared error to the sources (mean of the two)"),
    MetricSpec("PSNR", psnr, True, "fusion PSNR from the mean of the two MSEs"),
    MetricSpec("CC", cc, True, "mean correlation coefficient with the sources"),
    MetricSpec("SCD", scd, True, "sum of the correlations of differences"),
]
