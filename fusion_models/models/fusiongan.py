"""FusionGAN: infrared/visible fusion with one spectral-normalised LSGAN discriminator.

Ma, Yu, Liang, Li, Jiang, "FusionGAN: A generative adversarial network for infrared and visible
image fusion", Information Fusion 48, 2019. Authors' TF1 code: jiayi-ma/FusionGAN (model.py,
main.py, utils.py, test_one_image.py). Spec: models.md §2.

A = infrared (IR), B = visible (VI); networks work in [-1, 1] (§0.1) and G sees [IR, VI] (§0.13).

- Generator (§2.1): five 'VALID' convs 2-256-128-64-32-1 (5x5, 5x5, 3x3, 3x3, 1x1), BN
  (decay 0.9 -> momentum 0.1, eps 1e-5, §0.7) and LeakyReLU 0.2 on the first four, tanh out;
  every kernel spectral-normalised; a 132 patch gives a 120 output (12-px shrink).
- Discriminator (§2.2): 3x3 stride-2 'VALID' convs 32-64-128-256 (BN on the last three),
  LeakyReLU 0.2, flatten, linear to one raw score; every weight spectral-normalised. Real = the
  VI label crop, fake = F. As in TF (``update_collection='NO_OPS'`` on the fake pass), the SN
  power iteration of D runs on the real pass only.
- Losses (§2.3): D = mean((D(VI) - U[0.7,1.2])^2) + mean((D(F) - U[0,0.3])^2);
  G = w_adv * mean((D(F) - U[0.7,1.2])^2) + w_content * [mean((F - IR)^2)
  + w_grad * mean((lap(F) - lap(VI))^2)], lap = 4-neighbour Laplacian, zero 'SAME' padding,
  IR and VI being the 120x120 LABEL crops; code values w_content = 100, w_grad = 5 (§2.3: the
  paper's xi may be 8; 5 is the code's). Soft labels are drawn per sample per step (§0.9).
- Training (§2.4): ``d_steps`` = 2 D updates then one G update on the same batch; Adam 1e-4
  (TF defaults); batch 32; 10 epochs; patches 132 / label 120 / stride 14.
- Inference (§2.5): edge-replicate pad of 6 px so the valid convs return the input size.

Deliberate deviations from the authors' code:
- Spectral norm stays active at test time. The TF test graph loads the raw kernels without the
  SN rescaling (a bug, §2.5): in eval mode the parametrisation uses its stored u, v.
- BN at inference uses the running statistics (eval mode; deterministic and independent of
  what else is in the batch). The TF graph always normalised with the batch's own statistics,
  i.e. with the single test image's (§0.6); ``bn_at_test="batch"`` restores that: each image
  is normalised with its OWN statistics whatever the batch it comes in (never statistics
  across images, so validation, ``fuse`` and ``eval`` agree). The TF training graph did update
  its moving averages (``updates_collections=None``), so the running statistics are trained.
- With ``adversarial="wgan_gp"`` the D's three BN layers become ``nn.GroupNorm(1, C)`` (layer
  norm, per sample; ``d_norm``, auto): a gradient penalty through batch statistics is
  ill-defined (Gulrajani et al. 2017). ``lsgan``/``bce`` keep the paper's BN D.
- The D's linear size is derived from ``patch`` (TF hard-codes batch 32 and 6*6*256).
  Flatten order is NCHW (TF: NHWC), which only matters for loading TF weights.
- G runs once for the ``d_steps`` D updates (its detached output is reused; the TF loop re-ran
  the unchanged G for each D step, which only advanced G's SN vectors and BN averages).
- PyTorch's SN initialises u with 15 power iterations at build time (TF: one random u).
- ``adversarial`` also offers ``bce`` and ``wgan_gp`` (default ``lsgan``, the paper's); with
  those, every pass of the D update (real, fake, penalty) advances D's SN vectors.
- ``fuse`` returns [0, 1] clamped, with no per-image min-max stretch (§0.5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from fusion_models.data.patches import PatchSpec
from fusion_models.models import losses
from fusion_models.models.base import (
    AdversarialConfig,
    BNStats,
    DNorm,
    FusionConfig,
    FusionModel,
    norm_layer,
    set_requires_grad,
)
from fusion_models.models.losses import d_loss, g_adv_loss, laplacian4

logger = logging.getLogger(__name__)

SHRINK = 12  # the valid 5x5, 5x5, 3x3, 3x3 convs take 4 + 4 + 2 + 2 px off each side pair
PAD = SHRINK // 2  # test-time edge-replicate pad (§2.5)
_REAL, _FAKE = (0.7, 1.2), (0.0, 0.3)  # LSGAN soft-label ranges (§0.9)


class Config(AdversarialConfig):
    """FusionGAN hyperparameters; defaults are the authors' code values (models.md §2).

    Attributes:
        adversarial: GAN objective; ``lsgan`` with soft labels is the paper's (§0.9).
        d_norm: D's normalisation; None = auto: the paper's ``batch``, ``layer`` for
            ``wgan_gp`` (see :class:`~fusion_models.models.base.AdversarialConfig`).
        lambda_gp: gradient-penalty weight, used only with ``wgan_gp``.
        w_adv: weight of the generator's adversarial term (code: 1).
        w_content: lambda, weight of the content term L_int + w_grad * L_grad (code: 100).
        w_grad: xi, weight of the Laplacian term inside the content term (code: 5; the paper
            may say 8, §2.3).
        lr_g: generator Adam learning rate (1e-4).
        lr_d: discriminator Adam learning rate (1e-4).
        d_steps: discriminator updates per generator update, same batch (2).
        bn_at_test: ``running``: BN normalises with its running statistics at inference
            (eval mode, our default); ``batch``: each image with its own statistics, as the
            TF test graph did with its one image (§0.6); independent of the batching.
        epochs: training epochs (10; the released test script uses the epoch-3 checkpoint).
        batch_size: patches per batch (32).
        patch: training window side (132); the label is its centred (patch - 12) crop. At
            least 43 so the D's four valid stride-2 convs leave a map.
        stride: step between training windows (14).
    """

    adversarial: Literal["lsgan", "wgan_gp", "bce"] = "lsgan"
    lambda_gp: float = Field(10.0, ge=0)
    w_adv: float = Field(1.0, ge=0)
    w_content: float = Field(100.0, ge=0)
    w_grad: float = Field(5.0, ge=0)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    d_steps: int = Field(2, ge=1)
    bn_at_test: Literal["running", "batch"] = "running"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    patch: int = Field(132, ge=43)
    stride: int = Field(14, ge=1)


# -- helpers ------------------------------------------------------------------------------------
@contextmanager
def sn_frozen(net: nn.Module) -> Iterator[None]:
    """No spectral-norm power iteration inside (TF ``update_collection='NO_OPS'``, §2.2)."""
    plists = [m.parametrizations for m in net.modules() if parametrize.is_parametrized(m)]
    modes = [p.training for p in plists]
    for p in plists:
        p.eval()
    try:
        yield
    finally:
        for p, mode in zip(plists, modes, strict=True):
            p.train(mode)


def _sn(layer: nn.Conv2d | nn.Linear, std: float = 1e-3) -> nn.Module:
    """Truncated-normal (cut at 2 std) weights, zero bias, then spectral norm (1 iteration)."""
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


# -- networks ----------------------------------------------------------------------------------
class Generator(nn.Module):
    """G of §2.1: (B, 2, H, W) [IR, VI] in [-1, 1] -> (B, 1, H - 12, W - 12) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, k in ((2, 256, 5), (256, 128, 5), (128, 64, 3), (64, 32, 3)):
            layers += [_sn(nn.Conv2d(cin, cout, k)),
                       nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1), nn.LeakyReLU(0.2)]
        layers += [_sn(nn.Conv2d(32, 1, 1)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """D of §2.2: (B, 1, size, size) in [-1, 1] -> (B, 1) raw scores (120 -> 59-29-14-6).

    ``norm``: the layers after convs 2-4: ``batch`` (the paper), ``layer`` or ``none``.
    """

    def __init__(self, size: int = 120, norm: DNorm = "batch") -> None:
        super().__init__()
        chans = (1, 32, 64, 128, 256)
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(_sn(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2)))
            if i:
                layers.append(norm_layer(norm, chans[i + 1], eps=1e-5, momentum=0.1))
            layers.append(nn.LeakyReLU(0.2))
            size = (size - 3) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.fc = _sn(nn.Linear(chans[-1] * size * size, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


# -- the model ---------------------------------------------------------------------------------
class FusionGAN(FusionModel):
    """FusionGAN (models.md §2): A = infrared, B = visible, networks in [-1, 1]."""

    name: ClassVar[str] = "fusiongan"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "pm1"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.generator = Generator()
        self.discriminator = Discriminator(config.patch - SHRINK, config.d_norm)
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for G and D with TF's defaults (betas 0.9/0.999, eps 1e-8), §2.4."""
        return {
            "g": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr_g),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=self.config.lr_d),
        }

    def patch_spec(self) -> PatchSpec:
        """``patch`` windows every ``stride``, label = centred (patch - 12) crop (§2.4)."""
        c = self.config
        return PatchSpec(c.patch, c.patch - SHRINK, c.stride, "inclusive")

    def _d_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """D loss on the VI label (real) and the detached F (fake), §2.3."""
        cfg = self.config
        if cfg.adversarial != "lsgan":
            return d_loss(self.discriminator, real, fake, cfg.adversarial, cfg.lambda_gp)
        out_real = self.discriminator(real).float()
        with sn_frozen(self.discriminator):  # u advances on the real pass only
            out_fake = self.discriminator(fake).float()
        n = real.shape[0]
        target_real = losses.soft_labels(n, *_REAL, out_real).expand_as(out_real)
        target_fake = losses.soft_labels(n, *_FAKE, out_fake).expand_as(out_fake)
        return F.mse_loss(out_real, target_real) + F.mse_loss(out_fake, target_fake)

    def content_terms(self, fused: Tensor, ir: Tensor, vi: Tensor) -> tuple[Tensor, Tensor]:
        """(L_int, L_grad) = (mean((F - IR)^2), mean((lap F - lap VI)^2)); (B, 1, 120, 120)."""
        loss_int = F.mse_loss(fused, ir)
        loss_grad = F.mse_loss(laplacian4(fused), laplacian4(vi))
        return loss_int, loss_grad

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``d_steps`` D updates then one G update on one batch (§2.3, §2.4).

        Args:
            batch: ``a`` (IR), ``b`` (VI): (B, 1, 132, 132) in [-1, 1]; ``a_label``,
                ``b_label``: their centred (B, 1, 120, 120) crops.

        Returns:
            Detached scalars ``loss_g``, ``loss_d`` (mean over the D updates), ``loss_adv``,
            ``loss_content``, ``loss_int``, ``loss_grad``.
        """
        cfg = self.config
        x = torch.cat([batch["a"], batch["b"]], dim=1)  # [IR, VI], §0.13
        ir, vi = batch["a_label"], batch["b_label"]
        with torch.no_grad(), self.autocast():
            fake = self.generator(x).float()
        loss_d = self.discriminator_steps(lambda: self._d_loss(vi, fake), cfg.d_steps)

        set_requires_grad(self.discriminator, False)
        with self.autocast():
            fused = self.generator(x)
            with sn_frozen(self.discriminator):
                loss_adv = g_adv_loss(self.discriminator, fused, cfg.adversarial).float()
        set_requires_grad(self.discriminator, True)
        loss_int, loss_grad = self.content_terms(fused.float(), ir, vi)
        return self.adversarial_content_step(loss_adv, loss_int, loss_grad, loss_d)

    def inference_bn_stats(self) -> BNStats:
        """``image`` for ``bn_at_test="batch"`` (per-image statistics, §0.6), else running."""
        return "image" if self.config.bn_at_test == "batch" else "running"

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion: edge-replicate pad 6, valid convs give back H x W (§2.5).

        Args:
            a, b: (B, 1, H, W) infrared / visible sources in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1].
        """
        x = self.to_input_scale(torch.cat([a, b], dim=1))
        x = F.pad(x, (PAD, PAD, PAD, PAD), mode="replicate")
        with self.autocast():
            out = self.generator(x)
        return self.from_input_scale(out.float())
