"""Classical pansharpening baselines, as in Vivone et al.'s toolbox (TGRS 2015).

Every method takes the MS already upsampled to PAN size by the project's rule
(:func:`fusion_models.data.pansharpen.upsample_ms`: bicubic, ``align_corners=False``) and the
PAN, both on the 0..255 scale:

- ``bicubic``: the upsampled MS itself (EXP in the toolbox): no PAN detail at all.
- ``brovey``: Brovey transform (Gillespie et al. 1987; toolbox ``Brovey.m``):
  F_k = MS_k * P' / I, I = mean over bands of the MS, P' = PAN equalised to I (same mean and
  standard deviation over the image).
- ``ihs``: fast / generalised IHS (Tu et al. 2001; toolbox ``IHS.m``):
  F_k = MS_k + (P' - I), with the same I and P'.

Outputs are not clamped (the toolbox does not clamp either); a caller writing images clamps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PanBaselineFn = Callable[[Tensor, Tensor], Tensor]
_EPS = 2.220446049250313e-16


def _check(ms_up: Tensor, pan: Tensor) -> None:
    if ms_up.ndim != 4 or pan.ndim != 4 or pan.shape[1] != 1:
        raise ValueError(f"expected ms_up (B, C, H, W) and pan (B, 1, H, W), got "
                         f"{tuple(ms_up.shape)} and {tuple(pan.shape)}")
    if ms_up.shape[0] != pan.shape[0] or ms_up.shape[2:] != pan.shape[2:]:
        raise ValueError(f"ms_up {tuple(ms_up.shape)} and pan {tuple(pan.shape)} differ in "
                         "batch or size: upsample the MS to the PAN size first")


def intensity(ms_up: Tensor) -> Tensor:
    """I = mean over bands: (B, C, H, W) -> (B, 1, H, W)."""
    return ms_up.mean(1, keepdim=True)


def equalise_pan(pan: Tensor, target: Tensor) -> Tensor:
    """PAN with each image's mean and (N - 1) std set to those of ``target``.

    Args:
        pan, target: (B, 1, H, W).

    Returns:
        (B, 1, H, W); a flat PAN is only shifted to the target mean.
    """
    dims = (1, 2, 3)
    p_mean, t_mean = pan.mean(dims, keepdim=True), target.mean(dims, keepdim=True)
    p_std = pan.flatten(1).std(1).view(-1, 1, 1, 1)
    t_std = target.flatten(1).std(1).view(-1, 1, 1, 1)
    gain = torch.where(p_std > 0, t_std / p_std.clamp_min(_EPS), torch.zeros_like(p_std))
    return (pan - p_mean) * gain + t_mean


def bicubic(ms_up: Tensor, pan: Tensor) -> Tensor:
    """The upsampled MS unchanged. (B, C, H, W), (B, 1, H, W) -> (B, C, H, W), 0..255."""
    _check(ms_up, pan)
    return ms_up.clone()


def brovey(ms_up: Tensor, pan: Tensor) -> Tensor:
    """Brovey: MS_k * P' / (I + eps). (B, C, H, W), (B, 1, H, W) -> (B, C, H, W)."""
    _check(ms_up, pan)
    i = intensity(ms_up)
    return ms_up * (equalise_pan(pan, i) / (i + _EPS))


def ihs(ms_up: Tensor, pan: Tensor) -> Tensor:
    """Fast (generalised) IHS: MS_k + P' - I. (B, C, H, W), (B, 1, H, W) -> (B, C, H, W)."""
    _check(ms_up, pan)
    i = intensity(ms_up)
    return ms_up + (equalise_pan(pan, i) - i)


PAN_BASELINES: dict[str, PanBaselineFn] = {"bicubic": bicubic, "brovey": brovey, "ihs": ihs}
