"""CNN-CP's siamese network, its weight map and the blurred training patches.

The network follows Liu et al.'s siamese design (Liu, Chen, Peng, Wang, "Multi-focus image
fusion with a deep convolutional neural network", Information Fusion 36, 2017; the medical
model of Liu, Chen, Cheng, Peng, FUSION 2017, yuliu316316/CNN-Medical-Fusion): each 16 x 16
patch goes through one shared branch conv3x3(1->w) ReLU, conv3x3(w->2w) ReLU, max-pool 2,
conv3x3(2w->4w) ReLU (zero 'same' padding, as the MATLAB code's ``conv2(..., 'same')``); the
two 8 x 8 x 4w maps are concatenated and an 8 x 8 'valid' conv scores them. Run fully
convolutionally on whole images it scores every 16 x 16 window at stride 2; the weight map
averages each pixel's overlapping window scores (Script_gray.m: sumMap / cntMap).

See :mod:`fusion_models.models.cnncp` for the model and the choices made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATCH = 16  # the siamese network's receptive window (8 x 8 after the pool)
STRIDE = 2  # window step of the fully convolutional score map (the one pool)


class SiameseNet(nn.Module):
    """Scores which of two patches is the sharper / more active one.

    Args:
        width: channels of the first conv; the branch is width -> 2 width -> 4 width
            (Liu et al.: 64 -> 128 -> 256).
        head_channels: 0 = the medical model's head (one 8 x 8 conv from the 8 width
            concatenated channels straight to the score); > 0 = the multi-focus model's
            hidden 8 x 8 conv to ``head_channels`` (256), ReLU, then a 1 x 1 conv to the score.
    """

    def __init__(self, width: int = 64, head_channels: int = 0) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(inplace=True),
        )
        half = PATCH // 2
        if head_channels > 0:
            self.head = nn.Sequential(nn.Conv2d(8 * width, head_channels, half),
                                      nn.ReLU(inplace=True), nn.Conv2d(head_channels, 1, 1))
        else:
            self.head = nn.Conv2d(8 * width, 1, half)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits that A's window is the sharper one.

        Args:
            a, b: (B, 1, H, W) in [0, 1], H, W >= 15.

        Returns:
            (B, 1, ceil(H/2) - 7, ceil(W/2) - 7) logits; entry (i, j) scores the 16 x 16
            windows starting at pixel (2i, 2j) (16 x 16 inputs -> one logit).
        """
        feats = self.branch(torch.cat([a, b], dim=0))  # one pass, shared weights
        fa, fb = feats.chunk(2, dim=0)
        return self.head(torch.cat([fa, fb], dim=1))


def window_average(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Each pixel's mean over the scores of the 16 x 16 windows (stride 2) covering it.

    Args:
        scores: (B, 1, h, w) window scores, e.g. probabilities in [0, 1].
        size: (H, W) of the image; h = ceil(H/2) - 7, w = ceil(W/2) - 7.

    Returns:
        (B, 1, H, W), values within the scores' range.
    """
    ones = scores.new_ones((1, 1, PATCH, PATCH))
    total = F.conv_transpose2d(scores, ones, stride=STRIDE)
    count = F.conv_transpose2d(torch.ones_like(scores[:1]), ones, stride=STRIDE)
    return (total / count)[..., : size[0], : size[1]]


def gaussian_kernel(size: int, sigma: float, like: Tensor) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (odd), dtype/device of ``like``."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def blur(x: Tensor, kernel: Tensor) -> Tensor:
    """Separable blur with a 1-D ``kernel`` (odd taps), reflect borders: same shape as x."""
    r = kernel.numel() // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), kernel.view(1, 1, -1, 1))


def blurred_copies(x: Tensor, sigma: float, size: int, max_repeats: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """Each patch blurred k times by a ``size``-tap Gaussian of ``sigma``, k uniform in
    1..max_repeats per patch (Liu et al.: 7 x 7, sigma 2, five blur levels).

    Args:
        x: (N, 1, P, P) patches in [0, 1].

    Returns:
        (N, 1, P, P) blurred patches in [0, 1].
    """
    kernel = gaussian_kernel(size, sigma, x)
    repeats = torch.randint(1, max_repeats + 1, (x.shape[0],), generator=generator)
    out, current = torch.empty_like(x), x
    for k in range(1, max_repeats + 1):
        current = blur(current, kernel)
        chosen = (repeats == k).to(x.device)
        out[chosen] = current[chosen]
    return out
