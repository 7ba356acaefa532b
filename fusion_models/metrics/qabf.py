"""Qabf: Xydeas-Petrovic edge-information transfer Q^{AB/F}.

Definition: ../shared/docs/metrics.md §2 "Qabf" (identical in CDD, VIFB, TANG and MPY):
Sobel via zero-padded 'same' convolution, g = sqrt(sx^2 + sy^2), alpha = atan(sy/sx) (pi/2
where sx = 0), relative strength G with the shared quirk G = g_F where g_X == g_F, orientation
A = 1 - |alpha_X - alpha_F| / (pi/2), sigmoids (Tg, kg, Dg) = (0.9994, -15, 0.5) and
(Ta, ka, Da) = (0.9879, -22, 0.8), weights g_A and g_B.

The per-pixel maps are float32: the Sobel sums of integer images are exact in float32, and the
atan/sigmoid maps carry ~1e-7 relative rounding (CDD itself is float32); the sums over pixels
are accumulated in float64. Agreement with the float64 MATLAB values: ~1e-7.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import Tensor

from fusion_models.metrics._ops import check_images, over_chunks, row_strips, sobel
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec

T_G, K_G, D_G = 0.9994, -15.0, 0.5
T_A, K_A, D_A = 0.9879, -22.0, 0.8
_DIMS = (-3, -2, -1)


def _strength_and_angle(xp: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel magnitude and atan orientation of the interior of zero-padded (B, C, H+2, W+2)."""
    sx, sy = sobel(xp, padded=True)
    g = torch.hypot(sx, sy)
    alpha = torch.atan(sy.div_(sx))  # +-inf or NaN where sx == 0, replaced next
    return g, alpha.masked_fill_(sx == 0, math.pi / 2)


def _weighted_preservation(g_x: Tensor, a_x: Tensor, g_f: Tensor, a_f: Tensor) -> Tensor:
    """sum of Q^{XF} g_X over pixels and sources: (B, R, H, W) vs (B, 1, H, W) -> (B,) float64.

    Q_g = T_g / (1 + exp(k_g (G - D_g))) = T_g sigmoid(-k_g (G - D_g)), likewise Q_alpha with
    A = 1 - |alpha_X - alpha_F| / (pi/2).
    """
    ratio = torch.minimum(g_x, g_f).div_(torch.maximum(g_x, g_f))  # NaN at 0/0, replaced next
    ratio = torch.where(g_x == g_f, g_f, ratio)  # the quirk: g_F, not 1
    q = torch.sigmoid(ratio.mul_(-K_G).add_(K_G * D_G))
    orient_arg = (a_x - a_f).abs_().mul_(K_A * 2 / math.pi).sub_(K_A * (1 - D_A))
    q.mul_(torch.sigmoid(orient_arg)).mul_(g_x)
    return q.sum(dim=_DIMS, dtype=torch.float64) * (T_G * T_A)


def _qabf_chunk(fused: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Qabf of (B, 1, H, W) images -> (B,) float64, in cache-sized row strips on the CPU."""
    xp = tnf.pad(torch.cat([a, b, fused], dim=1).to(torch.float32), (1, 1, 1, 1))
    num = den = 0.0
    for rows in row_strips(fused.shape[-2], 2, xp.shape[0] * 3 * xp.shape[-1] * 4 * 8, xp.device):
        g, alpha = _strength_and_angle(xp[:, :, rows.start : rows.stop + 2])
        g_src = g[:, :2]
        num = num + _weighted_preservation(g_src, alpha[:, :2], g[:, 2:], alpha[:, 2:])
        den = den + g_src.sum(dim=_DIMS, dtype=torch.float64)
    return num / den


def qabf(fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]) -> Tensor:
    """Q^{AB/F} = sum(Q^{AF} g_A + Q^{BF} g_B) / sum(g_A + g_B) over all pixels.

    Args:
        fused, a, b: (B, 1, H, W) float, grey values 0..255.
        convention: accepted for the common signature; Qabf has no options.

    Returns:
        (B,) float64 in [0, 1) (NaN where both sources are flat).
    """
    check_images(fused, a, b)
    return over_chunks(_qabf_chunk, fused, a, b)


SPECS: list[MetricSpec] = [
    MetricSpec("Qabf", qabf, True, "Xydeas-Petrovic edge information transferred to F"),
]
