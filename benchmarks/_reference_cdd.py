"""A straightforward per-image numpy/scipy/scikit-learn implementation of the 12 CDD metrics.

This is the speed and value baseline for ``benchmarks/metrics_speed.py``: it computes each metric
the way the most-copied Python evaluator (CDDFuse's ``utils/Evaluator.py``, see
../shared/docs/metrics.md §1-§2) does, one image at a time, with the libraries that evaluator
uses (``scipy.signal.convolve2d`` for VIF and the Qabf Sobel filters,
``sklearn.metrics.mutual_info_score`` for MI, ``skimage.metrics.structural_similarity`` with
``data_range=2`` for SSIM). It is written from the definitions in metrics.md, not copied.

Every function takes 2-D float arrays (H, W) of grey values 0..255 (float32, as CDD reads them)
and returns a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity
from sklearn.metrics import mutual_info_score


def en(f: np.ndarray) -> float:
    """Shannon entropy (bits) of the rounded uint8 image, empty bins skipped."""
    levels = np.uint8(np.clip(np.round(f), 0, 255)).ravel()
    p = np.bincount(levels, minlength=256) / levels.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def sd(f: np.ndarray) -> float:
    """Population standard deviation."""
    return float(np.std(f))


def sf(f: np.ndarray) -> float:
    """sqrt(mean of squared horizontal differences + mean of squared vertical differences)."""
    rf = np.mean((f[:, 1:] - f[:, :-1]) ** 2)
    cf = np.mean((f[1:, :] - f[:-1, :]) ** 2)
    return float(np.sqrt(rf + cf))


def ag(f: np.ndarray) -> float:
    """Mean over all H*W pixels of sqrt((gx^2 + gy^2) / 2), gradients as numpy.gradient."""
    gx = np.zeros_like(f)
    gy = np.zeros_like(f)
    gx[:, 0] = f[:, 1] - f[:, 0]
    gx[:, -1] = f[:, -1] - f[:, -2]
    gx[:, 1:-1] = (f[:, 2:] - f[:, :-2]) / 2
    gy[0, :] = f[1, :] - f[0, :]
    gy[-1, :] = f[-1, :] - f[-2, :]
    gy[1:-1, :] = (f[2:, :] - f[:-2, :]) / 2
    return float(np.mean(np.sqrt((gx**2 + gy**2) / 2)))


def mi(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI(F, A) + MI(F, B) in nats, sklearn on the raw values."""
    return float(
        mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel())
    )


def mse(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the two per-source MSEs on the 0..255 scale."""
    return float((np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2)


def psnr(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """10 log10(max(F)^2 / MSE): CDD's peak is the fused image's maximum."""
    return float(10 * np.log10(np.max(f) ** 2 / mse(f, a, b)))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    dx = x - np.mean(x)
    dy = y - np.mean(y)
    return float(np.sum(dx * dy) / np.sqrt(np.sum(dx**2) * np.sum(dy**2)))


def cc(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Average of corr(A, F) and corr(B, F)."""
    return (_corr(a, f) + _corr(b, f)) / 2


def scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """corr(F - B, A) + corr(F - A, B)."""
    return _corr(f - b, a) + _corr(f - a, b)


def _matlab_gaussian(n: int, sigma: float) -> np.ndarray:
    """fspecial('gaussian', n, sigma): tiny taps zeroed, normalised."""
    half = (n - 1) / 2
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


def _vifp_one(ref: np.ndarray, dist: np.ndarray) -> float:
    """Sheikh-Bovik vifp_mscale with ref = source, dist = fused; NaN -> 1."""
    sigma_nsq, eps = 2.0, 1e-10
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        win = np.rot90(_matlab_gaussian(n, n / 5.0), 2)
        if scale > 1:
            ref = convolve2d(ref, win, mode="valid")[::2, ::2]
            dist = convolve2d(dist, win, mode="valid")[::2, ::2]
        mu1 = convolve2d(ref, win, mode="valid")
        mu2 = convolve2d(dist, win, mode="valid")
        s1 = convolve2d(ref * ref, win, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, win, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        low1 = s1 < eps
        g[low1] = 0
        sv[low1] = s2[low1]
        s1[low1] = 0
        low2 = s2 < eps
        g[low2] = 0
        sv[low2] = 0
        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1.0 + g**2 * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1.0 + s1 / sigma_nsq))
    with np.errstate(invalid="ignore", divide="ignore"):
        vif = num / den
    return 1.0 if np.isnan(vif) else float(vif)


def vif(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """VIF-p(A, F) + VIF-p(B, F)."""
    return _vifp_one(a, f) + _vifp_one(b, f)


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
    ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)
    sx = convolve2d(img, kx, mode="same")
    sy = convolve2d(img, ky, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    alpha = np.full_like(img, math.pi / 2)
    nz = sx != 0
    alpha[nz] = np.arctan(sy[nz] / sx[nz])
    return g, alpha


def _edge_preservation(g_x, a_x, g_f, a_f) -> np.ndarray:
    ratio = np.zeros_like(g_x)
    gt, lt, eq = g_x > g_f, g_x < g_f, g_x == g_f
    ratio[gt] = g_f[gt] / g_x[gt]
    ratio[lt] = g_x[lt] / g_f[lt]
    ratio[eq] = g_f[eq]  # the quirk every copy shares
    orient = 1 - np.abs(a_x - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1 + np.exp(-15 * (ratio - 0.5)))
    q_a = 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))
    return q_g * q_a


def qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Xydeas-Petrovic edge transfer Q^{AB/F}."""
    g_a, a_a = _sobel(a)
    g_b, a_b = _sobel(b)
    g_f, a_f = _sobel(f)
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    return float(np.sum(q_af * g_a + q_bf * g_b) / np.sum(g_a + g_b))


def ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """skimage SSIM(F, A) + SSIM(F, B) with CDD's data_range=2 (7x7 box, sample covariance).

    On float64 copies: scikit-image >= 0.19 keeps float32 input in float32, and with CDD's tiny
    constants (C2 = 0.0036 on 0..255 data) that rounding moves the score by up to 3e-5 on tno
    pairs with flat regions (tno/24), beyond the 1e-5 agreement this reference is used for.
    """
    f, a, b = (np.asarray(x, dtype=np.float64) for x in (f, a, b))
    return float(
        structural_similarity(f, a, data_range=2) + structural_similarity(f, b, data_range=2)
    )


SINGLE: dict[str, Callable[[np.ndarray], float]] = {"EN": en, "SD": sd, "SF": sf, "AG": ag}
PAIRED: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], float]] = {
    "MI": mi, "MSE": mse, "PSNR": psnr, "CC": cc, "SCD": scd,
    "VIF": vif, "Qabf": qabf, "SSIM": ssim,
}
NAMES: tuple[str, ...] = tuple(SINGLE) + tuple(PAIRED)


def compute(name: str, f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Compute one metric by name on one (H, W) triple (fused, source A, source B)."""
    if name in SINGLE:
        return SINGLE[name](f)
    return PAIRED[name](f, a, b)
