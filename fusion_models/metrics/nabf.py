"""Nabf: noise/artefacts added by fusion (Petrovic, as modified by Shreyamsha Kumar).

Definition: ../shared/docs/metrics.md §2 "Nabf". Gradients are Sobel/8 on a 1-pixel mirror
extension (edge pixel not repeated); orientation ``atan(gv / gh)`` (0 where both are 0);
relative strength ``min/max`` of the two magnitudes (0 if either is 0); orientation agreement
``||alpha_X - alpha_F| - pi/2| * 2/pi``; ``Q = sqrt(Qg * Qa)`` with sigmoids
``0.9999 / (1 + exp(-19 (G - 0.5)))`` and ``0.9995 / (1 + exp(-22 (A - 0.5)))``; weights
``g^1.5`` where ``g >= 2`` else ``convention.nabf_wmin``;

    Nabf = sum_{gF > gA and gF > gB} [(1 - Q_AF) w_A + (1 - Q_BF) w_B] / sum (w_A + w_B).

``nabf_wmin`` is 0.001 in the MATLAB original (TANG) and 0 in the Python port (``mpy``
preset). Lower is better; symmetric in the two sources.

MATLAB's ``analysis_nabf(f, I1, I2)`` takes the fused image first. The public TANG golden value
(tno/08/max, 0.006522) was computed with the images in ``analysis_fmi``'s order (ir, vi, fused),
i.e. with the infrared image in the fused slot; it reproduces as ``nabf(ir, vi, fused)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fusion_models.metrics._ops import batch_chunks, check_images, correlate2d
from fusion_models.metrics._spec import PRESETS, Convention, MetricSpec

__all__ = ["SPECS", "nabf"]

_TD = 2.0  # edge-strength threshold T_d
_LG = 1.5  # weight exponent
_NRG, _KG, _SG = 0.9999, 19.0, 0.5
_NRA, _KA, _SA = 0.9995, 22.0, 0.5


def _sobel8(x: Tensor) -> tuple[Tensor, Tensor]:
    """Kumar's ``sobel_fn``: correlation with Sobel/8 after a 1-pixel mirror extension.

    Args:
        x: (B, 1, H, W) float64, H, W >= 2.

    Returns:
        ``(gv, gh)``, each (B, 1, H, W): responses to ``[-1 0 1; -2 0 2; -1 0 1] / 8`` and
        ``[-1 -2 -1; 0 0 0; 1 2 1] / 8``.
    """
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    return correlate2d(x, k, "same", "reflect"), correlate2d(x, k.t(), "same", "reflect")


def _strength_angle(x: Tensor) -> tuple[Tensor, Tensor]:
    """Edge magnitude and ``atan(gv / gh)`` (0 where both responses vanish)."""
    gv, gh = _sobel8(x)
    g = torch.sqrt(gh * gh + gv * gv)
    flat = (gv == 0) & (gh == 0)
    angle = torch.atan(gv / torch.where(flat, torch.ones_like(gh), gh))
    return g, torch.where(flat, torch.zeros_like(angle), angle)


def _preservation(g_x: Tensor, a_x: Tensor, g_f: Tensor, a_f: Tensor) -> Tensor:
    """Edge preservation ``Q^{XF} = sqrt(Qg * Qa)`` per pixel."""
    zero = (g_x == 0) | (g_f == 0)
    hi = torch.maximum(g_x, g_f)
    ratio = torch.minimum(g_x, g_f) / torch.where(zero, torch.ones_like(hi), hi)
    rel = torch.where(zero, torch.zeros_like(ratio), ratio)
    orient = torch.abs(torch.abs(a_x - a_f) - math.pi / 2) * (2 / math.pi)
    q_g = _NRG / (1 + torch.exp(-_KG * (rel - _SG)))
    q_a = _NRA / (1 + torch.exp(-_KA * (orient - _SA)))
    return torch.sqrt(q_g * q_a)


def _weight(g: Tensor, wmin: float) -> Tensor:
    return torch.where(g >= _TD, g.pow(_LG), torch.full_like(g, wmin))


def nabf(
    fused: Tensor, a: Tensor, b: Tensor, convention: Convention = PRESETS["cdd"]
) -> Tensor:
    """Kumar's modified fusion-artefact measure N^{AB/F} (metrics.md §2 "Nabf").

    Args:
        fused: (B, 1, H, W) fused images, grey values 0..255, H, W >= 2.
        a: (B, 1, H, W) first sources (ir / CT / near focus), 0..255.
        b: (B, 1, H, W) second sources (vi / MRI / far focus), 0..255.
        convention: only ``nabf_wmin`` is read (weight of pixels with g < 2).

    Returns:
        (B,) float64 on the inputs' device, in [0, 1]; 0 = no artefacts. Lower is better.
    """
    check_images(fused, a, b)
    wmin = convention.nabf_wmin
    return torch.cat([_nabf(fused[c], a[c], b[c], wmin) for c in batch_chunks(fused)])


def _nabf(fused: Tensor, a: Tensor, b: Tensor, wmin: float) -> Tensor:
    f64 = [x.to(torch.float64) for x in (fused, a, b)]
    (g_f, a_f), (g_a, a_a), (g_b, a_b) = (_strength_angle(x) for x in f64)
    w_a, w_b = _weight(g_a, wmin), _weight(g_b, wmin)
    q_af = _preservation(g_a, a_a, g_f, a_f)
    q_bf = _preservation(g_b, a_b, g_f, a_f)
    artefact = (g_f > g_a) & (g_f > g_b)
    num = torch.where(artefact, (1 - q_af) * w_a + (1 - q_bf) * w_b, torch.zeros_like(w_a))
    return num.sum(dim=(1, 2, 3)) / (w_a + w_b).sum(dim=(1, 2, 3))


SPECS: list[MetricSpec] = [
    MetricSpec(
        "Nabf", nabf, False,
        "fusion artefacts (Petrovic/Kumar): share of edge strength the sources do not explain",
    ),
]
