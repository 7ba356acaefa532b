"""MFIF-GAN's networks (ycwang-libra/MFIF-GAN:model.py; models.md §8).

Generator (the code's ``Generator`` + ``Line``): one encoder with shared weights runs on each
source (Siamese); its features are concatenated and decoded to a focus map in (0, 1).

- Encoder: 7x7 conv 1 -> c, BN, ReLU; two 3x3 stride-2 convs c -> 2c -> 4c, BN, ReLU; then
  ``blocks`` SE basic blocks at 4c (two 3x3 convs with BN, ReLU between; a squeeze-excitation
  gate (global mean, linear 4c -> 4c/r, ReLU, linear -> 4c, sigmoid, no biases) on the second
  conv's output; identity shortcut added; ReLU). With c = 64: 64, 128, 256 channels, 9 blocks.
- Decoder: concat(F_A, F_B) (8c) -> two 4x4 stride-2 transposed convs 8c -> 4c -> 2c, BN,
  ReLU -> 7x7 conv 2c -> 1, sigmoid. No conv has a bias; PyTorch default initialisation (the
  code sets none); BN eps 1e-5, momentum 0.1.
- Sizes: H -> ceil(H/2) -> ceil(H/4) -> 4 * ceil(H/4) (>= H, exact when 4 divides H).

Discriminator (the code's ``Discriminator``, conditional on the sources): input (A, B, map).

- 4x4 stride-2 pad-2 conv -> c, LeakyReLU(0.01); ``repeats - 1`` 4x4 stride-2 pad-1 convs
  doubling the channels, norm, LeakyReLU(0.01); ``repeats`` 4x4 stride-2 pad-2 convs (no bias)
  keeping them, norm, ReLU; a 4x4 stride-1 pad-2 conv -> 1; sigmoid (skipped for ``bce``, whose
  loss takes logits). Output: a (B, 1, h, w) patch map (256 -> 129, 64, 32, 17, 9, 5 -> 6).
  With c = 64, repeats = 3: 64, 128, 256, 256, 256, 256 channels and 5 norm layers.
- The first conv over the 3-channel stack is split into a map part (1 -> c, with the bias) and a
  source part (2 -> c, no bias); their sum is the same linear map as one conv over
  cat(A, B, map), and D can be asked about a map alone (sources = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusion_models.models.base import DNorm, norm_layer


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), _bn(cout),
            nn.ReLU(inplace=True)]


class SEBlock(nn.Module):
    """Squeeze-excitation basic block at ``channels`` (SE gate reduction ``reduction``).

    (B, C, H, W) -> (B, C, H, W): relu(x + se(bn(conv(relu(bn(conv(x))))))).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.body = nn.Sequential(
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), _bn(channels))
        self.gate = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        w = self.gate(y.mean(dim=(2, 3)))
        return torch.relu(x + y * w[:, :, None, None])


class Generator(nn.Module):
    """Siamese residual focus-map generator (see the module docstring).

    Args:
        channels: base filters c (64).
        blocks: SE residual blocks in the encoder (9).
        reduction: SE reduction ratio (16).
    """

    def __init__(self, channels: int = 64, blocks: int = 9, reduction: int = 16) -> None:
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(
            *_conv_bn_relu(1, c, 7), *_conv_bn_relu(c, 2 * c, 3, 2),
            *_conv_bn_relu(2 * c, 4 * c, 3, 2),
            *[SEBlock(4 * c, reduction) for _ in range(blocks)])
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(8 * c, 4 * c, 4, 2, 1, bias=False), _bn(4 * c),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), _bn(2 * c),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 1, 7, padding=3, bias=False), nn.Sigmoid())

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """(B, 1, H, W) x 2 in [-1, 1] -> (B, 1, 4*ceil(H/4), 4*ceil(W/4)) map in (0, 1):
        the weight of A in the fusion (1 = A in focus)."""
        # one encoder, two calls: BN normalises each source's batch on its own, as the code
        return self.decoder(torch.cat([self.encoder(a), self.encoder(b)], dim=1))


class Discriminator(nn.Module):
    """Conditional patch critic on (A, B, focus map) (see the module docstring).

    Args:
        channels: filters of the first conv c (64).
        repeats: the code's ``d_repeat_num`` (3): strided convs that double the channels
            (``repeats - 1`` after the first) and strided convs that keep them (``repeats``).
        norm: layers after every conv but the first and the last: ``batch`` (the code's BN),
            ``layer`` (GroupNorm(1, C)) or ``none``.
        sigmoid: end in the code's sigmoid (False: raw logits, for BCE-with-logits).
    """

    def __init__(self, channels: int = 64, repeats: int = 3, norm: DNorm = "batch",
                 sigmoid: bool = True) -> None:
        super().__init__()
        self.map_conv = nn.Conv2d(1, channels, 4, 2, 2)
        self.source_conv = nn.Conv2d(2, channels, 4, 2, 2, bias=False)
        layers: list[nn.Module] = [nn.LeakyReLU(0.01)]
        c = channels
        for _ in range(repeats - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), norm_layer(norm, 2 * c),
                       nn.LeakyReLU(0.01)]
            c *= 2
        for _ in range(repeats):
            layers += [nn.Conv2d(c, c, 4, 2, 2, bias=False), norm_layer(norm, c),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(c, 1, 4, 1, 2))
        if sigmoid:
            layers.append(nn.Sigmoid())
        self.main = nn.Sequential(*layers)

    def forward(self, focus_map: Tensor, sources: Tensor | None = None) -> Tensor:
        """Score a focus map given its sources.

        Args:
            focus_map: (B, 1, H, W) in [0, 1].
            sources: (B, 2, H, W) = cat(A, B) in [-1, 1]; None = zeros (the map alone).

        Returns:
            (B, 1, h, w) patch scores, in (0, 1) with ``sigmoid``.
        """
        x = self.map_conv(focus_map)
        if sources is not None:
            x = x + self.source_conv(sources)
        return self.main(x)


class Conditioned(nn.Module):
    """``D(map, sources)`` with the sources fixed: a one-argument critic for
    :func:`~fusion_models.models.losses.d_loss` (its gradient penalty then interpolates and
    differentiates the map only, as the authors' ``gradient_penalty(D(A, B, x_hat), x_hat)``)."""

    def __init__(self, discriminator: Discriminator, sources: Tensor) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.sources = sources

    def forward(self, focus_map: Tensor) -> Tensor:
        """(B, 1, H, W) map in [0, 1] -> (B, 1, h, w) scores."""
        return self.discriminator(focus_map, self.sources)
