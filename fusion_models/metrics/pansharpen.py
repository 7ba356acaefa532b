"""Pansharpening quality indices: SAM, ERGAS, Q2n (Q4) with a reference; QNR without one.

Definitions and conventions follow G. Vivone et al., "A Critical Comparison Among Pansharpening
Algorithms", IEEE TGRS 53(5), 2015, and its MATLAB toolbox (``Quality_Indices/``: ``SAM.m``,
``ERGAS.m``, ``q2n.m`` + ``onions_quality.m``, ``D_lambda.m``, ``D_s.m``, ``QNR.m``); details
and the deviations in docs/pansharpening.md. Every function takes (B, C, H, W) tensors on the
0..255 scale (the project's metric scale) and returns a float64 Tensor[B], one value per image.

- :func:`sam`: mean spectral angle in degrees (pixels where either vector is zero are left
  out, as ``SAM.m``); 0 = same spectra.
- :func:`ergas`: 100/ratio * sqrt(mean_k RMSE_k^2 / mean(ref_k)^2) (``ERGAS.m``); 0 = perfect.
- :func:`q2n`: Garzelli & Nencini (2009) hypercomplex UIQI on 32 x 32 blocks (shift 32),
  bands zero-padded to the next power of two (3 bands -> Q4, as ``q2n.m``), values rounded
  to integers first (``q2n.m``'s ``uint16`` cast); 1 = perfect.
- :func:`qnr`: D_lambda, D_s and QNR = (1 - D_lambda)(1 - D_s) (Alparone et al., PE&RS 74(2),
  2008), UIQI on 32 x 32 blocks (S/ratio at low resolution), p = q = alpha = beta = 1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fusion_models.data.pansharpen import upsample_ms

Variant = Literal["paper", "toolbox"]
_EPS = 2.220446049250313e-16  # MATLAB eps


def _check(name: str, *xs: Tensor) -> None:
    for x in xs:
        if x.ndim != 4:
            raise ValueError(f"{name}: expected (B, C, H, W) tensors, got {tuple(x.shape)}")
    if len({tuple(x.shape) for x in xs}) != 1:
        raise ValueError(f"{name}: shape mismatch {[tuple(x.shape) for x in xs]}")


def sam(fused: Tensor, ref: Tensor) -> Tensor:
    """Spectral Angle Mapper: mean over pixels of the angle between the band vectors, degrees.

    Args:
        fused, ref: (B, C, H, W) 0..255.

    Returns:
        (B,) float64 in [0, 180] (0 = every pixel's spectrum points the same way).
    """
    _check("sam", fused, ref)
    f, r = fused.double(), ref.double()
    nf, nr = f.norm(dim=1, keepdim=True), r.norm(dim=1, keepdim=True)
    valid = ((nf > 0) & (nr > 0))[:, 0]
    uf, ur = f / nf.clamp_min(_EPS), r / nr.clamp_min(_EPS)
    # acos(<uf, ur>) written as 2 atan2(|uf - ur|, |uf + ur|): exact 0 for equal directions
    angle = 2 * torch.atan2((uf - ur).norm(dim=1), (uf + ur).norm(dim=1))
    total = torch.where(valid, angle, torch.zeros_like(angle)).sum((1, 2))
    return torch.rad2deg(total / valid.sum((1, 2)).clamp_min(1))


def ergas(fused: Tensor, ref: Tensor, ratio: int = 4) -> Tensor:
    """ERGAS (Ranchin & Wald 2000): 100/ratio * sqrt(mean_k mse_k / mean(ref_k)^2).

    Args:
        fused, ref: (B, C, H, W) 0..255.
        ratio: PAN/MS resolution ratio (4).

    Returns:
        (B,) float64 >= 0 (0 = identical).
    """
    _check("ergas", fused, ref)
    f, r = fused.double(), ref.double()
    mse = ((f - r) ** 2).mean((2, 3))
    rel = mse / r.mean((2, 3)).pow(2).clamp_min(_EPS)
    return 100.0 / ratio * rel.mean(1).sqrt()


# -- Q2n -------------------------------------------------------------------------------------
def _conj(x: Tensor) -> Tensor:
    """Hypercomplex conjugate along the last axis: keep component 0, negate the rest."""
    return torch.cat([x[..., :1], -x[..., 1:]], dim=-1)


def hypercomplex_mult(x: Tensor, y: Tensor) -> Tensor:
    """Cayley-Dickson product of 2^n-ons stored along the last axis (``onion_mult.m``).

    Args:
        x, y: (..., N) with N a power of two (1 = reals, 2 = complex, 4 = quaternions).

    Returns:
        (..., N) product, broadcast over the leading axes.
    """
    n = x.shape[-1]
    if n == 1:
        return x * y
    h = n // 2
    a, b = x[..., :h], _conj(x[..., h:])
    c, d = y[..., :h], _conj(y[..., h:])
    if n == 2:
        return torch.cat([a * c - d * b, a * d + c * b], dim=-1)
    first = hypercomplex_mult(a, c) - hypercomplex_mult(d, _conj(b))
    second = hypercomplex_mult(_conj(a), d) + hypercomplex_mult(c, b)
    return torch.cat([first, second], dim=-1)


def _blocks(x: Tensor, block: int, shift: int) -> Tensor:
    """(B, C, H, W) -> (B, L, P, C): L blocks of P = block^2 pixels, after mirror-padding the
    bottom/right edge (edge pixel repeated, as ``q2n.m``) so the blocks cover the image."""
    h, w = x.shape[-2:]
    pad_h = (math.ceil(h / shift) - 1) * shift + block - h
    pad_w = (math.ceil(w / shift) - 1) * shift + block - w
    if pad_w > 0:
        x = torch.cat([x, x[..., :, w - pad_w:].flip(-1)], dim=-1)
    if pad_h > 0:
        x = torch.cat([x, x[..., h - pad_h:, :].flip(-2)], dim=-2)
    b, c = x.shape[:2]
    cols = F.unfold(x.reshape(b * c, 1, *x.shape[-2:]), block, stride=shift)  # (BC, P, L)
    return cols.reshape(b, c, block * block, -1).permute(0, 3, 2, 1)


def _q2n_blocks(ref: Tensor, fus: Tensor) -> Tensor:
    """``onions_quality.m`` on every block at once: (B, L, P, N) x 2 -> (B, L) |q|."""
    n = ref.shape[2]
    mean = ref.mean(2, keepdim=True)
    std = ref.std(2, keepdim=True)  # std2: N - 1
    std = torch.where(std == 0, torch.full_like(std, _EPS), std)
    x = (ref - mean) / std + 1.0
    # the fused block is normalised with the reference block's mean and std, except that a
    # zero reference mean skips the division (as onions_quality.m does), then conjugated
    y = _conj(torch.where(mean == 0, fus - mean, (fus - mean) / std) + 1.0)
    m1, m2 = x.mean(2), y.mean(2)  # (B, L, N)
    mod1, mod2 = m1.pow(2).sum(-1), m2.pow(2).sum(-1)
    k = n / (n - 1)
    term3 = k * (x.pow(2).sum(-1).mean(2) + y.pow(2).sum(-1).mean(2)) - k * (mod1 + mod2)
    bias = 2.0 * mod1.sqrt() * mod2.sqrt() / (mod1 + mod2)
    qu = k * hypercomplex_mult(x, y).mean(2) - k * hypercomplex_mult(m1, m2)
    q = qu * (bias * 2.0 / torch.where(term3 == 0, torch.ones_like(term3), term3))[..., None]
    degenerate = torch.zeros_like(q)
    degenerate[..., -1] = bias
    q = torch.where((term3 == 0)[..., None], degenerate, q)
    return q.pow(2).sum(-1).sqrt()


def q2n(fused: Tensor, ref: Tensor, block: int = 32, shift: int | None = None,
        quantize: bool = True) -> Tensor:
    """Q2n (Garzelli & Nencini 2009), ``q2n.m`` convention; Q4 for 3 or 4 bands.

    Args:
        fused, ref: (B, C, H, W) 0..255.
        block: block side (32); shift: block step (default = block: no overlap).
        quantize: round half up and clip to 0..65535 first, as ``q2n.m``'s uint16 cast.

    Returns:
        (B,) float64, mean over blocks of |q|; 1 = identical, 0 = unrelated.
    """
    _check("q2n", fused, ref)
    f, r = fused.double(), ref.double()
    if quantize:
        f, r = (torch.floor(t.clamp(0, 65535) + 0.5) for t in (f, r))
    bands = f.shape[1]
    padded = 1 << max(0, math.ceil(math.log2(bands)))
    if padded > bands:  # zero bands up to the next power of two
        zeros = f.new_zeros((f.shape[0], padded - bands, *f.shape[2:]))
        f, r = torch.cat([f, zeros], 1), torch.cat([r, zeros], 1)
    step = shift or block
    return _q2n_blocks(_blocks(r, block, step), _blocks(f, block, step)).mean(1)


# -- QNR -------------------------------------------------------------------------------------
def uiqi_blocks(x: Tensor, y: Tensor, block: int) -> Tensor:
    """Mean over non-overlapping ``block`` x ``block`` blocks of Wang & Bovik's UIQI
    4 cov mx my / ((vx + vy)(mx^2 + my^2)) (``uqi`` in ``D_lambda.m``).

    Args:
        x, y: (B, H, W), H and W multiples of ``block``.

    Returns:
        (B,) float64 in [-1, 1]; a block whose denominator is 0 counts 1 when x == y there,
        else 0 (the toolbox would give NaN).
    """
    h, w = x.shape[-2:]
    if h % block or w % block:
        raise ValueError(f"image size {w}x{h} is not a multiple of the block size {block}")
    bx = F.unfold(x.double().unsqueeze(1), block, stride=block)  # (B, P, L)
    by = F.unfold(y.double().unsqueeze(1), block, stride=block)
    mx, my = bx.mean(1), by.mean(1)
    cov = ((bx - mx[:, None]) * (by - my[:, None])).sum(1)
    var = ((bx - mx[:, None]) ** 2).sum(1) + ((by - my[:, None]) ** 2).sum(1)
    den = var * (mx**2 + my**2)
    same = (bx == by).all(1).double()
    q = torch.where(den > 0, 4 * cov * mx * my / den.clamp_min(_EPS), same)
    return q.mean(1)


def downsample_pan(pan: Tensor, ratio: int) -> Tensor:
    """PAN at MS resolution for D_s: bicubic with antialiasing (a = -0.5), standing in for
    MATLAB ``imresize(PAN, 1/ratio)``. (B, 1, H, W) -> (B, 1, H/ratio, W/ratio)."""
    size = (pan.shape[-2] // ratio, pan.shape[-1] // ratio)
    return F.interpolate(pan.double(), size=size, mode="bicubic", align_corners=False,
                         antialias=True)


def d_lambda(fused: Tensor, ms: Tensor, ratio: int = 4, block: int = 32, p: float = 1.0,
             variant: Variant = "paper") -> Tensor:
    """Spectral distortion: (mean over band pairs |Q(F_i, F_j) - Q(MS_i, MS_j)|^p)^(1/p).

    Args:
        fused: (B, C, H, W) 0..255; C >= 2.
        ms: ``paper``: the low-res MS (B, C, H/ratio, W/ratio), its Q on blocks of
            block/ratio; ``toolbox``: the MS upsampled to (B, C, H, W), blocks of ``block``.

    Returns:
        (B,) float64 >= 0 (0 = the fused bands relate to each other as the MS bands do).
    """
    small = block // ratio if variant == "paper" else block
    bands = fused.shape[1]
    total = fused.new_zeros(fused.shape[0], dtype=torch.float64)
    for i in range(bands - 1):
        for j in range(i + 1, bands):
            q_fused = uiqi_blocks(fused[:, i], fused[:, j], block)
            q_ms = uiqi_blocks(ms[:, i], ms[:, j], small)
            total = total + (q_fused - q_ms).abs() ** p
    return (total / (bands * (bands - 1) / 2)) ** (1.0 / p)


def d_s(fused: Tensor, ms: Tensor, pan: Tensor, ratio: int = 4, block: int = 32,
        q: float = 1.0, variant: Variant = "paper") -> Tensor:
    """Spatial distortion: (mean over bands |Q(F_i, PAN) - Q(MS_i, PAN_LR)|^q)^(1/q).

    Args:
        fused: (B, C, H, W); pan: (B, 1, H, W); 0..255.
        ms: as in :func:`d_lambda`. ``paper``: PAN_LR = :func:`downsample_pan`, blocks of
            block/ratio; ``toolbox``: PAN_LR brought back to PAN size by the project's
            bicubic rule (the toolbox uses its 23-tap interpolator), blocks of ``block``.

    Returns:
        (B,) float64 >= 0.
    """
    pan_lr = downsample_pan(pan, ratio)
    small = block // ratio
    if variant == "toolbox":
        pan_lr, small = upsample_ms(pan_lr, ratio).double(), block
    total = fused.new_zeros(fused.shape[0], dtype=torch.float64)
    for k in range(fused.shape[1]):
        q_high = uiqi_blocks(fused[:, k], pan[:, 0], block)
        q_low = uiqi_blocks(ms[:, k], pan_lr[:, 0], small)
        total = total + (q_high - q_low).abs() ** q
    return (total / fused.shape[1]) ** (1.0 / q)


def qnr(fused: Tensor, ms: Tensor, pan: Tensor, ratio: int = 4, block: int = 32,
        variant: Variant = "paper") -> dict[str, Tensor]:
    """Quality with No Reference (alpha = beta = p = q = 1).

    Returns:
        ``D_lambda``, ``D_s``, ``QNR`` = (1 - D_lambda)(1 - D_s), each (B,) float64; QNR 1 =
        no measured distortion.
    """
    dl = d_lambda(fused, ms, ratio, block, variant=variant)
    ds = d_s(fused, ms, pan, ratio, block, variant=variant)
    return {"D_lambda": dl, "D_s": ds, "QNR": (1 - dl) * (1 - ds)}


def reduced_resolution(fused: Tensor, ref: Tensor, ratio: int = 4) -> dict[str, Tensor]:
    """Wald-protocol indices against the reference: ``SAM``, ``ERGAS``, ``Q2n`` (B,) each."""
    return {"SAM": sam(fused, ref), "ERGAS": ergas(fused, ref, ratio), "Q2n": q2n(fused, ref)}
