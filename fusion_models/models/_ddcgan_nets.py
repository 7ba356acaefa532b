"""DDcGAN's networks, resampling rules and TF1-style RMSProp (models.md §3.1, §3.2, §3.4).

Sizes: the generator keeps H x W (reflect pad 1 before every 3x3 conv); the discriminators map
(B, 1, n, n) to one logit each (n -> ceil(n/2) three times: 84 -> 42 -> 21 -> 11, 21 -> 3).
Everything works in [0, 1] (§0.2). See :mod:`fusion_models.models.ddcgan` for the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion_models.models.base import DNorm, norm_layer

# tf.layers.batch_normalization's epsilon. Its moving averages were never updated in the TF
# code (training=True, no UPDATE_OPS dependency), so there is no code momentum to copy: 0.1
# (PyTorch's default, TF decay 0.9) lets the running statistics we use at test time settle.
BN_EPS, BN_MOMENTUM = 1e-3, 0.1
ENCODER_GROWTH = 48  # channels added by each dense-block conv (48 + 4 * 48 = 240)


def _trunc_normal(weight: Tensor, std: float) -> None:
    """TF ``truncated_normal(stddev=std)``: normal cut at 2 std."""
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class ConvBlock(nn.Module):
    """Reflect pad 1, 3x3 conv (``stride``), optional norm, optional ReLU (Generator.py conv2d).

    ``norm``: ``batch`` (BN, eps 1e-3), ``layer`` (GroupNorm(1, C), eps 1e-3) or ``none``; the
    module keeps the attribute name ``bn`` whatever its kind (checkpoint keys).
    """

    def __init__(self, cin: int, cout: int, *, stride: int = 1, norm: DNorm = "batch",
                 relu: bool = True, std: float = 0.05) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride)
        _trunc_normal(self.conv.weight, std)
        nn.init.zeros_(self.conv.bias)
        self.bn = None if norm == "none" else norm_layer(norm, cout, BN_EPS, BN_MOMENTUM)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.bn is not None:
            y = self.bn(y)
        return F.relu(y) if self.relu else y


class Generator(nn.Module):
    """Dense-encoder generator of §3.1: (vi, ir) -> (B, 1, H, W) fused in [0, 1].

    Encoder: conv 2->48, then four dense convs 48->48, 96->48, 144->48, 192->48, each output
    concatenated in front of its input (-> 240 channels). Decoder: the 240->240 conv applied
    twice with the same weights (first without BN, then with BN; the code's loop quirk), then
    240->128->64->32 (BN, ReLU) and 32->1, tanh/2 + 0.5. Weights N(0, 0.05) cut at 2 std.

    With ``multi_resolution`` the IR input is (B, 1, H/4, W/4) and passes a 1->1 3x3
    transposed conv of stride 4 (TF 'SAME', no bias, std 0.1: each input pixel fills a 3x3
    block of its 4x4 cell, the fourth row and column stay zero); the VI passes a 1->1 3x3
    transposed conv of stride 1 (Deconv.py). Channel order is [VI, IR] (§0.13).
    """

    def __init__(self, multi_resolution: bool = False) -> None:
        super().__init__()
        self.up_ir: nn.ConvTranspose2d | None = None
        self.up_vi: nn.ConvTranspose2d | None = None
        if multi_resolution:
            self.up_ir = nn.ConvTranspose2d(1, 1, 3, stride=4, output_padding=1, bias=False)
            self.up_vi = nn.ConvTranspose2d(1, 1, 3, stride=1, padding=1, bias=False)
            _trunc_normal(self.up_ir.weight, 0.1)
            _trunc_normal(self.up_vi.weight, 0.1)
        g = ENCODER_GROWTH
        self.conv1 = ConvBlock(2, g)
        self.dense = nn.ModuleList(ConvBlock(g * (i + 1), g) for i in range(4))
        self.dec0 = ConvBlock(5 * g, 5 * g, norm="none")
        self.dec0_bn = nn.BatchNorm2d(5 * g, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dec = nn.Sequential(ConvBlock(5 * g, 128), ConvBlock(128, 64), ConvBlock(64, 32))
        self.out = ConvBlock(32, 1, norm="none", relu=False)

    def encode(self, x: Tensor) -> Tensor:
        """(B, 2, H, W) [VI, IR] -> (B, 240, H, W) dense features."""
        x = self.conv1(x)
        for block in self.dense:
            x = torch.cat([block(x), x], dim=1)
        return x

    def forward(self, vi: Tensor, ir: Tensor) -> Tensor:
        if self.up_ir is not None and self.up_vi is not None:
            ir, vi = self.up_ir(ir), self.up_vi(vi)
        y = self.dec0(self.encode(torch.cat([vi, ir], dim=1)))
        conv = self.dec0.conv  # the second pass of the same kernel, now with BN and ReLU
        y = F.relu(self.dec0_bn(conv(F.pad(y, (1, 1, 1, 1), mode="reflect"))))
        return torch.tanh(self.out(self.dec(y))) / 2 + 0.5


def d_output_side(size: int) -> int:
    """Side of the D's last feature map: reflect pad 1 + 3x3 stride 2 three times (ceil)."""
    for _ in range(3):
        size = (size + 1) // 2
    return size


class Discriminator(nn.Module):
    """D1/D2 of §3.2: (B, 1, size, size) in [0, 1] -> (B, 1) logits.

    Three reflect-padded 3x3 stride-2 convs 1-16-32-64 (BN on the last two, ReLU, weights
    N(0, 0.1) cut at 2 std), flatten, dense -> t. The code outputs tanh(t)/2 + 0.5, which is
    sigmoid(2t): we return the logit 2t so the BCE losses are numerically safe. ``norm``
    replaces the two BNs (``layer``/``none``, e.g. for WGAN-GP).
    """

    def __init__(self, size: int = 84, norm: DNorm = "batch") -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBlock(1, 16, stride=2, norm="none", std=0.1),
            ConvBlock(16, 32, stride=2, norm=norm, std=0.1),
            ConvBlock(32, 64, stride=2, norm=norm, std=0.1),
        )
        self.fc = nn.Linear(64 * d_output_side(size) ** 2, 1)
        nn.init.xavier_uniform_(self.fc.weight)  # tf.layers.dense's glorot_uniform default
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * self.fc(self.features(x).flatten(1))


def downsample_quarter(x: Tensor) -> Tensor:
    """The low-resolution source of training: (B, 1, H, W) -> (B, 1, H // 4, W // 4) in [0, 1].

    The code uses ``scipy.ndimage.zoom(ir, 0.25)`` (cubic spline, order 3). Equivalent here:
    bicubic sampling on the same grid (``align_corners=True`` = scipy's ``grid_mode=False``),
    clamped to [0, 1] as a stored low-resolution image would be.
    """
    size = (x.shape[-2] // 4, x.shape[-1] // 4)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True).clamp(0.0, 1.0)


def avg_pool_same(x: Tensor) -> Tensor:
    """TF ``avg_pool(3x3, stride 2, 'SAME')`` for even H, W: pads 1 px right/bottom, which the
    mean leaves out (out = H/2). Two of these take F from 84 to 21 for D_i (§3.2)."""
    return F.avg_pool2d(x, 3, stride=2, ceil_mode=True, count_include_pad=False)


class TFRMSprop(torch.optim.Optimizer):
    """TF1 ``RMSPropOptimizer`` (decay 0.9, momentum 0, eps 1e-10), which differs from
    ``torch.optim.RMSprop``: the mean square starts at ONE (not zero) and eps sits inside the
    root: ms = decay * ms + (1 - decay) * g^2; p -= lr * g / sqrt(ms + eps)."""

    def __init__(self, params: Iterable[Tensor], lr: float, decay: float = 0.9,
                 eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "decay": decay, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                ms = state["ms"]
                ms.mul_(group["decay"]).addcmul_(p.grad, p.grad, value=1 - group["decay"])
                p.addcdiv_(p.grad, (ms + group["eps"]).sqrt(), value=-group["lr"])
        return loss
