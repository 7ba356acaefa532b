"""TarDAL: target-aware dual adversarial learning for infrared/visible fusion (fusion part).

Liu, Fan, Huang, Wu, Liu, Zhong, Luo, "Target-aware Dual Adversarial Learning and a
Multi-scenario Multi-Modality Benchmark to Fuse Infrared and Visible for Object Detection",
CVPR 2022. Authors' code: JinyuanLiu-CV/TarDAL (module/fuse/{generator,discriminator}.py,
pipeline/fuse.py, functions/div_loss.py, scripts/train_f.py, config/official/train/
tardal-dt.yaml: the "direct training" DT recipe). Spec: models.md §7.

A = infrared (IR), B = visible (VI); everything in [0, 1] (the loader reads /255); G sees
[IR, VI] (§0.13). **Without the detector**: the TT/CT recipes back-propagate a YOLOv5 detection
loss into G; this is the DT recipe only (fusion losses), as in the authors' tardal-dt weights.

- Generator (§7.1, dim 32, depth 3): 3x3 convs, encoder 2->32 BN ReLU; dense block of 3
  layers (32->32, 64->32, 96->32, BN ReLU, each input the concatenation so far) -> 128 ch;
  head 128->128 ReLU, 128->64 BN ReLU, 64->32 BN ReLU, 32->1 tanh. Output clamped to [0, 1].
- Two discriminators, no normalisation: 3x3 stride-2 pad-1 convs 1->32->64->128, LeakyReLU
  0.2, flatten, linear to one score. Target D: IR * m (real) vs F * m (fake). Detail D: the
  Sobel magnitude of VI (real) vs of F (fake), times (1 - m) only with ``detail_mask``.
  Sobel as kornia ``spatial_gradient(normalized=True)``: the kernels divided by 8, replicate
  padding, magnitude sqrt(dx^2 + dy^2 + 1e-8).
- WGAN-div (functions/div_loss.py): L_D = -mean D(real) + mean D(fake)
  + k * E||grad D(x_hat) + 1e-6||^p, x_hat a per-sample random interpolate, k = 2, p = 6.
- G loss: w_src * (w_ir * src(F, IR) + w_vi * src(F, VI)) + w_adv * (w_target * -D_t(F * m)
  + w_detail * -D_d(grad F * (1 - m))), the adversarial weight 0 during the first
  ``d_warmup_epochs`` epochs (the Ds train from the start). src: ``ms_ssim_l1`` (DT config
  ``v1``: kornia's MS_SSIMLoss, i.e. MS-SSIM + Gaussian-weighted L1, alpha 0.025, x 200) or
  ``ssim_l1`` (``v0``: 0.01 * (1 - SSIM) / 2 + 0.99 * L1, SSIM window 11).
- Order per batch (train_f.py): one G step, then one step of D_t, then one of D_d; the fake
  images of the D steps come from G in eval mode (BN running statistics, no grad), as the
  authors' ``Fuse.eval``. AdamW lr 1e-3, betas (0.937, 0.999), weight decay 5e-4 on conv and
  linear weights only (BN weights and biases undecayed, get_param_groups.py); lr constant
  (the config's linear schedule runs from 1e-3 to 1e-3). Batch 32.

Choices where the authors' code cannot be followed here, and their deviations we do not copy:
- **Saliency mask.** The authors' m is U^2-Net-P's saliency of the IR image (released weights
  ``u2netp.pth``, not available offline), min-max normalised per image. We compute a classical
  saliency of the IR image instead (``saliency``): ``ft_bright`` (default) = the frequency-
  tuned saliency of Achanta et al. (CVPR 2009), |G_sigma * IR - mean(IR)|, kept one-sided
  (only brighter than the mean: thermal targets are hot), min-max normalised per image; ``ft``
  two-sided; ``none`` m = 1. It is computed per training patch (the authors: per whole image).
- **IQA weights.** The authors' w1, w2 are VGG16 "information" maps (weights ``iqa-vgg.pth``,
  not available), but their src losses are scalars (kornia's reduction "mean") before the
  multiplication, so each map enters only through its batch mean; we expose the two scalar
  weights ``w_ir``, ``w_vi`` (default 1, 1; sweepable).
- **One optimiser for all three networks** in the authors' loop: the G step's loss also
  reaches the Ds (the adversarial terms) and the shared AdamW steps them, pushing each D to
  score fakes higher. We keep three optimisers and freeze the Ds during the G step.
- **Training windows**: the authors resize whole images to 224 x 224; our patch store cuts
  ``patch`` windows every ``stride`` at native resolution (no rescaling of the pixel scale the
  metrics are measured at). Inference fuses at native size (the authors resize to the set's
  maximum size and back).
- Epochs: the authors train 1,000 epochs of 7 batches (RoadScene 221 pairs, batch 32) with a
  10-epoch D warm-up; an epoch of our windows holds more batches, see the YAML's values.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from fusion_models.data.patches import PatchSpec
from fusion_models.models.base import FusionConfig, FusionModel, eval_context, set_requires_grad
from fusion_models.models.losses import (
    gaussian_blur_separable,
    ms_ssim_l1_loss,
    sobel_magnitude,
    ssim,
    wgan_div_penalty,
)

Saliency = Literal["ft_bright", "ft", "none"]


class Config(FusionConfig):
    """TarDAL hyperparameters; defaults are the authors' DT config (models.md §7.2).

    Attributes:
        dim: base channels of G and both Ds (32).
        depth: dense layers of G (3).
        src_fn: source loss: ``ms_ssim_l1`` (DT ``v1``) or ``ssim_l1`` (``v0``).
        w_src: weight of the source loss (0.8).
        w_adv: weight of the adversarial loss after the warm-up (0.2).
        w_target: weight of the target D's term inside the adversarial loss (0.5).
        w_detail: weight of the detail D's term (0.5).
        w_ir, w_vi: weights of src(F, IR) and src(F, VI) (the IQA maps' role; 1, 1).
        detail_mask: the detail D sees gradients times (1 - m) (DT: false).
        saliency: how m is computed from the IR image (see the module docstring).
        saliency_sigma: Gaussian sigma (px) of the saliency's blur (3).
        div_k: WGAN-div weight k (2).
        div_p: WGAN-div power p (6).
        d_warmup_epochs: epochs with adversarial weight 0 in G's loss (10).
        lr: AdamW learning rate of all three networks (1e-3).
        beta1: AdamW beta1 (0.937).
        weight_decay: AdamW decay of conv/linear weights (5e-4).
        epochs: training epochs (1000 in the DT config, see the module docstring).
        batch_size: windows per batch (32).
        patch: training window side (224, the authors' image size); at least 8.
        stride: step between windows (112).
    """

    dim: int = Field(32, ge=1)
    depth: int = Field(3, ge=1)
    src_fn: Literal["ms_ssim_l1", "ssim_l1"] = "ms_ssim_l1"
    w_src: float = Field(0.8, ge=0)
    w_adv: float = Field(0.2, ge=0)
    w_target: float = Field(0.5, ge=0)
    w_detail: float = Field(0.5, ge=0)
    w_ir: float = Field(1.0, ge=0)
    w_vi: float = Field(1.0, ge=0)
    detail_mask: bool = False
    saliency: Saliency = "ft_bright"
    saliency_sigma: float = Field(3.0, gt=0)
    div_k: float = Field(2.0, ge=0)
    div_p: float = Field(6.0, gt=0)
    d_warmup_epochs: int = Field(10, ge=0)
    lr: float = Field(1e-3, gt=0)
    beta1: float = Field(0.937, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    patch: int = Field(224, ge=8)
    stride: int = Field(112, ge=1)


# -- networks ----------------------------------------------------------------------------------
def _conv(cin: int, cout: int, bn: bool, act: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1)]
    return nn.Sequential(*(layers + ([nn.BatchNorm2d(cout)] if bn else []) + [act]))


class Generator(nn.Module):
    """G of §7.1: IR, VI (B, 1, H, W) in [0, 1] -> (B, 1, H, W) tanh output (any H, W)."""

    def __init__(self, dim: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.encoder = _conv(2, dim, True, nn.ReLU())
        self.dense = nn.ModuleList(_conv(dim * (i + 1), dim, True, nn.ReLU())
                                   for i in range(depth))
        self.fuse = nn.Sequential(
            _conv(dim * (depth + 1), dim * 4, False, nn.ReLU()),
            _conv(dim * 4, dim * 2, True, nn.ReLU()),
            _conv(dim * 2, dim, True, nn.ReLU()),
            _conv(dim, 1, False, nn.Tanh()))

    def forward(self, ir: Tensor, vi: Tensor) -> Tensor:
        x = self.encoder(torch.cat([ir, vi], dim=1))
        for layer in self.dense:
            x = torch.cat([x, layer(x)], dim=1)
        return self.fuse(x)


class Discriminator(nn.Module):
    """A TarDAL D (§7.1): (B, 1, size, size) -> (B, 1) raw scores; no normalisation."""

    def __init__(self, dim: int = 32, size: int = 224) -> None:
        super().__init__()
        chans = (1, dim, dim * 2, dim * 4)
        self.conv = nn.Sequential(*(nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1),
                                                  nn.LeakyReLU(0.2)) for i in range(3)))
        for _ in range(3):
            size = (size - 1) // 2 + 1
        self.linear = nn.Linear(size * size * chans[-1], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.conv(x).flatten(1))


# -- pieces of the objective -------------------------------------------------------------------
def gradient(x: Tensor) -> Tensor:
    """kornia's normalised Sobel magnitude (kernels / 8, replicate pad, +1e-8 under the root)."""
    return sobel_magnitude(x / 8.0)


def ir_saliency(ir: Tensor, kind: Saliency, sigma: float) -> Tensor:
    """The target mask m in [0, 1] from (B, 1, H, W) IR in [0, 1] (module docstring): per image
    min-max normalised |G_sigma * IR - mean IR| (``ft``), its positive part (``ft_bright``),
    or ones (``none``). A flat image gives zeros (ones for ``none``)."""
    if kind == "none":
        return torch.ones_like(ir)
    blurred = gaussian_blur_separable(ir, sigma, max(1, int(round(3 * sigma))), "replicate")
    s = blurred - ir.mean(dim=(2, 3), keepdim=True)
    s = s.clamp_min(0) if kind == "ft_bright" else s.abs()
    lo, hi = s.amin(dim=(2, 3), keepdim=True), s.amax(dim=(2, 3), keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-12)


def _adamw(nets: list[nn.Module], cfg: Config) -> torch.optim.AdamW:
    """AdamW with decay on conv/linear weights only (get_param_groups.py)."""
    decay, plain = [], []
    for net in nets:
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                decay.append(m.weight)
                plain.append(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                plain += [m.weight, m.bias]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": plain, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, 0.999))


# -- the model ---------------------------------------------------------------------------------
class TarDAL(FusionModel):
    """TarDAL's fusion network (DT recipe, models.md §7): A = infrared, B = visible, [0, 1]."""

    name: ClassVar[str] = "tardal"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "unit"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.generator = Generator(config.dim, config.depth)
        self.d_target = Discriminator(config.dim, config.patch)
        self.d_detail = Discriminator(config.dim, config.patch)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One AdamW per network (see the module docstring: never a shared one)."""
        return {"g": _adamw([self.generator], self.config),
                "d_target": _adamw([self.d_target], self.config),
                "d_detail": _adamw([self.d_detail], self.config)}

    def patch_spec(self) -> PatchSpec:
        """``patch`` windows every ``stride``; the label is the whole window."""
        c = self.config
        return PatchSpec(c.patch, c.patch, c.stride, "inclusive")

    def warming_up(self) -> bool:
        """True during the first ``d_warmup_epochs`` epochs (1000 steps per epoch when the
        loop has not said how many batches an epoch holds)."""
        per_epoch = self.steps_per_epoch or 1000
        return int(self.step_count) < self.config.d_warmup_epochs * per_epoch

    def src_loss(self, fused: Tensor, src: Tensor) -> Tensor:
        """src(F, S) of the configured ``src_fn`` on (B, 1, h, w) in [0, 1]; scalar."""
        if self.config.src_fn == "ms_ssim_l1":
            return ms_ssim_l1_loss(fused, src)
        ssim_term = (1.0 - ssim(fused, src, 1.0)) / 2.0
        return 0.01 * ssim_term + 0.99 * (fused - src).abs().mean()

    def _detail_weight(self, mask: Tensor) -> Tensor | float:
        return 1.0 - mask if self.config.detail_mask else 1.0

    def adversarial_terms(self, fused: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(-mean D_t(F * m), -mean D_d(grad F * (1 - m))) for G."""
        with self.autocast():
            tar = -self.d_target(fused * mask).float().mean()
            det = -self.d_detail(gradient(fused) * self._detail_weight(mask)).float().mean()
        return tar, det

    def _critic_step(self, key: str, d: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
        """One WGAN-div step of ``d`` (real, fake detached); returns the detached loss."""
        cfg = self.config
        with self.autocast():
            loss = -d(real).float().mean() + d(fake).float().mean()
        loss = loss + cfg.div_k * wgan_div_penalty(d, real, fake, cfg.div_p)
        self.optimizer_step(key, loss)
        return loss.detach()

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One G step, one D_t step, one D_d step (train_f.py order).

        Args:
            batch: ``a`` (IR), ``b`` (VI): (B, 1, patch, patch) in [0, 1].

        Returns:
            Detached scalars ``loss_g``, ``loss_src``, ``loss_adv``, ``loss_target``,
            ``loss_detail``, ``loss_d`` (= ``loss_d_target`` + ``loss_d_detail``) and
            ``warmup`` (1 while the adversarial weight is 0).
        """
        cfg = self.config
        ir, vi = batch["a"], batch["b"]
        mask = ir_saliency(ir, cfg.saliency, cfg.saliency_sigma)
        warm = self.warming_up()
        set_requires_grad(self.d_target, False)
        set_requires_grad(self.d_detail, False)
        with self.autocast():
            fused = self.generator(ir, vi).float()
        loss_src = cfg.w_ir * self.src_loss(fused, ir) + cfg.w_vi * self.src_loss(fused, vi)
        with torch.set_grad_enabled(not warm):
            tar, det = self.adversarial_terms(fused, mask)
        loss_adv = cfg.w_target * tar + cfg.w_detail * det
        loss_g = cfg.w_src * loss_src + (0.0 if warm else cfg.w_adv) * loss_adv
        self.optimizer_step("g", loss_g)
        set_requires_grad(self.d_target, True)
        set_requires_grad(self.d_detail, True)
        with torch.no_grad(), eval_context(self.generator), self.autocast():
            fake = self.generator(ir, vi).float()
        loss_dt = self._critic_step("d_target", self.d_target, ir * mask, fake * mask)
        weight = self._detail_weight(mask)
        loss_dd = self._critic_step("d_detail", self.d_detail, gradient(vi) * weight,
                                    gradient(fake) * weight)
        self.step_count += 1
        terms = {"loss_g": loss_g, "loss_src": loss_src, "loss_adv": loss_adv,
                 "loss_target": tar, "loss_detail": det, "loss_d": loss_dt + loss_dd,
                 "loss_d_target": loss_dt, "loss_d_detail": loss_dd,
                 "warmup": torch.tensor(float(warm), device=ir.device)}
        return {k: v.detach() for k, v in terms.items()}

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion at native size (fully convolutional G, 'same' padding).

        Args:
            a, b: (B, 1, H, W) infrared / visible sources in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1] (G's tanh output clamped).
        """
        with self.autocast():
            out = self.generator(a, b)
        return self.from_input_scale(out.float())
