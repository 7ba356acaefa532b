"""MFF-GAN: multi-focus fusion GAN with an adaptive decision block and gradient-map discriminator.

Zhang, Le, Shao, Xu, Ma, "MFF-GAN: An unsupervised generative adversarial network with adaptive
and gradient joint constraints for multi-focus image fusion", Information Fusion 66, 2021.
Authors' TF1 code: HaoZhang1018/MFF-GAN (model.py, utils.py, main.py). Spec: models.md §4.

A = near-focus source, B = far-focus source; networks work in [-1, 1] (§0.1), G ends in tanh.

- Generator (§4.1): two branches with separate weights, 'SAME' stride-1 convs, LeakyReLU 0.2,
  no BN, no SN, truncated-normal(std 1e-3) weights, zero biases; two "exchange" steps where each
  branch applies its own 1x1 conv to the concatenation of both branches' features; a 1x1 conv
  over all eight feature maps and tanh. :class:`TwoPathGenerator` is shared with PMGI (§5.1,
  same topology with BN and 3-channel inputs).
- Discriminator (§4.2): FusionGAN's D without SN (3x3 stride-2 valid convs 32-64-128-256, BN on
  the last three, LeakyReLU 0.2, flatten, linear). It sees GRADIENT maps: real = the joint
  gradient max(|lap(A)|, |lap(B)|), fake = |lap(F)|, lap = 4-neighbour Laplacian, zero 'SAME'.
- Adaptive decision block (§4.3): focus activity W = |I - G*...*G*I| (the 3x3 Gaussian applied
  ``blur_repeats`` times, zero 'SAME' padding); S_B = 1 where W_B > W_A, S_A = 1 - S_B (ties go
  to A, the near source), per pixel.
- L_G = w_adv * L_adv + w_content * (L_int + w_grad * L_grad) with the decision-weighted terms;
  LSGAN soft labels (§0.9); ``d_steps`` = 2 D updates per G update on the same batch; Adam 1e-4.
- Inference (§4.5): whole image, no padding (the 'SAME' convs keep the size).

Deliberate deviations from the authors' code:
- The D's flatten does not hard-code batch 32; the linear size is derived from ``patch``
  (60 -> 29 -> 14 -> 6 -> 2: 2*2*256 = 1,024 inputs). Flatten order is NCHW (TF: NHWC), which
  only matters for loading TF weights, and we train from scratch.
- G runs once per iteration: the D steps reuse its detached output (the TF loop re-ran the same,
  unchanged G for each D step: identical values).
- The Gaussian is built from (``blur_size``, ``blur_sigma``) and rounded to ``blur_decimals``
  digits; the defaults (3, 1.5, 4) give exactly the code's constants 0.0947/0.1183/0.1478.
- ``fuse`` returns [0, 1] clamped, with no per-image min-max stretch (§0.5: that stretch came
  from scipy.misc.imsave) unless ``output_stretch`` (set by the imported released checkpoints,
  so their rows show the authors' published images).
- ``adversarial`` also offers ``bce`` and ``wgan_gp`` (default ``lsgan``, the paper's). With
  ``wgan_gp`` the D's three BN layers become ``nn.GroupNorm(1, C)`` (layer norm, per sample;
  ``d_norm``, auto): a gradient penalty through batch statistics is ill-defined (Gulrajani et
  al. 2017). ``lsgan``/``bce`` keep the paper's BN D.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fusion_models.data.patches import PatchSpec
from fusion_models.models.base import (
    TF1_BN_EPS,
    AdversarialConfig,
    DNorm,
    FusionConfig,
    FusionModel,
    minmax_stretch,
    norm_layer,
    set_requires_grad,
)
from fusion_models.models.losses import d_loss, g_adv_loss, laplacian4

logger = logging.getLogger(__name__)


class Config(AdversarialConfig):
    """MFF-GAN hyperparameters; defaults are the authors' code values (models.md §4).

    Attributes:
        w_adv: weight of the generator's adversarial term (code: 1).
        w_content: weight of the content term L_int + w_grad * L_grad (code: 10).
        w_grad: weight of the decision-weighted gradient term inside the content term (code: 5).
        adversarial: GAN objective; ``lsgan`` with soft labels is the paper's (§0.9).
        d_norm: D's normalisation; None = auto: the paper's ``batch``, ``layer`` for
            ``wgan_gp`` (see :class:`~fusion_models.models.base.AdversarialConfig`).
        lambda_gp: gradient-penalty weight, used only with ``wgan_gp``.
        lr_g: generator Adam learning rate (1e-4).
        lr_d: discriminator Adam learning rate (1e-4).
        d_steps: discriminator updates per generator update, same batch (2).
        blur_size: side of the Gaussian low-pass kernel of the decision block (3).
        blur_sigma: its standard deviation (1.5, MATLAB fspecial('gaussian', 3, 1.5)).
        blur_decimals: round the kernel to this many decimals (4 reproduces the code's
            constants); None keeps the exact normalised Gaussian.
        blur_repeats: how many times the low-pass is applied before |I - blur(I)| (2).
        g_channels: feature maps per generator conv (16).
        d_channels: channels of the first D conv, doubled at each of the next three (32).
        init_std: std of the truncated-normal weight init, cut at 2 std (1e-3).
        epochs: training epochs (20; released checkpoints are CGAN.model-19).
        batch_size: patches per batch (32).
        patch: training window side; input and label are the same window (60). At least 31
            so the D's four valid stride-2 convs leave a map.
        stride: step between training windows (10).
        output_stretch: stretch each fused image to [0, 1] over its own min/max, as the
            authors' saved (published) images were by scipy.misc.imsave (§0.5); False = the
            generator's output as it is (our default). The imported released checkpoints
            set it, so their rows show the authors' published images.
    """

    w_adv: float = Field(1.0, ge=0)
    w_content: float = Field(10.0, ge=0)
    w_grad: float = Field(5.0, ge=0)
    adversarial: Literal["lsgan", "wgan_gp", "bce"] = "lsgan"
    lambda_gp: float = Field(10.0, ge=0)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    d_steps: int = Field(2, ge=1)
    blur_size: int = Field(3, ge=3)
    blur_sigma: float = Field(1.5, gt=0)
    blur_decimals: int | None = Field(4, ge=1)
    blur_repeats: int = Field(2, ge=1)
    g_channels: int = Field(16, ge=1)
    d_channels: int = Field(32, ge=1)
    init_std: float = Field(1e-3, gt=0)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    patch: int = Field(60, ge=31)
    stride: int = Field(10, ge=1)
    output_stretch: bool = False


# -- adaptive decision block (§4.3) ------------------------------------------------------------
def gaussian_kernel(size: int = 3, sigma: float = 1.5, decimals: int | None = 4) -> Tensor:
    """Normalised ``size x size`` Gaussian (MATLAB fspecial), optionally rounded (float32)."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    g = g / g.sum()
    if decimals is not None:
        g = torch.round(g, decimals=decimals)
    return g.float()


def focus_activity(x: Tensor, kernel: Tensor, repeats: int) -> Tensor:
    """W = |x - G*...*G*x| (``repeats`` blurs, zero 'SAME' padding), per channel.

    Args:
        x: (B, C, H, W), any range (the model passes [-1, 1]).
        kernel: (k, k) low-pass kernel, k odd.
        repeats: number of blurs.

    Returns:
        (B, C, H, W) non-negative activity.
    """
    k = kernel.to(x).expand(x.shape[1], 1, *kernel.shape)
    blurred = x
    for _ in range(repeats):
        blurred = F.conv2d(blurred, k, padding=kernel.shape[-1] // 2, groups=x.shape[1])
    return (x - blurred).abs()


def decision_maps(a: Tensor, b: Tensor, kernel: Tensor, repeats: int) -> tuple[Tensor, Tensor]:
    """Binary per-pixel focus maps (S_A, S_B) of §4.3, both sources in one grouped conv.

    S_B = sign(W_B - min(W_B, W_A)), i.e. 1 where W_B > W_A; S_A = 1 - S_B (ties go to A).

    Args:
        a, b: (B, 1, H, W) near / far sources, same range.

    Returns:
        Two (B, 1, H, W) float maps in {0, 1}, S_A + S_B = 1.
    """
    w = focus_activity(torch.cat([a, b], dim=1), kernel, repeats)
    s_b = (w[:, 1:2] > w[:, 0:1]).to(a.dtype)
    return 1.0 - s_b, s_b


# -- networks ----------------------------------------------------------------------------------
def _init(module: nn.Conv2d | nn.Linear, std: float) -> None:
    """TF truncated_normal_initializer(stddev=std) (cut at 2 std) and zero bias."""
    nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(module.bias)


class TwoPathGenerator(nn.Module):
    """The two-path generator of MFF-GAN (§4.1) and PMGI (§5.1).

    Per path: c1 = conv5x5(x), c2 = conv3x3(c1), c23 = conv1x1(cat(c2_a, c2_b)),
    c3 = conv3x3(cat(c1, c2, c23)), c34 = conv1x1(cat(c3_a, c3_b)),
    c4 = conv3x3(cat(c1, c2, c3, c34)); out = tanh(conv1x1(cat(c1_a, c1_b, ..., c4_a, c4_b))).
    Every conv is 'SAME', stride 1, followed by [BN +] LeakyReLU(0.2) except the last.

    Args:
        in_channels: channels of each path's input (1 for MFF-GAN, 3 for PMGI's stacks).
        channels: feature maps per conv (16).
        init_std: truncated-normal weight std (1e-3).
        batch_norm: BN after every conv but the last (PMGI) or none (MFF-GAN).
        bn_momentum: PyTorch BN momentum (TF decay 0.9 -> 0.1, §0.7); eps 1.001e-5, what the
            authors' ``batch_norm(epsilon=1e-5)`` ran with (:data:`TF1_BN_EPS`).
    """

    def __init__(self, in_channels: int = 1, channels: int = 16, init_std: float = 1e-3,
                 batch_norm: bool = False, bn_momentum: float = 0.1) -> None:
        super().__init__()
        c = channels

        def block(cin: int, k: int) -> nn.Sequential:
            conv = nn.Conv2d(cin, c, k, padding=k // 2)
            _init(conv, init_std)
            norm = [nn.BatchNorm2d(c, eps=TF1_BN_EPS, momentum=bn_momentum)] if batch_norm else []
            return nn.Sequential(conv, *norm, nn.LeakyReLU(0.2))

        def pair(cin: int, k: int) -> nn.ModuleList:
            return nn.ModuleList([block(cin, k), block(cin, k)])

        self.conv1, self.conv2 = pair(in_channels, 5), pair(c, 3)
        self.exchange2, self.conv3 = pair(2 * c, 1), pair(3 * c, 3)
        self.exchange3, self.conv4 = pair(2 * c, 1), pair(4 * c, 3)
        self.out = nn.Conv2d(8 * c, 1, 1)
        _init(self.out, init_std)

    def forward(self, x_a: Tensor, x_b: Tensor) -> Tensor:
        """(B, in_channels, H, W) x 2 in [-1, 1] -> (B, 1, H, W) in (-1, 1)."""
        c1 = [self.conv1[i](x) for i, x in enumerate((x_a, x_b))]
        c2 = [self.conv2[i](c1[i]) for i in range(2)]
        mid = torch.cat(c2, dim=1)
        c23 = [self.exchange2[i](mid) for i in range(2)]
        c3 = [self.conv3[i](torch.cat([c1[i], c2[i], c23[i]], dim=1)) for i in range(2)]
        mid = torch.cat(c3, dim=1)
        c34 = [self.exchange3[i](mid) for i in range(2)]
        c4 = [self.conv4[i](torch.cat([c1[i], c2[i], c3[i], c34[i]], dim=1)) for i in range(2)]
        feats = [f[i] for f in (c1, c2, c3, c4) for i in range(2)]
        return torch.tanh(self.out(torch.cat(feats, dim=1)))


class GradientDiscriminator(nn.Module):
    """FusionGAN's D without SN (§4.2): 4 valid 3x3 stride-2 convs, BN on the last 3, linear.

    Args:
        patch: input side; fixes the linear layer's size (60 -> 2*2*256 = 1,024 inputs).
        channels: first conv's channels, doubled at each later conv (32).
        init_std: truncated-normal weight std (1e-3).
        norm: the layers after convs 2-4: ``batch`` (the paper), ``layer`` or ``none``.
    """

    def __init__(self, patch: int = 60, channels: int = 32, init_std: float = 1e-3,
                 norm: DNorm = "batch") -> None:
        super().__init__()
        widths = [1, channels, 2 * channels, 4 * channels, 8 * channels]
        layers: list[nn.Module] = []
        side = patch
        for i in range(4):
            conv = nn.Conv2d(widths[i], widths[i + 1], 3, stride=2)
            _init(conv, init_std)
            layers.append(conv)
            if i > 0:
                layers.append(norm_layer(norm, widths[i + 1], eps=TF1_BN_EPS, momentum=0.1))
            layers.append(nn.LeakyReLU(0.2))
            side = (side - 3) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(widths[-1] * side * side, 1)
        _init(self.linear, init_std)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, patch, patch) gradient map -> (B, 1) raw score."""
        return self.linear(self.features(x).flatten(1))


# -- the model ---------------------------------------------------------------------------------
class MFFGAN(FusionModel):
    """MFF-GAN (models.md §4): A = near focus, B = far focus, networks in [-1, 1]."""

    name: ClassVar[str] = "mffgan"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "pm1"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.generator = TwoPathGenerator(1, config.g_channels, config.init_std)
        self.discriminator = GradientDiscriminator(config.patch, config.d_channels,
                                                   config.init_std, config.d_norm)
        self.blur_kernel = gaussian_kernel(config.blur_size, config.blur_sigma,
                                           config.blur_decimals)
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for G and D with TF's defaults (betas 0.9/0.999, eps 1e-8)."""
        return {
            "g": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr_g),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=self.config.lr_d),
        }

    def patch_spec(self) -> PatchSpec:
        """Input = label window, ``patch`` x ``patch`` every ``stride`` (§4.4)."""
        return PatchSpec(self.config.patch, self.config.patch, self.config.stride, "inclusive")

    def decision_maps(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(S_A, S_B) for (B, 1, H, W) sources in [-1, 1]; see :func:`decision_maps`."""
        return decision_maps(a, b, self.blur_kernel, self.config.blur_repeats)

    def content_terms(self, fused: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Decision-weighted (L_int, L_grad) of §4.3; all (B, 1, H, W) in [-1, 1]."""
        with torch.no_grad():
            s_a, s_b = self.decision_maps(a, b)
            lap_a, lap_b = laplacian4(a), laplacian4(b)
        lap_f = laplacian4(fused)
        loss_int = (s_a * (fused - a) ** 2).mean() + (s_b * (fused - b) ** 2).mean()
        loss_grad = (s_a * (lap_f - lap_a) ** 2).mean() + (s_b * (lap_f - lap_b) ** 2).mean()
        return loss_int, loss_grad

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``d_steps`` D updates then one G update on one batch (§4.3, §4.4).

        Args:
            batch: ``a`` (near), ``b`` (far): (B, 1, patch, patch) in [-1, 1].

        Returns:
            Detached scalars ``loss_g``, ``loss_d``, ``loss_adv``, ``loss_content``,
            ``loss_int``, ``loss_grad``.
        """
        cfg = self.config
        a, b = batch["a"], batch["b"]
        with torch.no_grad():
            real = torch.maximum(laplacian4(a).abs(), laplacian4(b).abs())
        with self.autocast():
            fused = self.generator(a, b)
        fused = fused.float()
        fake = laplacian4(fused).abs()
        fake_d = fake.detach()
        loss_d = self.discriminator_steps(
            lambda: d_loss(self.discriminator, real, fake_d, cfg.adversarial, cfg.lambda_gp),
            cfg.d_steps)

        set_requires_grad(self.discriminator, False)
        with self.autocast():
            loss_adv = g_adv_loss(self.discriminator, fake, cfg.adversarial).float()
        set_requires_grad(self.discriminator, True)
        loss_int, loss_grad = self.content_terms(fused, a, b)
        return self.adversarial_content_step(loss_adv, loss_int, loss_grad, loss_d)

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion, no padding (§4.5: 'SAME' convs keep any H, W).

        Args:
            a, b: (B, 1, H, W) near / far sources in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1].
        """
        with self.autocast():
            out = self.generator(self.to_input_scale(a), self.to_input_scale(b))
        fused = self.from_input_scale(out.float())
        return minmax_stretch(fused) if self.config.output_stretch else fused
