"""CNN-CP: siamese-CNN weight map + contrast-pyramid fusion for multi-modality medical images.

Paper: K. Wang, M. Zheng, H. Wei, G. Qi, Y. Li, "Multi-Modality Medical Image Fusion Using
Convolutional Neural Network and Contrast Pyramid", Sensors 20(8):2169, 2020 (models.md §9).
No code was published, and only the paper's abstract could be read here (siamese CNN -> weight
map from pixel activity; contrast pyramid; a weighted fusion operator per spatial-frequency
band). Everything else follows the siamese design the paper builds on: Liu et al.
(Information Fusion 36, 2017; medical variant FUSION 2017, code yuliu316316/CNN-Medical-Fusion,
whose Laplacian pyramid the paper replaces by a contrast pyramid). It is neither a GAN nor an
auto-encoder: there is no end-to-end fusion loss and no ``adversarial`` field.

Pipeline (``fuse``): (1) the siamese network scores every 16 x 16 window pair (stride 2) of A
and B; the sigmoid scores, averaged over each pixel's overlapping windows, give the weight map
W in [0, 1] (W -> 1 where A is the more active source). (2) Both sources are decomposed by
Toet's contrast (ratio-of-low-pass) pyramid, W by a Gaussian pyramid. (3) Each contrast level is
fused guided by W's level (``detail_rule``), the top Gaussian level by ``base_rule``. (4) The
fused pyramid is reconstructed and clamped to [0, 1]. Colour (PET/SPECT): the project's colour
rules hand the model grey channels (task ``medical`` -> IHS: the intensity I is fused and the
colour source's v1, v2 restored, models.md §0.12), so the model itself is grey-only.

Training (``training_step``): the paper trains the siamese network as a classifier of sharp
vs blurred patches (Liu et al.'s recipe). Every source patch of the batch (A and B alike,
2B patches) is blurred on the fly; (sharp, blurred) is labelled 1 and (blurred, sharp) 0, both
orderings in every step, binary cross-entropy on the logit. It therefore trains on any paired
data through the common loop.

Choices the paper leaves open (or that we could not read from it), and what we chose; each
is a :class:`Config` field:

- Network widths: Liu et al.'s 64 -> 128 -> 256 branch (``width`` = 64) with the medical
  model's head, one 8 x 8 conv straight to the score (``head_channels`` = 0; 256 gives the
  multi-focus model's hidden layer). Zero 'same' padding, no normalisation layers (so one
  image fuses the same alone or in any batch).
- Output: one logit with sigmoid/BCE instead of Liu's two-way softmax (the same family:
  softmax over two logits is the sigmoid of their difference).
- Blur for training pairs: Liu's Gaussian 7 x 7, sigma 2, applied k = 1..5 times (k random per
  patch): ``blur_sigma``, ``blur_size``, ``blur_repeats``. Patches that the blur barely
  changes (mean |x - blur(x)| <= ``min_blur_change``: the flat black background of CT/MRI
  slices) carry no label information and are left out of the loss.
- Optimiser: Adam, lr 1e-4, with Liu's weight decay 5e-4 and batch 128. Liu's SGD (momentum
  0.9, lr 1e-4) is ``optimizer="sgd"``; in our budgets (hundreds to a few thousand steps,
  not Liu's millions of patches) it leaves the classifier at chance, i.e. W = 0.5 everywhere
  (60 steps of 32 pairs: BCE 0.69 with SGD at 1e-4, 0.68 at 1e-2, 0.00 with Adam at 1e-3).
- Training windows: 16 x 16 patches (``patch``; larger patches train every 16 x 16 window
  at stride 2 with the same label) cut every ``stride`` = 8 px (Liu sampled randomly).
- Pyramid depth: ``levels`` = None follows Liu et al.'s code, floor(log2(min side)) levels in
  all (256 px: 7 contrast levels + a 2 x 2 top); an explicit value is capped at the depth
  where the top reaches 1 x 1.
- Contrast-pyramid kernel and ratio: the 5-tap binomial [1 4 6 4 1]/16 (Burt-Adelson
  a = 0.375), replicate borders, ``ratio_eps`` = 1e-6 added to numerator and denominator so
  the ratio exists over black background (reconstruction stays exact). The ratio is bounded
  anyway (the low-pass under a bright pixel contains that pixel), but a larger eps turns
  "black next to bright" from contrast -1 into a value the other source's base then
  multiplies: on the Harvard CT/MRI training pairs (not the reported ones) eps = 1/255 left
  a grey halo on 26% of the pixels black in both sources (1e-4: 0.6%, 1e-6: 0.02%, flat
  below), with Qabf unchanged (0.548-0.551) and SSIM_A + SSIM_B 0.55 -> 1.26.
- Fusion rules: ``base_rule`` = ``weighted`` (W_top A + (1 - W_top) B at the top level) and
  ``detail_rule`` = ``similarity``: Liu et al.'s CNN medical rule (local energy over
  ``energy_window`` = 3, similarity threshold ``similarity_threshold`` = 0.6: weighted average
  by W where the levels are similar, the larger-energy coefficient elsewhere), applied to the
  contrast levels; ``weighted`` and ``energy`` are the two halves of that rule alone.
- ``symmetric`` (False): the raw score as the paper has it; True averages W(A, B) and
  1 - W(B, A), making the map exactly antisymmetric in the sources.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from fusion_models.data.patches import PatchSpec
from fusion_models.models._cnncp_nets import PATCH, SiameseNet, blurred_copies, window_average
from fusion_models.models._contrast_pyramid import (
    BaseRule,
    DetailRule,
    auto_levels,
    contrast_pyramid,
    fuse_pyramids,
    gaussian_pyramid,
    max_levels,
    reconstruct,
)
from fusion_models.models.base import FusionConfig, FusionModel

logger = logging.getLogger(__name__)

Optimizer = Literal["sgd", "adam"]


class Config(FusionConfig):
    """CNN-CP hyper-parameters (Liu et al.'s values where the paper follows them; see the
    module docstring for each open choice).

    Attributes:
        width: channels of the branch's first conv (branch: width, 2 width, 4 width; 64).
        head_channels: 0 = one 8 x 8 conv to the score (Liu's medical model); > 0 = a hidden
            8 x 8 conv of this many channels + ReLU + 1 x 1 conv (Liu's multi-focus model, 256).
        symmetric: average W(A, B) with 1 - W(B, A) at fusion time (False: the raw score).
        optimizer: ``adam`` (betas 0.9/0.999; our default) or ``sgd`` (Liu: momentum 0.9).
        lr_g: learning rate of the siamese network (1e-4, Liu's value).
        momentum: SGD momentum (0.9).
        weight_decay: L2 weight decay of either optimiser (Liu: 5e-4).
        blur_sigma: sigma of the Gaussian that makes the blurred training patches (2).
        blur_size: taps of that Gaussian (7, odd).
        blur_repeats: a patch is blurred k = 1..blur_repeats times, k uniform (5 levels).
        min_blur_change: patches with mean |x - blur(x)| at or below this ([0, 1] units) are
            left out of the loss (flat background: no label information); 0 keeps all.
        levels: contrast levels of the pyramid; None = floor(log2(min side)) - 1 (Liu's depth).
        ratio_eps: added to numerator and denominator of the contrast ratio ([0, 1] units;
            1e-6).
        base_rule: top Gaussian level: ``weighted`` by W, or ``average``.
        detail_rule: contrast levels: ``similarity`` (Liu's rule), ``weighted`` or ``energy``.
        similarity_threshold: the similarity rule's threshold on M in [-1, 1] (Liu: 0.6).
        energy_window: side of the local-energy window (odd; 3).
        epochs: training epochs (10).
        batch_size: pairs per step; each gives 2 source patches and 4 ordered inputs (128).
        patch: training window side (16, the network's window; larger trains every 16 x 16
            window at stride 2 inside it).
        stride: step between training windows (8).
    """

    width: int = Field(64, ge=1)
    head_channels: int = Field(0, ge=0)
    symmetric: bool = False
    optimizer: Optimizer = "adam"
    lr_g: float = Field(1e-4, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    blur_sigma: float = Field(2.0, gt=0)
    blur_size: int = Field(7, ge=3)
    blur_repeats: int = Field(5, ge=1)
    min_blur_change: float = Field(1.0 / 255.0, ge=0)
    levels: int | None = Field(None, ge=1)
    ratio_eps: float = Field(1e-6, gt=0)
    base_rule: BaseRule = "weighted"
    detail_rule: DetailRule = "similarity"
    similarity_threshold: float = Field(0.6, ge=-1, le=1)
    energy_window: int = Field(3, ge=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    patch: int = Field(PATCH, ge=PATCH)
    stride: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _odd_windows(self) -> Config:
        for key in ("blur_size", "energy_window"):
            if getattr(self, key) % 2 == 0:
                raise ValueError(f"{key} ({getattr(self, key)}) must be odd")
        return self


class CNNCP(FusionModel):
    """Siamese-CNN weight map + contrast-pyramid fusion (Wang et al., Sensors 2020)."""

    name: ClassVar[str] = "cnncp"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["unit"]] = "unit"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.siamese = SiameseNet(config.width, config.head_channels)
        self.optimizers = self.configure_optimizers()
        logger.debug("built CNNCP: %s", config)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser over the siamese network: SGD (Liu et al.) or Adam."""
        cfg, params = self.config, self.siamese.parameters()
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr_g, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=cfg.lr_g, weight_decay=cfg.weight_decay)
        return {"g": opt}

    def patch_spec(self) -> PatchSpec:
        """``patch`` x ``patch`` windows every ``stride`` (the whole window is the input)."""
        cfg = self.config
        return PatchSpec(cfg.patch, cfg.patch, cfg.stride, "inclusive")

    def training_pairs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Ordered (left, right) inputs, targets and loss weights from a batch's patches.

        Args:
            batch: ``a``, ``b`` (B, 1, P, P) in [0, 1].

        Returns:
            ``left``, ``right`` (4B, 1, P, P): (sharp, blurred) for the 2B source patches, then
            (blurred, sharp); ``target`` (4B,) 1 then 0 (1 = the left input is the sharp one);
            ``keep`` (4B,) 1.0 for patches the blur changes by more than ``min_blur_change``.
        """
        cfg = self.config
        sharp = torch.cat([batch["a"], batch["b"]], dim=0).float()
        with torch.no_grad():
            blurred = blurred_copies(sharp, cfg.blur_sigma, cfg.blur_size, cfg.blur_repeats)
            change = (sharp - blurred).abs().mean(dim=(1, 2, 3))
        keep = (change > cfg.min_blur_change).float().repeat(2)
        n = sharp.shape[0]
        target = torch.cat([sharp.new_ones(n), sharp.new_zeros(n)])
        left, right = torch.cat([sharp, blurred]), torch.cat([blurred, sharp])
        return left, right, target, keep

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One optimiser step of the sharp-vs-blurred classifier (BCE, both orderings).

        Args:
            batch: ``a``, ``b`` (B, 1, P, P) in [0, 1] (labels unused: label == patch).

        Returns:
            Detached scalars: ``loss_g`` (mean BCE over the kept patches, every 16 x 16 window
            position), ``accuracy`` (kept inputs whose mean logit has the target's sign) and
            ``kept`` (fraction of inputs in the loss).
        """
        left, right, target, keep = self.training_pairs(batch)
        with self.autocast():
            logits = self.siamese(left, right)
        logits = logits.float()
        per_input = F.binary_cross_entropy_with_logits(
            logits, target.view(-1, 1, 1, 1).expand_as(logits), reduction="none"
        ).mean(dim=(1, 2, 3))
        kept = keep.sum()
        loss = (per_input * keep).sum() / kept.clamp_min(1.0)
        self.optimizer_step("g", loss)
        correct = ((logits.mean(dim=(1, 2, 3)) > 0).float() == target).float()
        accuracy = (correct * keep).sum() / kept.clamp_min(1.0)
        return {"loss_g": loss.detach(), "accuracy": accuracy.detach(),
                "kept": (kept / keep.numel()).detach()}

    def weight_map(self, a: Tensor, b: Tensor) -> Tensor:
        """The siamese weight map W (step 1 of the pipeline).

        Args:
            a, b: (B, 1, H, W) in [0, 1], any H, W >= 1 (sides under 16 are replicate-padded
                for scoring and cropped back).

        Returns:
            (B, 1, H, W) in [0, 1]: each pixel's mean sigmoid score over the 16 x 16 windows
            (stride 2) covering it; > 0.5 where A is the sharper / more active source.
        """
        h, w = a.shape[-2:]
        pad = (0, max(0, PATCH - w), 0, max(0, PATCH - h))
        if any(pad):
            a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
        with self.autocast():
            logits = self.siamese(a, b)
            reverse = self.siamese(b, a) if self.config.symmetric else None
        score = torch.sigmoid(logits.float())
        if reverse is not None:
            score = (score + 1.0 - torch.sigmoid(reverse.float())) / 2
        return window_average(score, a.shape[-2:])[..., :h, :w]

    def pyramid_levels(self, height: int, width: int) -> int:
        """Contrast levels used for an H x W image: ``levels`` (capped) or the auto depth."""
        levels = self.config.levels or auto_levels(height, width)
        return min(levels, max_levels(height, width))

    def fuse_with_weights(self, a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
        """Steps 2-4: contrast pyramids of A and B fused level by level guided by the Gaussian
        pyramid of ``weights``, reconstructed (unclamped).

        Args:
            a, b: (B, 1, H, W) in [0, 1]; weights: (B, 1, H, W) in [0, 1] (1 -> A).

        Returns:
            (B, 1, H, W) fused image in ``a``'s dtype (may leave [0, 1] slightly; :meth:`fuse`
            clamps). The pyramids run in float64: the ratios of a small ``ratio_eps`` would
            otherwise cost float32 its last digits over 7 levels (an image fused with itself
            came back within 6e-6 in float32, 1e-12 in float64); the CNN stays in float32.
        """
        cfg = self.config
        levels = self.pyramid_levels(*a.shape[-2:])
        pa = contrast_pyramid(a.double(), levels, cfg.ratio_eps)
        pb = contrast_pyramid(b.double(), levels, cfg.ratio_eps)
        pw = gaussian_pyramid(weights.double(), levels)
        fused = fuse_pyramids(pa, pb, pw, cfg.base_rule, cfg.detail_rule,
                              cfg.similarity_threshold, cfg.energy_window)
        return reconstruct(fused, cfg.ratio_eps).to(a.dtype)

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Weight map, contrast-pyramid fusion, reconstruction.

        Args:
            a, b: (B, 1, H, W) grey sources (or IHS intensities) in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1] (clamped).
        """
        weights = self.weight_map(a, b)
        return self.fuse_with_weights(a, b, weights).clamp(0.0, 1.0)
