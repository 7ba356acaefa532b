"""AttentionFGAN: infrared/visible fusion with multi-scale attention in G and in two Ds.

Li, Huo, Li, Wang, Feng, "AttentionFGAN: Infrared and Visible Image Fusion Using
Attention-Based Generative Adversarial Networks", IEEE Transactions on Multimedia 23,
pp. 1383-1396, 2021 (early access 2020, doi 10.1109/TMM.2020.2997127). No public code exists
(models.md §9); only the abstract could be read. What it states, and we implement:

- "we integrate multi-scale attention mechanism into both generator and discriminator";
- "The generator of AttentionFGAN consists of two multi-scale attention networks and an image
  fusion network. Two multi-scale attention networks capture the attention maps of infrared
  and visible images respectively, so that the fusion network can reconstruct the fused image
  by paying more attention to the typical regions of source images";
- the attention mechanism should "constrain the discriminators focus more on the attention
  regions rather than the whole input image";
- "two discriminators are adopted to force the fused result keep more intensity and texture
  information from infrared and visible image respectively";
- "to keep more information of attention region from source images, an attention loss
  function is designed".

A = infrared (IR), B = visible (VI); networks work in [-1, 1] (FusionGAN, models.md §0.1).
Nets: :mod:`fusion_models.models._attentionfgan_nets`.

Open choices (the paper's text was not available beyond the abstract), each taken from the
closest code of the field, FusionGAN (models.md §2) and DDcGAN (§3):
- Attention module (``MultiScaleAttention``): ``n_scales`` = 4 scales (1, 1/2, 1/4, 1/8) by
  average pooling; per scale a 3x3 conv + LeakyReLU 0.2 + 1x1 conv to one channel + sigmoid
  (maps in [0, 1], not a softmax: a per-pixel weight does not shrink with the image size),
  bilinear up-sampling back to full size. Our choice; no field code has such a module.
- Generator attention networks: 3x3 convs 1-16-32 (LeakyReLU 0.2) then the module, one
  network per source (separate weights), zero 'SAME' padding, no normalisation.
- How attention enters the fusion network: the 2 x ``n_scales`` maps are concatenated with
  the two source images as extra input channels ([IR, VI, A_ir, A_vi], IR first as §0.13).
- Fusion network: FusionGAN's generator (§2.1: 'VALID' convs 256-128-64-32-1, BN + LeakyReLU
  0.2, tanh), without spectral norm (the abstract names none); PyTorch default init (the
  TF code's std 1e-3 relied on spectral norm to rescale the kernels).
- Discriminators: one for IR (real = IR) and one for VI (real = VI), fake = F for both
  (DDcGAN's same-resolution pairing, §3.2). Each = a 3x3 conv 1->16 + LeakyReLU and its own
  attention module; the mean of its maps masks the input (D sees x * A, "focus on the
  attention regions"), then FusionGAN's D trunk (§2.2: stride-2 'VALID' convs 32-64-128-256,
  BN on the last three, linear score). No spectral norm.
- Attention loss: the Ds' attention maps of F should match those of the source each D
  judges: L_att = mean((A_Dir(F) - A_Dir(IR))^2) + mean((A_Dvi(F) - A_Dvi(VI))^2), over all
  scales and pixels; it trains G only (Ds frozen in the G step). Weight ``w_att`` = 100,
  the weight FusionGAN gives its other pixel-level terms (lambda): the map MSE is ~1e-3,
  so a weight of 1 would switch the term off next to 100 * L_content.
- Content loss (FusionGAN §2.3, "intensity ... from infrared", "texture ... from visible"):
  L_int = mean((F - IR)^2), L_grad = mean((lap F - lap VI)^2), 4-neighbour Laplacian with zero
  'SAME' padding; L_content = L_int + w_grad * L_grad with FusionGAN's code values
  ``w_content`` = 100 (lambda) and ``w_grad`` = 5 (xi).
- L_G = w_adv * (adv_ir + adv_vi) + w_content * L_content + w_att * L_att, ``w_adv`` = 1.
- Adversarial objective: ``lsgan`` with the FusionGAN family's soft labels (§0.9) for both
  Ds (default); ``wgan_gp`` (critics with layer norm, ``d_norm`` auto) and ``bce`` offered.
- Training (FusionGAN §2.4): Adam 1e-4 for G and each D (TF defaults), ``d_steps`` = 2
  updates of each D (D_ir then D_vi, alternating) per G update on the same batch, batch 32,
  10 epochs, patch 132 with label = centred 120 crop, stride 14. G runs once for the D
  updates (its detached output is reused).
- Inference: whole image, edge-replicate pad of 6 px (FusionGAN §2.5) so the valid convs
  give back H x W; the attention networks see the padded image, as in training where they
  see the whole 132 patch. BN uses running statistics (eval mode); no min-max stretch (§0.5).
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fusion_models.data.patches import PatchSpec
from fusion_models.models._attentionfgan_nets import SHRINK, Discriminator, Generator
from fusion_models.models.base import (
    AdversarialConfig,
    FusionConfig,
    FusionModel,
    set_requires_grad,
)
from fusion_models.models.losses import d_loss, g_adv_loss, laplacian4

logger = logging.getLogger(__name__)

PAD = SHRINK // 2  # test-time edge-replicate pad (FusionGAN §2.5)


class Config(AdversarialConfig):
    """AttentionFGAN hyperparameters. The paper's values could not be read: every default is
    FusionGAN's code value or our choice (see the module docstring).

    Attributes:
        adversarial: GAN objective of both Ds; ``lsgan`` with soft labels (FusionGAN family).
        d_norm: the Ds' normalisation; None = auto: ``batch`` (BN, 3 per D), ``layer`` for
            ``wgan_gp`` (see :class:`~fusion_models.models.base.AdversarialConfig`).
        lambda_gp: gradient-penalty weight, used only with ``wgan_gp``.
        n_scales: scales of every attention module: 1, 1/2, ..., 1/2^(n-1) (4).
        w_adv: weight of each D's adversarial term in L_G (1).
        w_content: lambda, weight of L_int + w_grad * L_grad (100, FusionGAN's code).
        w_grad: xi, weight of the Laplacian term inside the content term (5, FusionGAN's code).
        w_att: weight of the attention loss L_att (100, as ``w_content``).
        lr_g: generator Adam learning rate (1e-4).
        lr_d: Adam learning rate of each discriminator (1e-4).
        d_steps: updates of each D per G update, same batch (2).
        epochs: training epochs (10).
        batch_size: patches per batch (32).
        patch: training window side (132); the label is its centred (patch - 12) crop. At
            least 43 so the Ds' four valid stride-2 convs leave a map.
        stride: step between training windows (14).
    """

    adversarial: Literal["lsgan", "wgan_gp", "bce"] = "lsgan"
    lambda_gp: float = Field(10.0, ge=0)
    n_scales: int = Field(4, ge=1, le=6)
    w_adv: float = Field(1.0, ge=0)
    w_content: float = Field(100.0, ge=0)
    w_grad: float = Field(5.0, ge=0)
    w_att: float = Field(100.0, ge=0)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    d_steps: int = Field(2, ge=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    patch: int = Field(132, ge=43)
    stride: int = Field(14, ge=1)


class AttentionFGAN(FusionModel):
    """AttentionFGAN: A = infrared, B = visible, networks in [-1, 1]."""

    name: ClassVar[str] = "attentionfgan"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "pm1"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        label = config.patch - SHRINK
        self.generator = Generator(config.n_scales)
        self.d_ir = Discriminator(label, config.n_scales, config.d_norm)
        self.d_vi = Discriminator(label, config.n_scales, config.d_norm)
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam (betas 0.9/0.999, eps 1e-8) for G, D_ir and D_vi."""
        c = self.config
        return {
            "g": torch.optim.Adam(self.generator.parameters(), lr=c.lr_g),
            "d_ir": torch.optim.Adam(self.d_ir.parameters(), lr=c.lr_d),
            "d_vi": torch.optim.Adam(self.d_vi.parameters(), lr=c.lr_d),
        }

    def patch_spec(self) -> PatchSpec:
        """``patch`` windows every ``stride``, label = centred (patch - 12) crop."""
        c = self.config
        return PatchSpec(c.patch, c.patch - SHRINK, c.stride, "inclusive")

    # -- losses -----------------------------------------------------------------------------
    @staticmethod
    def content_terms(fused: Tensor, ir: Tensor, vi: Tensor) -> tuple[Tensor, Tensor]:
        """(L_int, L_grad) = (mean((F - IR)^2), mean((lap F - lap VI)^2)).

        Args:
            fused, ir, vi: (B, 1, h, w) in [-1, 1] (F and the label crops).
        """
        return F.mse_loss(fused, ir), F.mse_loss(laplacian4(fused), laplacian4(vi))

    def attention_loss(self, fused: Tensor, ir: Tensor, vi: Tensor) -> Tensor:
        """L_att = mean((A_Dir(F) - A_Dir(IR))^2) + mean((A_Dvi(F) - A_Dvi(VI))^2).

        Args:
            fused, ir, vi: (B, 1, h, w) in [-1, 1]; the maps are (B, n_scales, h, w) in [0, 1].

        Returns:
            Scalar float32 loss (gradients reach ``fused``; the source maps are constants).
        """
        with torch.no_grad():
            target_ir, target_vi = self.d_ir.attention(ir), self.d_vi.attention(vi)
        return (F.mse_loss(self.d_ir.attention(fused).float(), target_ir.float())
                + F.mse_loss(self.d_vi.attention(fused).float(), target_vi.float()))

    def generator_terms(self, fused: Tensor, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        """Every term of L_G for one fused (B, 1, h, w) batch (float32, graph kept)."""
        c = self.config
        with self.autocast():
            t = {"loss_adv_ir": g_adv_loss(self.d_ir, fused, c.adversarial),
                 "loss_adv_vi": g_adv_loss(self.d_vi, fused, c.adversarial),
                 "loss_att": self.attention_loss(fused, ir, vi)}
        t = {k: v.float() for k, v in t.items()}
        t["loss_int"], t["loss_grad"] = (x.float() for x in self.content_terms(fused, ir, vi))
        t["loss_adv"] = t["loss_adv_ir"] + t["loss_adv_vi"]
        t["loss_content"] = t["loss_int"] + c.w_grad * t["loss_grad"]
        t["loss_g"] = (c.w_adv * t["loss_adv"] + c.w_content * t["loss_content"]
                       + c.w_att * t["loss_att"])
        return t

    # -- training ---------------------------------------------------------------------------
    def _d_updates(self, fake: Tensor, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        """``d_steps`` updates of D_ir (IR vs F) and D_vi (VI vs F), alternating; returns each
        D's mean loss (detached)."""
        c = self.config
        sums = {"loss_d_ir": torch.zeros((), device=fake.device),
                "loss_d_vi": torch.zeros((), device=fake.device)}
        for _ in range(c.d_steps):
            for key, net, real in (("d_ir", self.d_ir, ir), ("d_vi", self.d_vi, vi)):
                with self.autocast():
                    loss = d_loss(net, real, fake, c.adversarial, c.lambda_gp).float()
                self.optimizer_step(key, loss)
                sums[f"loss_{key}"] += loss.detach()
        return {k: v / c.d_steps for k, v in sums.items()}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``d_steps`` updates of each D, then one G update, on one batch.

        Args:
            batch: ``a`` (IR), ``b`` (VI): (B, 1, patch, patch) in [-1, 1]; ``a_label``,
                ``b_label``: their centred (B, 1, patch - 12, patch - 12) crops.

        Returns:
            Detached scalars ``loss_g``, ``loss_d`` (= ``loss_d_ir`` + ``loss_d_vi``, each the
            mean over its updates), ``loss_adv`` (= ``loss_adv_ir`` + ``loss_adv_vi``),
            ``loss_content``, ``loss_int``, ``loss_grad``, ``loss_att``.
        """
        ir_in, vi_in = batch["a"], batch["b"]
        ir, vi = batch["a_label"], batch["b_label"]
        with torch.no_grad(), self.autocast():
            fake = self.generator(ir_in, vi_in).float()
        out = self._d_updates(fake, ir, vi)
        for net in (self.d_ir, self.d_vi):
            set_requires_grad(net, False)
        try:
            with self.autocast():
                fused = self.generator(ir_in, vi_in)
            terms = self.generator_terms(fused.float(), ir, vi)
            self.optimizer_step("g", terms["loss_g"])
        finally:
            for net in (self.d_ir, self.d_vi):
                set_requires_grad(net, True)
        out.update({k: v.detach() for k, v in terms.items()})
        out["loss_d"] = out["loss_d_ir"] + out["loss_d_vi"]
        return out

    # -- inference --------------------------------------------------------------------------
    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion: edge-replicate pad 6, the valid convs give back H x W.

        Args:
            a, b: (B, 1, H, W) infrared / visible sources in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1].
        """
        ir, vi = (F.pad(self.to_input_scale(x), (PAD, PAD, PAD, PAD), mode="replicate")
                  for x in (a, b))
        with self.autocast():
            out = self.generator(ir, vi)
        return self.from_input_scale(out.float())
