"""UFGAN's networks: the three generators (U-Net, FusionModel, DDcGAN-like) and the discriminator.

Specification: ../shared/docs/models.md §1.2 (generators) and §1.3 (discriminator), re-implemented
"as intended" (§1.9). Every generator maps (B, 2, H, W) [IR, VI] in [-1, 1] (§0.13 channel order)
to (B, 1, H', W') in [-1, 1] (tanh) and tells its size rule through :meth:`output_size` and
:meth:`plan` (what ``UFGAN.fuse`` pads to). Convs keep PyTorch's default init: the repo's
``kaiming_normal_`` on ``m.weight.data`` never reaches spectral-normalised layers (§1.2 notes), and
spectral normalisation divides out the weight scale anyway. LeakyReLU slope 0.01 (PyTorch default,
as the repo), BN momentum 0.1 (PyTorch default, as the repo).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from fusion_models.models.base import DNorm, norm_layer

Norm = Literal["batch", "instance", "layer", "none"]
Padding = Literal["same", "valid"]


def _sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(layer) if enabled else layer


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return norm_layer(kind, channels)  # batch (PyTorch defaults), layer, none


def conv_norm_act(cin: int, cout: int, *, kernel: int = 3, stride: int = 1, padding: int = 1,
                  norm: Norm = "batch", sn: bool = True, act: str = "lrelu") -> nn.Sequential:
    """(SN-)conv -> norm -> LeakyReLU(0.01) | tanh: the repo's ``conv_bn_lr`` unit."""
    conv = _sn(nn.Conv2d(cin, cout, kernel, stride, padding), sn)
    return nn.Sequential(conv, _norm(norm, cout), nn.Tanh() if act == "tanh" else nn.LeakyReLU())


def _block(cin: int, cout: int, padding: int, norm: Norm, sn: bool, act: str = "lrelu"
           ) -> nn.Sequential:
    """U-Net block: two 3x3 conv-norm-act units."""
    return nn.Sequential(
        conv_norm_act(cin, cout, padding=padding, norm=norm, sn=sn, act=act),
        conv_norm_act(cout, cout, padding=padding, norm=norm, sn=sn, act=act),
    )


def _centre_crop(x: Tensor, h: int, w: int) -> Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def valid_unet_output(n: int, depth: int) -> int | None:
    """Output side of the valid-conv U-Net for an input side ``n`` (None: not admissible).

    Each level loses 4 px to its two valid 3x3 convs; every pooled size must be even so that the
    2x2 transposed conv restores it exactly and the skip crops are centred.
    """
    s = n
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    for _ in range(depth):
        s = 2 * s - 4
    return s if s > 0 else None


class UNetGenerator(nn.Module):
    """UFGAN's ``U_GAN`` (§1.2) with the size bugs fixed.

    Encoder level i: block(base*2^i); 2x2 max-pool; bottleneck block(base*2^depth); decoder:
    (SN-)ConvTranspose 2x2/2 + norm + LeakyReLU, concat the skip, block; the last decoder block
    uses tanh activations (as coded); a 1x1 conv (no SN) and tanh. Dropout (``nn.Dropout``
    modules, so ``eval()`` turns them off) after the encoder block of level ``depth - 2`` (its
    output is also the skip, as coded) and after the last pool.

    ``padding="same"``: 3x3 convs pad 1, the input is reflect-padded on the bottom/right to a
    multiple of 2^depth and the output cropped back, so output size = input size for any H, W.
    ``padding="valid"``: unpadded convs and centre-cropped skips (the original U-Net); output
    side = :func:`valid_unet_output` (e.g. 188 -> 4, 220 -> 36 for depth 4).
    """

    def __init__(self, base_width: int = 64, depth: int = 4, padding: Padding = "same",
                 norm: Norm = "batch", sn: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        self.depth, self.padding = depth, padding
        pad = 1 if padding == "same" else 0
        widths = [base_width * 2**i for i in range(depth + 1)]
        cins = [2] + widths[:-2]
        self.down = nn.ModuleList(_block(cins[i], widths[i], pad, norm, sn) for i in range(depth))
        self.pool = nn.MaxPool2d(2, 2)
        self.drop_skip = nn.Dropout(dropout)
        self.drop_bottom = nn.Dropout(dropout)
        self.bottleneck = _block(widths[-2], widths[-1], pad, norm, sn)
        self.up = nn.ModuleList(
            nn.Sequential(_sn(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2), sn),
                          _norm(norm, widths[i]), nn.LeakyReLU())
            for i in reversed(range(depth)))
        self.dec = nn.ModuleList(
            _block(2 * widths[i], widths[i], pad, norm, sn, act="tanh" if i == 0 else "lrelu")
            for i in reversed(range(depth)))
        self.head = nn.Conv2d(base_width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2, H, W) in [-1, 1] -> (B, 1, output_size(H), output_size(W)) in [-1, 1]."""
        h, w = x.shape[-2:]
        if self.padding == "same":
            m = 2**self.depth
            ph, pw = -h % m, -w % m
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
        elif valid_unet_output(h, self.depth) is None or valid_unet_output(w, self.depth) is None:
            raise ValueError(f"valid U-Net (depth {self.depth}) cannot take a {h}x{w} input; "
                             f"use plan() for an admissible size")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i == self.depth - 2:
                x = self.drop_skip(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(self.drop_bottom(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = up(x)
            x = dec(torch.cat([x, _centre_crop(skip, *x.shape[-2:])], dim=1))
        x = torch.tanh(self.head(x))
        return x[..., :h, :w] if self.padding == "same" else x

    def output_size(self, n: int) -> int:
        """Output side for an input side ``n`` (ValueError where the valid net cannot take n)."""
        if self.padding == "same":
            return n
        out = valid_unet_output(n, self.depth)
        if out is None:
            raise ValueError(f"valid U-Net (depth {self.depth}) cannot take a side of {n}")
        return out

    def plan(self, size: int) -> tuple[int, int]:
        """(input side, leading pad) whose output's first ``size`` pixels cover ``size``."""
        if self.padding == "same":
            return size, 0
        n = size
        while valid_unet_output(n, self.depth) is None or valid_unet_output(n, self.depth) < size:
            n += 1
        return n, (n - valid_unet_output(n, self.depth)) // 2


class _SameSize(nn.Module):
    """Size rule of the 'same'-padded plain generators: output = input, no padding at fuse."""

    def output_size(self, n: int) -> int:
        return n

    def plan(self, size: int) -> tuple[int, int]:
        return size, 0


class FusionModelGenerator(_SameSize):
    """UFGAN's ``FusionModel`` (§1.2): 2->256->128->64->32->1, 3x3 pad 1, (SN-)conv-norm-act.

    LeakyReLU on the first four layers; the last is conv-norm-tanh (as coded, BN included).
    ``nn.Dropout2d(dropout)`` after layers 0 and 2; the repo's third Dropout2d on the 1-channel
    output is left out (see ufgan.py's deviations).
    """

    def __init__(self, norm: Norm = "batch", sn: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        widths = (2, 256, 128, 64, 32)
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(conv_norm_act(widths[i], widths[i + 1], norm=norm, sn=sn))
            if i in (0, 2):
                layers.append(nn.Dropout2d(dropout))
        layers.append(conv_norm_act(32, 1, norm=norm, sn=sn, act="tanh"))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2, H, W) in [-1, 1] -> (B, 1, H, W) in [-1, 1]."""
        return self.net(x)


class DenseGenerator(_SameSize):
    """UFGAN's DDcGAN-like generator (§1.2): dense encoder, plain decoder, 3x3 pad 1 throughout.

    Encoder: 2->48, then four 48-wide convs on the running concatenation (48, 96, 144, 192 in),
    240 channels out; decoder 240->240->128->64->32->1. conv-norm-LeakyReLU, the last conv-norm-
    tanh (as coded). No spectral norm and no dropout (the repo's variant has neither).
    """

    def __init__(self, norm: Norm = "batch") -> None:
        super().__init__()
        self.stem = conv_norm_act(2, 48, norm=norm, sn=False)
        self.dense = nn.ModuleList(conv_norm_act(48 * (i + 1), 48, norm=norm, sn=False)
                                   for i in range(4))
        widths = (240, 240, 128, 64, 32)
        self.decoder = nn.Sequential(
            *(conv_norm_act(widths[i], widths[i + 1], norm=norm, sn=False) for i in range(4)),
            conv_norm_act(32, 1, norm=norm, sn=False, act="tanh"))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2, H, W) in [-1, 1] -> (B, 1, H, W) in [-1, 1]."""
        feats = [self.stem(x)]
        for layer in self.dense:
            feats.append(layer(torch.cat(feats, dim=1)))
        return self.decoder(torch.cat(feats, dim=1))


class Discriminator(nn.Module):
    """UFGAN's D (§1.3): four 3x3 stride-2 valid (SN-)conv-norm-LeakyReLU(0.01), 1->32->64->128
    ->256, global max pooling, a 1x1 conv head; raw score (B, 1, 1, 1). Input side >= 31.
    ``norm``: ``batch`` (the repo), ``layer`` (GroupNorm(1, C), e.g. for WGAN-GP) or ``none``."""

    def __init__(self, norm: DNorm = "batch", sn: bool = True) -> None:
        super().__init__()
        widths = (1, 32, 64, 128, 256)
        self.body = nn.Sequential(*(
            conv_norm_act(widths[i], widths[i + 1], stride=2, padding=0, norm=norm, sn=sn)
            for i in range(4)))
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Conv2d(256, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) in [-1, 1] -> (B, 1, 1, 1) raw scores."""
        return self.head(self.body(x))
