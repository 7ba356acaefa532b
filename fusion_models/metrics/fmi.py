"""FMI: Haghighat's fast feature mutual information, vectorised over all windows.

Definition: ../shared/docs/metrics.md §2 "FMI" (Haghighat & Razian 2014, ``fmi.m``, as in TANG's
``analysis_fmi`` and MEFB). For every w x w window (stride 1, valid) and each pair (X, F),
X in {A, B}, on the feature maps:

1. identical patches score 1;
2. otherwise each patch is min-max normalised (constant -> all ones) and divided by its sum,
   giving a w^2-bin pdf (patch read column by column, as MATLAB's ``x(:)``) and its cdf;
3. ``c`` = Pearson correlation of the two pdfs; the joint pdf is Nelsen's
   ``phi * D2 M + (1 - phi) * p_F p_X`` with ``M`` the Frechet upper bound ``min(u, v)``
   (``c >= 0``) or the lower bound ``max(u + v - 1, 0)`` (``c < 0``) of the two cdfs, and
   ``phi = c / rho`` with ``rho`` the correlation the bound implies (Hoeffding covariance over
   population sds of the bin index);
4. ``MI = H_X + H_F - H_XF`` (log2), ``FMI_XF = 2 MI / (H_X + H_F)`` (0 if MI = 0).

Window score = (FMI_AF + FMI_BF) / 2; FMI = mean over windows. Two reference quirks are kept:
when A's patch differs from F's, F's patch is compared with B's raw patch in its *normalised*
form (``fmi.m`` overwrites it); and two constant, non-identical patches get c = 1 (MATLAB's
mean of nine 1/9 differs from 1/9 by one ulp, so both centred pdfs are the same tiny constant),
which scores them ~1. Joint-pdf terms use ``-p log2 |p|`` (MATLAB's ``real`` of a negative p).

Windows are processed in row strips of about ``_CHUNK`` windows to bound memory; there are no
Python loops over windows or pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.metrics._fmi_features import FEATURES, feature_map
from fusion_models.metrics._ops import check_images
from fusion_models.metrics._spec import PRESETS, Convention, MetricFn, MetricSpec

__all__ = [
    "SPECS",
    "feature_mutual_information",
    "fmi",
    "fmi_dct",
    "fmi_edge",
    "fmi_gradient",
    "fmi_none",
    "fmi_wavelet",
]

_CHUNK = 1 << 14  # windows per strip (2 pairs x 100 float64 each: ~26 MB per temporary)
_LN2 = math.log(2.0)


def _entropy(p: Tensor, dim: tuple[int, ...]) -> Tensor:
    """``sum(-p log2 |p|)`` over non-zero entries (MATLAB ``real(-p .* log2(p))``)."""
    return -torch.special.xlogy(p, p.abs()).sum(dim=dim) / _LN2


def _normalise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Min-max normalise patches (N, L); constant patches become ones. Returns (patch, const)."""
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    const = hi == lo
    span = torch.where(const, torch.ones_like(hi), hi - lo)
    return torch.where(const, torch.ones_like(x), (x - lo) / span), const.squeeze(-1)


def _pearson(xp: Tensor, x_const: Tensor, fp: Tensor, f_const: Tensor) -> Tensor:
    """Pearson c between pdfs (N, L); 0 if the covariance sum is 0; 1 for two constant pdfs."""
    xt = torch.where(x_const.unsqueeze(-1), 0.0, xp - xp.mean(-1, keepdim=True))
    ft = torch.where(f_const.unsqueeze(-1), 0.0, fp - fp.mean(-1, keepdim=True))
    num = (xt * ft).sum(-1)
    den = torch.sqrt((xt * xt).sum(-1) * (ft * ft).sum(-1))
    c = torch.where(num == 0, 0.0, num / torch.where(den > 0, den, 1.0))
    return torch.where(x_const & f_const, 1.0, c)


def _index_sd(p: Tensor) -> Tensor:
    """Population sd of the bin index 1..L under the pdfs p (N, L)."""
    idx = torch.arange(1, p.shape[-1] + 1, dtype=p.dtype, device=p.device)
    return torch.sqrt(torch.clamp((p * idx**2).sum(-1) - (p * idx).sum(-1) ** 2, min=0))


def _bound_terms(fc: Tensor, xc: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Second differences and sum of the Frechet bound M(F_i, X_j) of two cdfs (N, L).

    Upper bound ``min(u, v)``; lower bound ``max(u + v - 1, 0) = u - min(u, 1 - v)``. With
    ``t = min(u, v')`` (``v' = v`` or ``1 - v``) on cdfs with a leading 0, the lower bound's
    second difference is ``-D2 t`` (``u`` does not vary along j) and its sum is
    ``L * sum(u) - sum(t)``.

    Returns:
        ``(d2m, total)``: (N, L, L) second differences ``M(i,j) - M(i-1,j) - M(i,j-1) +
        M(i-1,j-1)`` with M = 0 on the leading row/column, and (N,) sums of M over i, j >= 1.
    """
    zero = torch.zeros_like(fc[:, :1])
    u = torch.cat([zero, fc], dim=-1).unsqueeze(-1)
    v = torch.cat([zero, xc], dim=-1).unsqueeze(-2)
    t = torch.minimum(u, torch.where(upper.view(-1, 1, 1), v, 1 - v))
    d_rows = t[:, 1:, :] - t[:, :-1, :]
    d2t = d_rows[:, :, 1:] - d_rows[:, :, :-1]
    t_sum = t[:, 1:, 1:].sum(dim=(-2, -1))
    total = torch.where(upper, t_sum, fc.shape[-1] * fc.sum(-1) - t_sum)
    return d2t, total


def _pair_score(xn: Tensor, x_const: Tensor, fn: Tensor, f_const: Tensor) -> Tensor:
    """FMI of normalised patch pairs (N, L) that are not identical, (N,)."""
    xp, fp = xn / xn.sum(-1, keepdim=True), fn / fn.sum(-1, keepdim=True)
    xc, fc = torch.cumsum(xp, -1), torch.cumsum(fp, -1)
    c = _pearson(xp, x_const, fp, f_const)
    sd = _index_sd(xp) * _index_sd(fp)
    upper = c >= 0
    d2t, m_sum = _bound_terms(fc, xc, upper)
    rho = (m_sum - fc.sum(-1) * xc.sum(-1)) / torch.where(sd > 0, sd, 1.0)
    degenerate = (c == 0) | (sd == 0) | (rho == 0)
    phi = torch.where(degenerate, 0.0, c / torch.where(rho == 0, 1.0, rho))
    joint = d2t * torch.where(upper, phi, -phi).view(-1, 1, 1)
    joint.addcmul_(((1 - phi).unsqueeze(-1) * fp).unsqueeze(-1), xp.unsqueeze(-2))
    h_x, h_f = _entropy(xp, (-1,)), _entropy(fp, (-1,))
    mi = h_x + h_f - _entropy(joint, (-2, -1))
    h_sum = h_x + h_f
    return torch.where(mi == 0, 0.0, 2 * mi / torch.where(h_sum != 0, h_sum, 1.0))


def _window_scores(pa: Tensor, pb: Tensor, pf: Tensor) -> Tensor:
    """Window scores (FMI_AF + FMI_BF) / 2 for raw feature patches (N, L), (N,)."""
    an, a_const = _normalise(pa)
    bn, b_const = _normalise(pb)
    fn, f_const = _normalise(pf)
    same_a = (pa == pf).all(-1)
    # fmi.m overwrites F's patch with its normalised form when A's pair is not identical.
    same_b = torch.where(same_a, (pb == pf).all(-1), (pb == fn).all(-1))
    scores = _pair_score(
        torch.cat([an, bn]), torch.cat([a_const, b_const]),
        torch.cat([fn, fn]), torch.cat([f_const, f_const]),
    )
    scores = torch.where(torch.cat([same_a, same_b]), 1.0, scores)
    n = pa.shape[0]
    return (scores[:n] + scores[n:]) / 2


def _patches(x: Tensor, w: int) -> Tensor:
    """(B, 1, h, W) -> (B * windows, w*w) patches, each read column by column (MATLAB x(:))."""
    p = F.unfold(x, w)  # (B, w*w, n), row-major within the patch
    order = [r * w + c for c in range(w) for r in range(w)]
    return p[:, order, :].transpose(1, 2).reshape(-1, w * w)


def feature_mutual_information(
    fused: Tensor, a: Tensor, b: Tensor, feature: str = "none", window: int = 3
) -> Tensor:
    """FMI on one feature (metrics.md §2 "FMI"), all windows at once in row strips.

    Args:
        fused, a, b: (B, 1, H, W) grey images, 0..255, any float dtype and device.
        feature: ``none``, ``dct``, ``wavelet``, ``edge`` or ``gradient``.
        window: sliding window size w; like ``fmi.m`` the patch is 2 * (w // 2) + 1 pixels
            wide (an even w acts as w + 1). The reference uses 3.

    Returns:
        (B,) float64 on the inputs' device; 1 for a fused image equal to both sources,
        typically in [0, 1]. Symmetric in ``a`` and ``b`` up to the reference quirk above.
    """
    if feature not in FEATURES:
        raise ValueError(f"unknown FMI feature {feature!r}; valid: {list(FEATURES)}")
    window = 2 * (window // 2) + 1
    check_images(fused, a, b, min_size=window)
    maps = [feature_map(x.to(torch.float64), feature) for x in (a, b, fused)]
    n_img, _, h, wid = maps[0].shape
    rows_out = h - window + 1
    step = max(1, _CHUNK // max(1, n_img * (wid - window + 1)))
    totals = torch.zeros(n_img, dtype=torch.float64, device=maps[0].device)
    for r0 in range(0, rows_out, step):
        strip = [m[..., r0 : min(rows_out, r0 + step) + window - 1, :] for m in maps]
        scores = _window_scores(*(_patches(s, window) for s in strip))
        totals += scores.view(n_img, -1).sum(dim=1)
    return totals / (rows_out * (wid - window + 1))


def fmi(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]) -> Tensor:
    """FMI on ``convention.fmi_feature`` with window ``convention.fmi_window``.

    Args:
        fused, a, b: (B, 1, H, W) grey images, 0..255.
        convention: reads ``fmi_feature`` and ``fmi_window``.

    Returns:
        (B,) float64 on the inputs' device. Higher is better.
    """
    return feature_mutual_information(fused, a, b, convention.fmi_feature, convention.fmi_window)


def _fixed(feature: str) -> MetricFn:
    """An FMI metric function bound to one feature (window from the convention)."""

    def metric(
        fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]
    ) -> Tensor:
        return feature_mutual_information(fused, a, b, feature, convention.fmi_window)

    metric.__name__ = metric.__qualname__ = f"fmi_{feature}"
    metric.__doc__ = (
        f"FMI on the {feature!r} feature (B,) float64; see :func:`feature_mutual_information`."
    )
    return metric


fmi_none = _fixed("none")
fmi_dct = _fixed("dct")
fmi_wavelet = _fixed("wavelet")
fmi_edge = _fixed("edge")
fmi_gradient = _fixed("gradient")

SPECS: list[MetricSpec] = [
    MetricSpec(
        f"FMI_{fn.__name__[4:]}", fn, True,
        f"feature mutual information (Haghighat fast-FMI) on feature '{fn.__name__[4:]}'",
    )
    for fn in (fmi_none, fmi_dct, fmi_wavelet, fmi_edge, fmi_gradient)
]
