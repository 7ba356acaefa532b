"""Degenerate-fusion diagnostic: does the fused image simply copy one source?

The UFGAN authors watched SSIM rise while their output turned into a copy of the visible image:
summed-over-sources metrics reward copying. This diagnostic scores the fused image against each
source separately (Pearson CC and Wang SSIM, Gaussian 11/1.5, L=255, computed in float32:
~1e-6 from the float64 value) and flags

- ``copy_a`` / ``copy_b``: SSIM to that source >= ``copy_ssim`` (default 0.95) AND CC to it
  >= ``copy_cc`` (default 0.97): the other source contributes next to nothing;
- ``flat``: the fused image's standard deviation is below ``flat_sd`` grey levels (the dark or
  blank outputs of failed GAN trainings).

``dominance`` = SSIM_B - SSIM_A in [-1, 1]: which source the fused image resembles more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusion_models.metrics._spec import PRESETS
from fusion_models.metrics.basic import correlations, sd
from fusion_models.metrics.ssim import ssim_index


@dataclass(frozen=True)
class Thresholds:
    """Flag thresholds (see module docstring)."""

    copy_ssim: float = 0.95
    copy_cc: float = 0.97
    flat_sd: float = 2.0


def degeneracy(
    fused: Tensor, a: Tensor, b: Tensor, thresholds: Thresholds = Thresholds()
) -> dict[str, Tensor]:
    """Per-source similarity and copy flags for a batch.

    Args:
        fused, a, b: (B, 1, H, W) grey, 0..255.
        thresholds: flag thresholds.

    Returns:
        ``CC_A``, ``CC_B`` (in [-1, 1]), ``SSIM_A``, ``SSIM_B`` (<= 1), ``dominance``
        (SSIM_B - SSIM_A), and boolean ``copy_a``, ``copy_b``, ``flat``, ``degenerate``
        (any flag), each a Tensor[B].
    """
    corr = correlations(fused, a, b)  # shared with CC/SCD/MSE inside a shared_work scope
    # (B, 2), one pass for both sources; float32 (~1e-6) is ample for flags and 6 decimals
    similarity = ssim_index(fused, a, b, variant="wang", dtype=torch.float32)
    out = {"CC_A": corr[:, 0], "CC_B": corr[:, 1],
           "SSIM_A": similarity[:, 0], "SSIM_B": similarity[:, 1]}
    out["dominance"] = out["SSIM_B"] - out["SSIM_A"]
    t = thresholds
    out["copy_a"] = (out["SSIM_A"] >= t.copy_ssim) & (out["CC_A"] >= t.copy_cc)
    out["copy_b"] = (out["SSIM_B"] >= t.copy_ssim) & (out["CC_B"] >= t.copy_cc)
    out["flat"] = sd(fused, a, b, PRESETS["cdd"]) < t.flat_sd
    out["degenerate"] = out["copy_a"] | out["copy_b"] | out["flat"]
    return out


def describe(flags: dict[str, Tensor], index: int) -> str:
    """Human-readable verdict for one item of a :func:`degeneracy` batch ('' when fine)."""
    reasons = [
        text
        for key, text in (
            ("copy_a", "copies source A"),
            ("copy_b", "copies source B"),
            ("flat", "flat output"),
        )
        if bool(flags[key][index])
    ]
    return ", ".join(reasons)

