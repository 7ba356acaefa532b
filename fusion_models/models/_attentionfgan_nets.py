"""AttentionFGAN's networks: the multi-scale attention module, the generator (two attention
networks + the fusion network) and the attention discriminator.

Sizes: the attention networks keep H x W (zero 'SAME' padding, TF's default in the FusionGAN
family); the fusion network is FusionGAN's valid-conv stack, so G maps a (B, 1, H, W) pair to
(B, 1, H - 12, W - 12); each discriminator maps (B, 1, n, n) to (B, 1) scores through
FusionGAN's four 'VALID' stride-2 convs (n -> (n - 3) // 2 + 1, four times).
Images are in [-1, 1]; attention maps in [0, 1]. The model and every choice the paper leaves
open: :mod:`fusion_models.models.attentionfgan`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_models.models.base import DNorm, norm_layer

SHRINK = 12  # FusionGAN's valid 5x5, 5x5, 3x3, 3x3 convs take 12 px off each side pair
G_ATT_WIDTH = 32  # channels of the generator's attention networks
D_ATT_WIDTH = 16  # channels of the discriminators' attention stems


def _same(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    """k x k conv, stride 1, zero 'SAME' padding (odd k)."""
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class MultiScaleAttention(nn.Module):
    """Features (B, C, H, W) -> attention maps (B, S, H, W) in [0, 1], one per scale.

    Scale k = 0 .. S-1: average pooling 2^k x 2^k (ceil mode, so odd sizes keep their last
    row/column), a 3x3 conv C->C + LeakyReLU 0.2, a 1x1 conv C->1 and a sigmoid, giving a
    (B, 1, ceil(H / 2^k), ceil(W / 2^k)) map; bilinear up-sampling back to H x W (a convex
    combination, so it stays in [0, 1]). Each scale has its own weights.
    """

    def __init__(self, channels: int, n_scales: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(_same(channels, channels), nn.LeakyReLU(0.2), _same(channels, 1, 1))
            for _ in range(n_scales))

    def maps_per_scale(self, x: Tensor) -> list[Tensor]:
        """The S maps at their own scales: (B, 1, ceil(H / 2^k), ceil(W / 2^k)) in [0, 1]."""
        maps = []
        for k, branch in enumerate(self.branches):
            y = F.avg_pool2d(x, 2**k, ceil_mode=True) if k else x
            maps.append(torch.sigmoid(branch(y)))
        return maps

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        maps = [m if m.shape[-2:] == size
                else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in self.maps_per_scale(x)]
        return torch.cat(maps, dim=1)


class AttentionNet(nn.Module):
    """One source's attention network: (B, 1, H, W) in [-1, 1] -> (B, S, H, W) in [0, 1].

    Stem: 3x3 convs 1->16->32, LeakyReLU 0.2, then :class:`MultiScaleAttention` (32 ch).
    """

    def __init__(self, n_scales: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(_same(1, G_ATT_WIDTH // 2), nn.LeakyReLU(0.2),
                                  _same(G_ATT_WIDTH // 2, G_ATT_WIDTH), nn.LeakyReLU(0.2))
        self.msa = MultiScaleAttention(G_ATT_WIDTH, n_scales)

    def forward(self, x: Tensor) -> Tensor:
        return self.msa(self.stem(x))


class Generator(nn.Module):
    """Two attention networks (IR, VI) and FusionGAN's fusion network.

    The fusion network sees [IR, VI, A_ir (S maps), A_vi (S maps)] = 2 + 2S channels and runs
    FusionGAN's five 'VALID' convs 256-128-64-32-1 (5x5, 5x5, 3x3, 3x3, 1x1; BN eps 1e-5,
    momentum 0.1 and LeakyReLU 0.2 on the first four; tanh out).
    """

    def __init__(self, n_scales: int) -> None:
        super().__init__()
        self.att_ir = AttentionNet(n_scales)
        self.att_vi = AttentionNet(n_scales)
        layers: list[nn.Module] = []
        chans = (2 + 2 * n_scales, 256, 128, 64, 32)
        for cin, cout, k in zip(chans[:-1], chans[1:], (5, 5, 3, 3), strict=True):
            layers += [nn.Conv2d(cin, cout, k), nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1),
                       nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(32, 1, 1), nn.Tanh()]
        self.fusion = nn.Sequential(*layers)

    def attention(self, ir: Tensor, vi: Tensor) -> tuple[Tensor, Tensor]:
        """(A_ir, A_vi): (B, S, H, W) each, in [0, 1], for (B, 1, H, W) sources in [-1, 1]."""
        return self.att_ir(ir), self.att_vi(vi)

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
        """(B, 1, H, W) IR and VI in [-1, 1] -> (B, 1, H - 12, W - 12) fused in [-1, 1]."""
        a_ir, a_vi = self.attention(ir, vi)
        return self.fusion(torch.cat([ir, vi, a_ir, a_vi], dim=1))


class Discriminator(nn.Module):
    """A discriminator with its own multi-scale attention (one for IR, one for VI).

    ``attention(x)``: a 3x3 conv 1->16 + LeakyReLU 0.2 and :class:`MultiScaleAttention`
    -> (B, S, n, n) in [0, 1]. ``forward(x)``: the mean of those maps (B, 1, n, n) masks the
    input (x * A: D sees the attended regions only) before FusionGAN's D trunk: 3x3 stride-2
    'VALID' convs 32-64-128-256 (``norm`` after the last three), LeakyReLU 0.2, flatten,
    linear -> (B, 1) raw scores. ``norm``: ``batch`` (the paper's BN), ``layer`` or ``none``.
    """

    def __init__(self, size: int, n_scales: int, norm: DNorm = "batch") -> None:
        super().__init__()
        self.stem = nn.Sequential(_same(1, D_ATT_WIDTH), nn.LeakyReLU(0.2))
        self.msa = MultiScaleAttention(D_ATT_WIDTH, n_scales)
        chans = (1, 32, 64, 128, 256)
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2))
            if i:
                layers.append(norm_layer(norm, chans[i + 1], eps=1e-5, momentum=0.1))
            layers.append(nn.LeakyReLU(0.2))
            size = (size - 3) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(chans[-1] * size * size, 1)

    def attention(self, x: Tensor) -> Tensor:
        """(B, 1, n, n) in [-1, 1] -> (B, S, n, n) attention maps in [0, 1]."""
        return self.msa(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        mask = self.attention(x).mean(dim=1, keepdim=True)
        return self.fc(self.features(x * mask).flatten(1))
