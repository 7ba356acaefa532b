"""UFGAN: a U-Net GAN for infrared-visible fusion with a VGG "transfer" (style) loss.

drowning-in-codes/UFGAN (GitHub, 2023; README: "GAN for image fusion inspired by FusionGAN and
U-Net"; no paper or venue, the repo's report PDF is not readable). Spec: ../shared/docs/models.md
§1, implemented "as intended" (§1.9). A = infrared (IR), B = visible (VI); networks work in
[-1, 1] (§1.5), G's input is the concatenation [IR, VI] (§0.13) and G ends in tanh.

- Generators (§1.2, ``generator``): ``unet`` (default; :class:`UNetGenerator`), ``fusionmodel``
  and ``dense`` (the repo's DDcGAN-like net), all in ``_ufgan_nets.py``. SN on the convs where
  the repo has it (``spectral_norm``), BN in eval mode at inference (running statistics:
  deterministic, as a PyTorch ``model.eval()`` gives; the repo is PyTorch too).
- D (§1.3): four 3x3 stride-2 (SN-)conv-BN-LeakyReLU(0.01), global max pooling, 1x1 head, raw
  score; real = the VI label crop, fake = F. LSGAN with soft labels by default (§0.9).
- L_G = w_adv * L_adv + w_content * (mean((F-IR)^2) + w_grad * mean((lap F - lap VI)^2))
  + w_ssim * ((1 - SSIM(F, IR)) + ssim_vi_weight * (1 - SSIM(F, VI)))
  + w_transfer * (w_transfer_content * L_c + w_transfer_style * L_s + w_transfer_tv * TV(F)),
  lap = 4-neighbour Laplacian, zero 'SAME' (§0.8a); SSIM with data_range 2 (Gaussian 11, 1.5).
  Transfer loss (§1.4): L_c = mean((phi_25(F) - phi_25(VI))^2) (conv4_4 pre-ReLU), L_s = sum over
  conv1_1..conv5_1 (0, 5, 10, 19, 28, pre-ReLU) of mean((Gram(phi(F)) - Gram(phi(IR)))^2),
  Gram = X X^T / (C H W) per sample, TV = 0.5 (mean|dy F| + mean|dx F|).
- D updates every call (``d_steps`` times on the batch), G every ``generator_interval``-th call
  (a step counter kept as a buffer, so it survives checkpoints); Adam 1e-4 for both.

Bugs of the authors' code fixed here (§1.4, §1.9):
- Content term: the repo divides the NON-squared L2 norm of the whole batch by the element count,
  ||F - IR||_2 / N = RMSE / sqrt(N) (about RMSE/860 at batch 32 x 152^2), which made it
  negligible; we use the intended per-pixel mean squared errors (FusionGAN form).
- Transfer loss: the repo detaches the FUSED features and lets the sources carry the graph, so only
  its TV term reached G; here the sources' features and Grams are the detached targets and the
  fused features carry the graph. The repo's Gram folds the batch into the spatial axis
  ((C, B H W)); ours is per sample.
- D step: F is detached. G step: G's gradients are zeroed before its loss (the repo's G update
  also carried the D-loss gradients of the last two batches), and D's before each D loss.
- IR and VI patches are paired (one loader, same window), not two independently shuffled loaders.
- The U-Net's dropouts are registered modules (the repo built them inside ``forward``, so they
  stayed on in ``eval()``), its pools and transposed convs have no padding, and its skips match
  exactly (``unet_padding="same"``) or are centre-cropped (``"valid"``) instead of zero-padding
  the upsampled maps (6 -> 14, 18 -> 34, ...).
- Inference feeds the [-1, 1] range the model was trained on (the repo fed [0, 1], §1.6).

Deliberate deviations (not bugs):
- Default ``unet_padding="same"``: output = input, so labels are the whole 160x160 patch (stride
  60, exclusive end as the repo). The repo's 160 -> 152 only arose from zero-padding the upsampled
  maps; a valid-conv U-Net with exact crops loses 184 px at depth 4 and needs a patch of 188 +
  16k (``"valid"`` offers it; ``patch_spec`` then derives the label size, e.g. 220 -> 36).
- VGG inputs get the ImageNet mean/std normalisation (the repo fed [-1, 1] grey unnormalised).
- ``w_transfer_style`` defaults to 1e4, the EFFECTIVE style weight: the repo (like the d2l.ai
  style-transfer chapter it copies) writes 1e3 but sums ``10 * styles_l + ...``, which repeats
  the per-layer list ten times. That is what both d2l's published results and the repo computed
  (in the repo without gradient); set 1e3 for the literal weight.
- FusionModel: the repo's third Dropout2d, on the 1-channel tanh OUTPUT, is left out (it zeroed
  whole fused images and scaled the rest by 1.25, past tanh's range).
- G steps on calls 0, 2, 4, ... (the repo: batches 1, 3, 5, ...), so one call is a full step.
  Between G steps the returned G terms are those of the last G step, so epoch means over calls
  equal means over G steps.
- G runs once per call; the G step reuses that forward (the repo re-ran the unchanged G).
- The repo's ``kaiming_normal_`` init never reached its spectral-normalised layers; we keep
  PyTorch's default init everywhere (what the repo effectively used).
- ``adversarial`` also offers ``bce`` and ``wgan_gp``; ``fuse`` returns [0, 1] clamped. With
  ``wgan_gp`` the D's four BN layers become ``nn.GroupNorm(1, C)`` (layer norm, per sample;
  ``d_norm``, auto): a gradient penalty through batch statistics is ill-defined (Gulrajani et
  al. 2017). ``lsgan``/``bce`` keep the repo's BN D.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from fusion_models.data.patches import PatchSpec
from fusion_models.models._ufgan_nets import (
    DenseGenerator,
    Discriminator,
    FusionModelGenerator,
    UNetGenerator,
    valid_unet_output,
)
from fusion_models.models.base import (
    AdversarialConfig,
    FusionConfig,
    FusionModel,
    set_requires_grad,
)
from fusion_models.models.losses import (
    Adversarial,
    d_loss,
    g_adv_loss,
    laplacian4,
    ssim,
    total_variation,
)
from fusion_models.models.vgg import CONTENT_LAYERS, STYLE_LAYERS, load_vgg19_features

logger = logging.getLogger(__name__)

FeatureExtractor = Callable[[Tensor, Sequence[int]], dict[int, Tensor]]
D_MIN_SIDE = 31  # four valid 3x3 stride-2 convs need at least 31 px


class Config(AdversarialConfig):
    """UFGAN hyper-parameters; defaults are the authors' code values (models.md §1.2-§1.5).

    Attributes:
        generator: ``unet`` (U_GAN, the repo default), ``fusionmodel`` or ``dense`` (§1.2).
        base_width: U-Net width of the first level (doubles per level; 64).
        depth: U-Net pooling levels (4).
        unet_padding: ``same`` (pad-1 convs, output = input) or ``valid`` (unpadded convs,
            centre-cropped skips; needs an admissible ``patch``, label derived).
        norm: generator normalisation: ``batch`` (the repo), ``instance`` or ``none``.
        d_norm: discriminator normalisation: ``batch`` (the repo), ``layer`` (GroupNorm(1, C))
            or ``none``; None = auto: ``layer`` for ``wgan_gp``, ``batch`` otherwise (see
            :class:`~fusion_models.models.base.AdversarialConfig`).
        spectral_norm: SN on the U-Net's/FusionModel's convs and D's convs (the repo: on).
        dropout: U-Net nn.Dropout and FusionModel nn.Dropout2d probability (0.2).
        adversarial: ``lsgan`` (soft labels, the repo), ``bce`` or ``wgan_gp``.
        lambda_gp: gradient-penalty weight for ``wgan_gp``.
        w_adv: weight of G's adversarial term (1).
        w_content: weight of the content term mean((F-IR)^2) + w_grad * grad term (100).
        w_grad: weight xi of the Laplacian term inside the content term (5).
        w_ssim: weight of the SSIM term (300).
        ssim_vi_weight: weight of (1 - SSIM(F, VI)) against (1 - SSIM(F, IR)) (5).
        transfer: use the VGG transfer loss (needs ImageNet VGG19 weights, see vgg_weights).
        w_transfer: weight of the transfer loss in L_G (100).
        w_transfer_content: VGG content (conv4_4 vs VI) weight inside it (1).
        w_transfer_style: VGG style (Grams vs IR) weight inside it (1e4 effective; repo 1e3 x 10).
        w_transfer_tv: total-variation weight inside it (10).
        vgg_weights: torchvision VGG19 state-dict path; None: the torch hub cache.
        lr_g: generator Adam learning rate (1e-4).
        lr_d: discriminator Adam learning rate (1e-4).
        d_steps: D updates per training_step call, on the same batch (1).
        generator_interval: G updates on every n-th call (2; the first call included).
        epochs: training epochs (30).
        batch_size: patches per batch (32).
        patch: training window side (160).
        stride: window stride (60; exclusive end as the repo).
    """

    generator: Literal["unet", "fusionmodel", "dense"] = "unet"
    base_width: int = Field(64, ge=1)
    depth: int = Field(4, ge=1, le=6)
    unet_padding: Literal["same", "valid"] = "same"
    norm: Literal["batch", "instance", "none"] = "batch"
    spectral_norm: bool = True
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    adversarial: Adversarial = "lsgan"
    lambda_gp: float = Field(10.0, ge=0.0)
    w_adv: float = Field(1.0, ge=0.0)
    w_content: float = Field(100.0, ge=0.0)
    w_grad: float = Field(5.0, ge=0.0)
    w_ssim: float = Field(300.0, ge=0.0)
    ssim_vi_weight: float = Field(5.0, ge=0.0)
    transfer: bool = True
    w_transfer: float = Field(100.0, ge=0.0)
    w_transfer_content: float = Field(1.0, ge=0.0)
    w_transfer_style: float = Field(1e4, ge=0.0)
    w_transfer_tv: float = Field(10.0, ge=0.0)
    vgg_weights: str | None = None
    lr_g: float = Field(1e-4, gt=0.0)
    lr_d: float = Field(1e-4, gt=0.0)
    d_steps: int = Field(1, ge=1)
    generator_interval: int = Field(2, ge=1)
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(32, gt=0)
    patch: int = Field(160, ge=32)
    stride: int = Field(60, gt=0)

    @model_validator(mode="after")
    def _valid_patch(self) -> Config:
        if self.generator != "unet" or self.unet_padding != "valid":
            return self
        out = valid_unet_output(self.patch, self.depth)
        if out is None or out < D_MIN_SIDE:
            ok = [n for n in range(32, 1025) if (valid_unet_output(n, self.depth) or 0)
                  >= D_MIN_SIDE][:4]
            raise ValueError(f"unet_padding='valid' with depth {self.depth} cannot train on "
                             f"patch {self.patch}; admissible patches include {ok}")
        return self


def gram_matrix(x: Tensor) -> Tensor:
    """Per-sample Gram matrix X X^T / (C H W), in float32 with autocast off.

    Args:
        x: (B, C, H, W) features.

    Returns:
        (B, C, C).
    """
    b, c, h, w = x.shape
    with torch.autocast(x.device.type, enabled=False):
        f = x.float().reshape(b, c, h * w)
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def transfer_loss(features: FeatureExtractor, fused: Tensor, content_src: Tensor,
                  style_src: Tensor, *, w_content: float = 1.0, w_style: float = 1e4,
                  w_tv: float = 10.0, content_layers: Sequence[int] = CONTENT_LAYERS,
                  style_layers: Sequence[int] = STYLE_LAYERS) -> dict[str, Tensor]:
    """UFGAN's transfer loss (models.md §1.4) with the detach on the sources' side.

    Args:
        features: ``features(x, layers) -> {index: activation}`` for grey x in [-1, 1]
            (:class:`fusion_models.models.vgg.VGG19Features`).
        fused: (B, 1, H, W) F in [-1, 1]; carries the graph.
        content_src: (B, 1, H, W) content image (UFGAN: VI); a detached target.
        style_src: (B, 1, H, W) style image (UFGAN: IR); a detached target.

    Returns:
        Scalars ``loss_tr_content``, ``loss_tr_style``, ``loss_tr_tv`` and the weighted sum
        ``loss_transfer``.
    """
    with torch.no_grad():
        target_c = features(content_src, content_layers)
        target_s = {i: gram_matrix(f) for i, f in features(style_src, style_layers).items()}
    feats = features(fused, sorted(set(content_layers) | set(style_layers)))
    content = torch.stack([F.mse_loss(feats[i].float(), target_c[i].float())
                           for i in content_layers]).sum()
    style = torch.stack([F.mse_loss(gram_matrix(feats[i]), target_s[i])
                         for i in style_layers]).sum()
    tv = total_variation(fused.float())
    total = w_content * content + w_style * style + w_tv * tv
    return {"loss_tr_content": content, "loss_tr_style": style, "loss_tr_tv": tv,
            "loss_transfer": total}


class UFGAN(FusionModel):
    """UFGAN (models.md §1) as intended: generator, D, optimisers, G/D schedule and fuse.

    Args:
        config: the :class:`Config`.
        feature_net: the transfer loss's feature extractor; None loads the ImageNet VGG19 from
            ``config.vgg_weights`` (or the torch hub cache) at the first G step that needs it.
            It is frozen and NOT part of the state dict (checkpoints stay G + D only).
    """

    name: ClassVar[str] = "ufgan"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale = "pm1"

    def __init__(self, config: Config, feature_net: nn.Module | None = None) -> None:
        super().__init__(config)
        if config.generator == "unet":
            self.generator: nn.Module = UNetGenerator(
                config.base_width, config.depth, config.unet_padding, config.norm,
                config.spectral_norm, config.dropout)
        elif config.generator == "fusionmodel":
            self.generator = FusionModelGenerator(config.norm, config.spectral_norm,
                                                  config.dropout)
        else:
            self.generator = DenseGenerator(config.norm)
        self.discriminator = Discriminator(config.d_norm, config.spectral_norm)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        # Held outside the module tree: not saved, not moved by .to() (done lazily).
        self._frozen: dict[str, nn.Module] = {} if feature_net is None else {"vgg": feature_net}
        self._last_g: dict[str, Tensor] = {}
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {"g": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g),
                "d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_d)}

    def patch_spec(self) -> PatchSpec:
        """Windows of ``patch`` (stride ``stride``, exclusive end, §1.5); label = G's output."""
        cfg = self.config
        return PatchSpec(cfg.patch, self.generator.output_size(cfg.patch), cfg.stride,
                         "exclusive")

    def feature_net(self) -> nn.Module:
        """The frozen transfer-loss feature extractor on this model's device (loaded once)."""
        net = self._frozen.get("vgg")
        if net is None:
            net = self._frozen["vgg"] = load_vgg19_features(self.config.vgg_weights)
        param = next(net.parameters(), None)
        if param is not None and param.device != self.device:
            net.to(self.device)
        return net

    def generator_losses(self, fused: Tensor, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        """Every L_G term (see the module docstring) for F, IR, VI (B, 1, h, w) in [-1, 1]."""
        cfg = self.config
        with self.autocast():
            adv = g_adv_loss(self.discriminator, fused, cfg.adversarial).float()
        f, ir, vi = fused.float(), ir.float(), vi.float()
        loss_int = F.mse_loss(f, ir)
        loss_grad = F.mse_loss(laplacian4(f), laplacian4(vi))
        content = loss_int + cfg.w_grad * loss_grad
        loss_ssim = (1.0 - ssim(f, ir, 2.0)) + cfg.ssim_vi_weight * (1.0 - ssim(f, vi, 2.0))
        terms = {"loss_adv": adv, "loss_int": loss_int, "loss_grad": loss_grad,
                 "loss_content": content, "loss_ssim": loss_ssim}
        total = cfg.w_adv * adv + cfg.w_content * content + cfg.w_ssim * loss_ssim
        if cfg.transfer:
            with self.autocast():
                terms.update(transfer_loss(
                    self.feature_net(), f, content_src=vi, style_src=ir,
                    w_content=cfg.w_transfer_content, w_style=cfg.w_transfer_style,
                    w_tv=cfg.w_transfer_tv))
            total = total + cfg.w_transfer * terms["loss_transfer"]
        terms["loss_g"] = total
        return terms

    def _d_updates(self, real: Tensor, fake: Tensor) -> Tensor:
        """``d_steps`` D updates on (VI label, detached F); returns the last D loss."""
        cfg, opt = self.config, self.optimizers["d"]
        set_requires_grad(self.discriminator, True)
        for _ in range(cfg.d_steps):
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = d_loss(self.discriminator, real, fake, cfg.adversarial, cfg.lambda_gp)
            loss.backward()
            opt.step()
        return loss.detach().float()

    def _g_update(self, fused: Tensor, ir: Tensor, vi: Tensor) -> dict[str, Tensor]:
        opt = self.optimizers["g"]
        opt.zero_grad(set_to_none=True)  # nothing but L_G reaches G's gradients
        set_requires_grad(self.discriminator, False)
        try:
            terms = self.generator_losses(fused, ir, vi)
            terms["loss_g"].backward()
        finally:
            set_requires_grad(self.discriminator, True)
        opt.step()
        return {k: v.detach() for k, v in terms.items()}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """D update every call, G update every ``generator_interval``-th call (first included).

        Args:
            batch: paired ``a`` (IR), ``b`` (VI) (B, 1, patch, patch) and ``a_label``,
                ``b_label`` (B, 1, label, label) in [-1, 1].

        Returns:
            ``loss_d`` and G's terms (``loss_g``, ``loss_adv``, ``loss_int``, ``loss_grad``,
            ``loss_content``, ``loss_ssim``, and with ``transfer`` ``loss_transfer``,
            ``loss_tr_content``, ``loss_tr_style``, ``loss_tr_tv``), detached scalars; on calls
            without a G update G's terms repeat the last G update's values.
        """
        ir, vi = batch["a_label"], batch["b_label"]
        g_turn = int(self.step_count) % self.config.generator_interval == 0
        with torch.set_grad_enabled(g_turn), self.autocast():
            fused = self.generator(torch.cat([batch["a"], batch["b"]], dim=1))
        if fused.shape[-2:] != vi.shape[-2:]:
            raise ValueError(f"G output {tuple(fused.shape[-2:])} != label "
                             f"{tuple(vi.shape[-2:])}: cut patches with model.patch_spec()")
        loss_d = self._d_updates(vi.float(), fused.detach().float())
        if g_turn:
            self._last_g = self._g_update(fused, ir, vi)
        self.step_count += 1
        return {"loss_d": loss_d, **self._last_g}

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion: (B, 1, H, W) IR, VI in [0, 1] -> (B, 1, H, W) F in [0, 1].

        Same-size generators run on the image as is (the U-Net reflect-pads to a multiple of
        2^depth internally and crops back); the valid U-Net is replicate-padded to its plan.
        """
        h, w = a.shape[-2:]
        (nh, top), (nw, left) = self.generator.plan(h), self.generator.plan(w)
        x = torch.cat([self.to_input_scale(a), self.to_input_scale(b)], dim=1)
        if (nh, nw) != (h, w):
            x = F.pad(x, (left, nw - w - left, top, nh - h - top), mode="replicate")
        with self.autocast():
            y = self.generator(x)
        return self.from_input_scale(y[..., :h, :w].float())
