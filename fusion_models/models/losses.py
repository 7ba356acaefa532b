"""Loss pieces shared by the fusion models (functional, explicit reductions).

Gradient operators (models.md §0.8): the 4-neighbour Laplacian with zero 'SAME' padding
(FusionGAN, MFF-GAN, PMGI, UFGAN), DDcGAN's 8-neighbour kernel, and a Sobel magnitude.
Adversarial objectives for every ``adversarial`` choice a model offers: ``lsgan`` with the
FusionGAN family's soft labels (§0.9: real U[0.7, 1.2], fake U[0, 0.3], G target U[0.7, 1.2],
one draw per sample per step), ``bce`` (logits, hard labels) and ``wgan_gp`` (critic with
gradient penalty, Gulrajani et al. 2017).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Adversarial = Literal["lsgan", "wgan_gp", "bce"]

_LAP4 = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
_LAP8 = ((1 / 8, 1 / 8, 1 / 8), (1 / 8, -1.0, 1 / 8), (1 / 8, 1 / 8, 1 / 8))


def _conv3(x: Tensor, kernel: tuple[tuple[float, ...], ...], pad: str = "zeros") -> Tensor:
    k = torch.tensor(kernel, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    k = k.expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (1, 1, 1, 1), mode="constant" if pad == "zeros" else pad)
    return F.conv2d(x, k, groups=x.shape[1])


def laplacian4(x: Tensor) -> Tensor:
    """4-neighbour Laplacian, zero 'SAME' padding. x: (B, C, H, W) -> same shape."""
    return _conv3(x, _LAP4)


def laplacian8(x: Tensor) -> Tensor:
    """DDcGAN's 8-neighbour kernel (1/8 around, -1 centre), zero 'SAME' padding."""
    return _conv3(x, _LAP8)


def sobel_magnitude(x: Tensor, eps: float = 1e-8) -> Tensor:
    """sqrt(dx^2 + dy^2 + eps) with 3x3 Sobel kernels, replicate padding (TarDAL, §0.8c)."""
    sx = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
    sy = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
    gx, gy = _conv3(x, sx, "replicate"), _conv3(x, sy, "replicate")
    return torch.sqrt(gx * gx + gy * gy + eps)


def total_variation(x: Tensor) -> Tensor:
    """0.5 * (mean |dy| + mean |dx|) (UFGAN's TV term). x: (B, C, H, W) -> scalar."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return 0.5 * (dy + dx)


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    ax = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).view(1, 1, size, size)


def ssim(
    x: Tensor, y: Tensor, data_range: float, *, size: int = 11, sigma: float = 1.5,
    structure_only: bool = False,
) -> Tensor:
    """Differentiable Wang SSIM (Gaussian window, 'valid', population statistics), batch mean.

    Args:
        x, y: (B, 1, H, W) in a range of width ``data_range`` (2 for [-1, 1], 255 for raw).
        structure_only: drop the luminance term (DenseFuse TF's contrast-structure SSIM, §6.2).

    Returns:
        Scalar mean SSIM over the batch and the map.
    """
    w = _gaussian_window(size, sigma, x)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    if structure_only:
        return cs.mean()
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).mean()


def soft_labels(n: int, low: float, high: float, like: Tensor) -> Tensor:
    """(n, 1) labels drawn U[low, high], one per sample (FusionGAN family soft labels)."""
    return torch.rand(n, 1, dtype=like.dtype, device=like.device) * (high - low) + low


def _flat(out: Tensor) -> Tensor:
    """D output of any shape (B, ...) -> (B, k): every score compared with its sample's label."""
    return out.reshape(out.shape[0], -1)


def gradient_penalty(d: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = d(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.reshape(grad.shape[0], -1).norm(dim=1) - 1) ** 2).mean()


def d_loss(
    d: nn.Module, real: Tensor, fake: Tensor, kind: Adversarial, lambda_gp: float = 10.0
) -> Tensor:
    """Discriminator/critic loss; ``fake`` should be detached by the caller.

    lsgan: mean((D(real) - U[0.7,1.2])^2) + mean((D(fake) - U[0,0.3])^2) (FusionGAN §2.3).
    bce: BCE-with-logits against 1 (real) and 0 (fake).
    wgan_gp: mean D(fake) - mean D(real) + lambda_gp * gradient penalty.
    """
    out_real, out_fake = _flat(d(real)), _flat(d(fake))
    n = real.shape[0]
    if kind == "lsgan":
        return (F.mse_loss(out_real, soft_labels(n, 0.7, 1.2, out_real).expand_as(out_real))
                + F.mse_loss(out_fake, soft_labels(n, 0.0, 0.3, out_fake).expand_as(out_fake)))
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real))
                + F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake)))
    if kind == "wgan_gp":
        return out_fake.mean() - out_real.mean() + lambda_gp * gradient_penalty(d, real, fake)
    raise ValueError(f"unknown adversarial kind {kind!r}; valid: lsgan, wgan_gp, bce")


def g_adv_loss(d: nn.Module, fake: Tensor, kind: Adversarial) -> Tensor:
    """Generator's adversarial term: lsgan mean((D(F) - U[0.7,1.2])^2), bce -log sigma(D(F)),
    wgan_gp -mean D(F)."""
    out = _flat(d(fake))
    if kind == "lsgan":
        return F.mse_loss(out, soft_labels(out.shape[0], 0.7, 1.2, out).expand_as(out))
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
    if kind == "wgan_gp":
        return -out.mean()
    raise ValueError(f"unknown adversarial kind {kind!r}; valid: lsgan, wgan_gp, bce")


def gaussian_blur_separable(x: Tensor, sigma: float, radius: int, pad: str = "zeros") -> Tensor:
    """Gaussian blur of (B, C, H, W) with a normalised (2 radius + 1)-tap kernel, applied as a
    row then a column pass; ``pad``: ``zeros`` (= the 2-D zero-padded convolution) or
    ``replicate`` (edge pixels repeated, as MATLAB ``imgaussfilt``). Same shape out."""
    ax = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = (g / g.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, 2 * radius + 1)
    if pad != "zeros":
        x = F.pad(x, (radius,) * 4, mode=pad)
        x = F.conv2d(x, g, groups=x.shape[1])
        return F.conv2d(x, g.transpose(2, 3), groups=x.shape[1])
    x = F.conv2d(x, g, padding=(0, radius), groups=x.shape[1])
    return F.conv2d(x, g.transpose(2, 3), padding=(radius, 0), groups=x.shape[1])


def ms_ssim_l1_loss(x: Tensor, y: Tensor, sigmas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0),
                    alpha: float = 0.025, compensation: float = 200.0) -> Tensor:
    """Zhao et al.'s mixed MS-SSIM + L1 loss as kornia's ``MS_SSIMLoss`` defines it (TarDAL's
    ``src_fn: v1``, models.md §7.2): per pixel, with Gaussians G_s of every sigma s (taps
    4 * max(sigma) + 1, zero padding, data range 1, K = (0.01, 0.03)),
    ``loss = compensation * (alpha * (1 - l_M * prod_s cs_s) + (1 - alpha) * G_max * |x - y|)``
    where l_M is the luminance term at the largest sigma; mean over pixels and batch.

    Args:
        x, y: (B, 1, H, W) in [0, 1].

    Returns:
        Scalar loss (0 for x == y).
    """
    radius = int(2 * sigmas[-1])
    c1, c2 = 0.01**2, 0.03**2
    cs_prod: Tensor | None = None
    lum = x
    for s in sigmas:
        mx, my = gaussian_blur_separable(x, s, radius), gaussian_blur_separable(y, s, radius)
        sxx = gaussian_blur_separable(x * x, s, radius) - mx * mx
        syy = gaussian_blur_separable(y * y, s, radius) - my * my
        sxy = gaussian_blur_separable(x * y, s, radius) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        cs_prod = cs if cs_prod is None else cs_prod * cs
        lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    ms_ssim_term = 1.0 - lum * cs_prod
    l1_term = gaussian_blur_separable((x - y).abs(), sigmas[-1], radius)
    return (compensation * (alpha * ms_ssim_term + (1 - alpha) * l1_term)).mean()


def wgan_div_penalty(d: nn.Module, real: Tensor, fake: Tensor, power: float = 6.0,
                     eps: float = 1e-6) -> Tensor:
    """TarDAL's WGAN-div term (functions/div_loss.py): ``E ||grad D(x_hat) + eps||_2 ^ power`` on
    random interpolates x_hat = alpha * real + (1 - alpha) * fake, one alpha per sample (eps is
    added to every gradient element before the norm, as coded)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = d(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.reshape(grad.shape[0], -1) + eps).norm(dim=1) ** power).mean()
