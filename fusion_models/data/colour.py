"""Colour for fusion: which grey channel each source contributes, and how colour comes back.

All functions take batched tensors (B, C, H, W) on the 0..255 scale, float, on any device.

* :func:`rgb_to_ycbcr` / :func:`ycbcr_to_rgb`: 8-bit BT.601 studio-range YCbCr with exactly the
  coefficients of ../shared/docs/models.md §0.10 (MATLAB ``rgb2ycbcr``; Y in 16..235). The
  rounded inverse coefficients round-trip every 8-bit RGB triple exactly after rounding.
* :func:`fuse_chroma`: the |C-128|-weighted chroma rule of §0.10 (both 128 -> 128).
* :func:`rgb_to_ihs` / :func:`ihs_to_rgb`: the orthonormal IHS transform of §0.12,
  I=(R+G+B)/sqrt(3), v1=(R+G-2B)/sqrt(6), v2=(R-G)/sqrt(2); its inverse is its transpose.
* :func:`plan_colour`: a :class:`ColourPlan` holding the two grey channels to fuse
  (``luma_a``, ``luma_b``) and the colour to restore afterwards.

Every plan's luma channels are on the 0..255 scale of a grey image, so a grey source and the luma
of a colour source are comparable and a grey source enters unchanged:

* YCbCr rules fuse the studio Y stretched to full range, ``(Y - 16) * 255 / 219``; for any
  colour this equals 0.29925 R + 0.58685 G + 0.11411 B, and for R=G=B=g it is g within 0.06.
  ``restore`` maps back with ``Y = luma * 219 / 255 + 16``. (MFF-GAN fed the raw studio Y,
  16..235, to its network; the affine stretch is the only difference.)
* IHS fuses ``I / sqrt(3) = mean(R, G, B)`` and restores ``I = luma * sqrt(3)``.
* ``gray`` converts colour with 0.299 R + 0.587 G + 0.114 B (PIL 'F' luma, §0.4).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .io import DataError

logger = logging.getLogger(__name__)

RULES: tuple[str, ...] = ("gray", "keep_b_chroma", "ycbcr_weighted", "ihs", "auto")
_TASK_RULES = {
    "ivif": "keep_b_chroma",
    "medical": "ihs",
    "mff": "ycbcr_weighted",
    "mef": "ycbcr_weighted",
}

_RGB_TO_YCBCR = ((0.257, 0.504, 0.098), (-0.148, -0.291, 0.439), (0.439, -0.368, -0.071))
_YCBCR_OFFSET = (16.0, 128.0, 128.0)
_YCBCR_TO_RGB = ((1.164, 0.0, 1.596), (1.164, -0.392, -0.813), (1.164, 2.017, 0.0))
_S3, _S6, _S2 = math.sqrt(3.0), math.sqrt(6.0), math.sqrt(2.0)
_RGB_TO_IHS = ((1 / _S3, 1 / _S3, 1 / _S3), (1 / _S6, 1 / _S6, -2 / _S6), (1 / _S2, -1 / _S2, 0.0))
_GRAY = (0.299, 0.587, 0.114)
_Y_STRETCH = 255.0 / 219.0


def _check(x: Tensor, channels: int, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise DataError(f"{name} expects a (B, {channels}, H, W) tensor, got {tuple(x.shape)}")


def _mix(x: Tensor, matrix: tuple[tuple[float, ...], ...]) -> Tensor:
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", m, x)


def _offset(x: Tensor, values: tuple[float, ...]) -> Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """RGB (B, 3, H, W) 0..255 -> YCbCr (B, 3, H, W): Y 16..235, Cb/Cr 16..240 (§0.10)."""
    _check(rgb, 3, "rgb_to_ycbcr")
    return _mix(rgb, _RGB_TO_YCBCR) + _offset(rgb, _YCBCR_OFFSET)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """YCbCr (B, 3, H, W) -> RGB (B, 3, H, W), not clamped (§0.10 inverse coefficients)."""
    _check(ycbcr, 3, "ycbcr_to_rgb")
    return _mix(ycbcr - _offset(ycbcr, _YCBCR_OFFSET), _YCBCR_TO_RGB)


def fuse_chroma(c1: Tensor, c2: Tensor) -> Tensor:
    """Weighted chroma rule: (c1|c1-128| + c2|c2-128|) / (|c1-128| + |c2-128|), 128 if both 128.

    Args:
        c1: Cb or Cr of the first source, any shape, 0..255.
        c2: the same channel of the second source, same shape.

    Returns:
        Fused chroma, same shape; between c1 and c2, pulled towards the more saturated one.
    """
    w1, w2 = (c1 - 128.0).abs(), (c2 - 128.0).abs()
    den = w1 + w2
    fused = (c1 * w1 + c2 * w2) / den.clamp_min(torch.finfo(den.dtype).tiny)
    return torch.where(den > 0, fused, torch.full_like(fused, 128.0))


def rgb_to_ihs(rgb: Tensor) -> Tensor:
    """RGB (B, 3, H, W) 0..255 -> (I, v1, v2) (B, 3, H, W); I in 0..255*sqrt(3) (§0.12)."""
    _check(rgb, 3, "rgb_to_ihs")
    return _mix(rgb, _RGB_TO_IHS)


def ihs_to_rgb(ihs: Tensor) -> Tensor:
    """(I, v1, v2) (B, 3, H, W) -> RGB (B, 3, H, W), not clamped (transpose of the forward)."""
    _check(ihs, 3, "ihs_to_rgb")
    transpose = tuple(zip(*_RGB_TO_IHS, strict=True))
    return _mix(ihs, transpose)


def rgb_to_gray(rgb: Tensor) -> Tensor:
    """RGB (B, 3, H, W) 0..255 -> grey (B, 1, H, W) 0..255: 0.299 R + 0.587 G + 0.114 B."""
    _check(rgb, 3, "rgb_to_gray")
    return _mix(rgb, (_GRAY,))


def default_rule(task: str | None) -> str:
    """Colour rule for a task: ivif -> keep_b_chroma, medical -> ihs, mff/mef -> ycbcr_weighted.

    Unknown task (None) -> ``gray``.
    """
    if task is None:
        return "gray"
    if task not in _TASK_RULES:
        raise ValueError(f"unknown task '{task}'; known tasks: {', '.join(_TASK_RULES)} or None")
    return _TASK_RULES[task]


@dataclass
class ColourPlan:
    """The grey channels to fuse and how to restore colour afterwards.

    Attributes:
        rule: the rule actually applied (``gray``, ``keep_b_chroma``, ``ycbcr_weighted``, ``ihs``).
        luma_a: (B, 1, H, W) 0..255, the channel of source A to fuse.
        luma_b: (B, 1, H, W) 0..255, the channel of source B to fuse.
        chroma: (B, 2, H, W) kept colour, (Cb, Cr) or (v1, v2); None for ``gray``.
    """

    rule: str
    luma_a: Tensor
    luma_b: Tensor
    chroma: Tensor | None = None

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`restore`'s output: 1 for ``gray``, else 3."""
        return 1 if self.chroma is None else 3

    def restore(self, fused_luma: Tensor) -> Tensor:
        """Put colour back on a fused grey channel.

        Args:
            fused_luma: (B, 1, H, W) on the 0..255 scale of ``luma_a``/``luma_b``.

        Returns:
            (B, C, H, W), C = :attr:`out_channels`, clamped to [0, 255].
        """
        if tuple(fused_luma.shape) != tuple(self.luma_a.shape):
            raise DataError(
                f"restore expects fused luma of shape {tuple(self.luma_a.shape)}, "
                f"got {tuple(fused_luma.shape)}"
            )
        chroma = None if self.chroma is None else self.chroma.to(fused_luma)
        if chroma is None:
            out = fused_luma
        elif self.rule == "ihs":
            out = ihs_to_rgb(torch.cat([fused_luma * _S3, chroma], dim=1))
        else:
            y = fused_luma / _Y_STRETCH + 16.0
            out = ycbcr_to_rgb(torch.cat([y, chroma], dim=1))
        return out.clamp(0.0, 255.0)


def _ycbcr_parts(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Full-range luma and (Cb, Cr) of a source; a grey source is its own luma, no chroma."""
    if x.shape[1] == 1:
        return x, None
    ycc = rgb_to_ycbcr(x)
    return (ycc[:, :1] - 16.0) * _Y_STRETCH, ycc[:, 1:]


def _resolve(rule: str, task: str | None, colour_a: bool, colour_b: bool) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown colour rule '{rule}'; known rules: {', '.join(RULES)}")
    wanted = default_rule(task) if rule == "auto" else rule
    usable = {
        "gray": True,
        "keep_b_chroma": colour_b,
        "ycbcr_weighted": colour_a or colour_b,
        "ihs": colour_a or colour_b,
    }[wanted]
    if not usable:
        logger.info("colour rule %s needs a colour source; falling back to gray", wanted)
        return "gray"
    return wanted


def plan_colour(a: Tensor, b: Tensor, rule: str = "auto", task: str | None = None) -> ColourPlan:
    """Decide what to fuse for a pair of (possibly colour) sources.

    Args:
        a: source A, (B, 1 or 3, H, W), float 0..255, any device.
        b: source B, same batch and spatial size as ``a``.
        rule: ``gray``, ``keep_b_chroma`` (B's CbCr kept; TarDAL), ``ycbcr_weighted`` (chroma of
            both by :func:`fuse_chroma`; MFF-GAN/PMGI; a grey source counts as chroma 128, i.e.
            weight 0), ``ihs`` (the colour source's v1, v2 kept: A if A is colour, else B;
            DDcGAN/PMGI medical) or ``auto`` (:func:`default_rule` of ``task``). A rule whose
            colour source is grey falls back to ``gray``.
        task: ``ivif``, ``medical``, ``mff``, ``mef`` or None; used by ``auto`` only.

    Returns:
        The :class:`ColourPlan`.
    """
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(f"plan_colour: {name} must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
    if (a.shape[0], *a.shape[2:]) != (b.shape[0], *b.shape[2:]):
        raise DataError(f"plan_colour: a {tuple(a.shape)} and b {tuple(b.shape)} differ in B/H/W")
    a, b = (x if x.is_floating_point() else x.float() for x in (a, b))
    resolved = _resolve(rule, task, a.shape[1] == 3, b.shape[1] == 3)
    if resolved == "gray":
        la, lb = (rgb_to_gray(x) if x.shape[1] == 3 else x for x in (a, b))
        return ColourPlan("gray", la, lb)
    if resolved == "ihs":
        source = a if a.shape[1] == 3 else b
        la, lb = (x.mean(dim=1, keepdim=True) for x in (a, b))
        return ColourPlan("ihs", la, lb, rgb_to_ihs(source)[:, 1:])
    (la, ca), (lb, cb) = _ycbcr_parts(a), _ycbcr_parts(b)
    if resolved == "keep_b_chroma":
        return ColourPlan(resolved, la, lb, cb)
    ca = ca if ca is not None else torch.full_like(cb, 128.0)
    cb = cb if cb is not None else torch.full_like(ca, 128.0)
    return ColourPlan(resolved, la, lb, fuse_chroma(ca, cb))
