"""MFIF-GAN: a GAN that predicts the focus map of a multi-focus pair, trained on α-matte data.

Wang, Xu, Zhang, Zhao, Cao, "MFIF-GAN: A new generative adversarial network for multi-focus
image fusion", Signal Processing: Image Communication 96, 2021. Authors' PyTorch code:
ycwang-libra/MFIF-GAN (model.py, solver.py, main.py, data_loader.py, CNN_post_process.py,
data_preparation/data_generation.m). Spec: models.md §8. Networks: :mod:`._mfifgan_nets`.

A = near-focus source, B = far-focus source, networks in [-1, 1] (the code's Normalize(0.5)).

- Generator: Siamese residual encoder (64 base filters, 9 SE basic blocks at 256 channels),
  decoder to a focus map M in (0, 1) (sigmoid). Fusion: F = M*A + (1-M)*B (solver.py test).
- Discriminator: conditional critic on (A, B, map), 64 filters, 3 doubling + 3 keeping strided
  convs, 5 BN layers, sigmoid. Real = the ground-truth focus map, fake = G's map, both beside
  the same sources (solver.py: ``D(A, B, focus_map)`` vs ``D(A, B, decision_map)``); D never
  sees a fused image.
- Losses: WGAN-GP, lambda_gp = 10, the penalty interpolates and differentiates the map only;
  L_G = -mean D(A, B, M_pred) + 10 * mean |M_true - M_pred|. Adam 1e-4, betas (0.5, 0.999).
- n_critic = 5 (solver.py): one critic update per batch, one G update every 5th batch.
- Training data (data_generation.m, sigma = 1): I sharp, BI = I blurred, M a binary mask,
  M~ = M blurred; A = I*M + BI*(1-M), B = BI*M~ + I*(1-M~); target = M (data_loader.py reads
  ``focus_map_png``, the binary mask). We build it on the fly in :meth:`MFIFGAN.alpha_matte_pair`
  (our patch store carries a, b only): I = a sharp proxy of the patch pair (``sharp_source``),
  M = random smooth blobs covering 35-65 % (as ``generated:mff``, synthetic.py), and with
  probability ``swap_prob`` A and B trade places (target 1 - M).
- Inference: G on the whole image, its map centre-cropped to H x W (the code's to_same_size),
  then (``post_process``) thresholded at 0.5 with regions and holes under 0.1 % of the image
  removed (CNN_post_process.py, 4-connectivity), F = M*A + (1-M)*B.

Deliberate deviations from the authors' code:
- Grey sources: one channel per source (their encoder averages its features over R, G, B; the
  same for a grey image). Colour is the orchestrator's colour plan, as for every model.
- Training pairs are synthesised per batch from our patches (above) instead of VOC2012 photos
  with segmentation masks: blob masks in place of object masks, a sharp proxy of the patch in
  place of an all-in-focus photo, and the A/B swap (``swap_prob`` 0.5; the code always puts
  the object in A; blob masks have no object side, so we keep G from tying "A" to the
  hard-edged source). No centre-crop 178 / resize 256: windows ``patch`` every ``stride``.
- Ground-truth maps are in [0, 1] for D and the L1 term. The code normalised them to {-1, 1}
  like the images while G's sigmoid gives (0, 1): the L1 gradient is the same, but its critic
  could tell real from fake by the value -1 alone.
- With ``wgan_gp`` (the paper's) D's 5 BN layers become GroupNorm(1, C) (``d_norm`` auto): a
  gradient penalty through batch statistics is ill-defined (Gulrajani et al. 2017). ``lsgan``
  and ``bce`` keep the code's BN critic; ``bce`` drops the final sigmoid into its loss.
- G steps on batches 1, 6, 11, ... (code: 5, 10, ...), so runs shorter than n_critic batches
  still train G; ``critic_schedule="same_batch"`` instead runs n_critic critic updates on each
  batch before its G update (MFF-GAN's ``d_steps`` style; fewer G forwards per G update).
  G runs once per batch; its map serves the critic (detached) and the G step (G is unchanged
  in between, as the code's recomputation). The batch counter is not in checkpoints.
- No learning-rate decay: the code's (lr0/10,000 off every 1,000 of the last 10,000
  iterations) lowers the rate by 0.1 % in all.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fusion_models.data.patches import PatchSpec
from fusion_models.models._mfifgan_nets import Conditioned, Discriminator, Generator
from fusion_models.models.base import (
    AdversarialConfig,
    FusionConfig,
    FusionModel,
    set_requires_grad,
)
from fusion_models.models.losses import d_loss, g_adv_loss, gaussian_blur_separable, laplacian4

logger = logging.getLogger(__name__)


class Config(AdversarialConfig):
    """MFIF-GAN hyperparameters; defaults are the authors' code values (models.md §8).

    Attributes:
        adversarial: GAN objective; ``wgan_gp`` is the paper's.
        d_norm: D's normalisation; None = auto (``layer`` for ``wgan_gp``, the code's
            ``batch`` otherwise; see :class:`~fusion_models.models.base.AdversarialConfig`).
        lambda_gp: gradient-penalty weight (10).
        w_adv: weight of G's adversarial term (1).
        w_l1: weight of the L1 focus-map term (the code's ``lambda_rec``, 10).
        n_critic: critic updates per G update (5).
        critic_schedule: ``interleaved`` (the code: one critic update per batch, G on every
            n_critic-th batch) or ``same_batch`` (n_critic critic updates, then G, per batch).
        lr_g, lr_d: Adam learning rates (1e-4).
        beta1, beta2: Adam betas (0.5, 0.999).
        g_channels: generator base filters (64; the residual blocks run at 4x).
        g_blocks: SE residual blocks (9).
        se_reduction: squeeze-excitation reduction ratio (16).
        d_channels: filters of D's first conv (64).
        d_repeats: the code's ``d_repeat_num`` (3).
        blur_sigma: Gaussian sigma of the defocus blur and of the mask blur M~ (1).
        sharp_source: the sharp image I of the on-the-fly recipe: ``composite`` (per pixel
            the patch of A or B with more local Laplacian energy: an all-in-focus proxy) or
            ``a`` (patch A as it is).
        swap_prob: probability that a synthesised pair trades A and B (target 1 - M).
        post_process: binarise the inference map and remove small regions (the code's).
        min_region: removed regions and holes are smaller than this fraction of H*W (0.001).
        epochs: training epochs (82: 120,000 iterations x batch 2 over VOC2012's 2,913
            segmentation images).
        batch_size: patches per batch (2).
        patch: training window side (256, the code's image size).
        stride: step between training windows (128).
    """

    adversarial: Literal["wgan_gp", "lsgan", "bce"] = "wgan_gp"
    lambda_gp: float = Field(10.0, ge=0)
    w_adv: float = Field(1.0, ge=0)
    w_l1: float = Field(10.0, ge=0)
    n_critic: int = Field(5, ge=1)
    critic_schedule: Literal["interleaved", "same_batch"] = "interleaved"
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    g_channels: int = Field(64, ge=1)
    g_blocks: int = Field(9, ge=0)
    se_reduction: int = Field(16, ge=1)
    d_channels: int = Field(64, ge=1)
    d_repeats: int = Field(3, ge=1)
    blur_sigma: float = Field(1.0, gt=0)
    sharp_source: Literal["composite", "a"] = "composite"
    swap_prob: float = Field(0.5, ge=0, le=1)
    post_process: bool = True
    min_region: float = Field(0.001, ge=0, lt=1)
    epochs: int = Field(82, ge=1)
    batch_size: int = Field(2, ge=1)
    patch: int = Field(256, ge=16)
    stride: int = Field(128, ge=1)


# -- the α-matte recipe (data_generation.m), in torch ----------------------------------------
def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, MATLAB ``imgaussfilt`` defaults: kernel 2*ceil(2 sigma)+1,
    replicate padding. x: (B, C, H, W), any range -> same shape."""
    return gaussian_blur_separable(x, sigma, math.ceil(2 * sigma), "replicate")


def blob_masks(n: int, height: int, width: int, like: Tensor) -> Tensor:
    """(n, 1, height, width) binary masks of smooth random blobs, each covering a random
    35-65 % of its image (the recipe of synthetic.py's ``_blob_mask``, in torch)."""
    side = max(min(height, width) // 16, 2)
    coarse = torch.randn(n, 1, side, side, dtype=like.dtype, device=like.device)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    field = gaussian_blur(field, min(height, width) / 32).flatten(1)
    share = torch.rand(n, dtype=like.dtype, device=like.device) * 0.3 + 0.35
    index = (share * (field.shape[1] - 1)).long()[:, None]
    threshold = field.sort(dim=1).values.gather(1, index)
    return (field > threshold).to(like.dtype).view(n, 1, height, width)


def sharp_composite(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Per pixel the source with more local focus energy (mean of lap4^2 over ``window``;
    ties to A): an all-in-focus proxy. a, b: (B, 1, H, W) -> same shape and range."""
    energy = F.avg_pool2d(torch.cat([laplacian4(a), laplacian4(b)], 1) ** 2, window, 1,
                          window // 2, count_include_pad=False)
    return torch.where(energy[:, :1] >= energy[:, 1:], a, b)


def alpha_matte_pair(image: Tensor, mask: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """The α-matte sources of data_generation.m (models.md §8).

    Args:
        image: (B, 1, H, W) sharp image I, any range.
        mask: (B, 1, H, W) focus mask M in {0, 1} (1 = in focus in A).
        sigma: Gaussian sigma of the defocus blur BI and of the matte M~.

    Returns:
        ``A = I*M + BI*(1-M)`` (sharp where M = 1) and ``B = BI*M~ + I*(1-M~)`` (sharp where
        M = 0, the α-matte spreading the blur over the boundary), both like ``image``.
    """
    blurred, matte = gaussian_blur(image, sigma), gaussian_blur(mask, sigma)
    return image * mask + blurred * (1 - mask), blurred * matte + image * (1 - matte)


def remove_small_regions(mask: np.ndarray, min_size: float) -> np.ndarray:
    """CNN_post_process.py: drop 4-connected regions of ``mask`` with fewer than ``min_size``
    pixels, then fill holes with fewer than ``min_size`` pixels. (H, W) bool -> (H, W) bool."""
    def keep_large(m: np.ndarray) -> np.ndarray:
        _, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=4)
        sizes = np.bincount(labels.ravel())
        large = sizes >= min_size
        large[0] = False
        return large[labels]

    return ~keep_large(~keep_large(mask))


# -- the model ---------------------------------------------------------------------------------
class MFIFGAN(FusionModel):
    """MFIF-GAN (models.md §8): A = near focus, B = far focus, networks in [-1, 1]."""

    name: ClassVar[str] = "mfifgan"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "pm1"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.generator = Generator(config.g_channels, config.g_blocks, config.se_reduction)
        self.discriminator = Discriminator(config.d_channels, config.d_repeats, config.d_norm,
                                           sigmoid=config.adversarial != "bce")
        self.batches_seen = 0  # the n_critic phase (not checkpointed)
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam for G and D, betas (0.5, 0.999) (solver.py)."""
        cfg = self.config
        betas = (cfg.beta1, cfg.beta2)
        return {
            "g": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=betas),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_d, betas=betas),
        }

    def patch_spec(self) -> PatchSpec:
        """Input = label window, ``patch`` x ``patch`` every ``stride``."""
        return PatchSpec(self.config.patch, self.config.patch, self.config.stride, "inclusive")

    def alpha_matte_pair(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A training pair with its true focus map, synthesised from a patch pair.

        Args:
            a, b: (B, 1, H, W) patches in [-1, 1].

        Returns:
            ``(src_a, src_b, target)``: (B, 1, H, W) sources in [-1, 1] by
            :func:`alpha_matte_pair` on the sharp image (``sharp_source``) and fresh blob
            masks M; target = M in {0, 1}, or with probability ``swap_prob`` per sample the
            sources swapped and target = 1 - M. Random draws use torch's global generator.
        """
        cfg = self.config
        image = sharp_composite(a, b) if cfg.sharp_source == "composite" else a
        mask = blob_masks(a.shape[0], a.shape[2], a.shape[3], a)
        src_a, src_b = alpha_matte_pair(image, mask, cfg.blur_sigma)
        swap = (torch.rand(a.shape[0], 1, 1, 1, device=a.device) < cfg.swap_prob).to(a.dtype)
        return (swap * src_b + (1 - swap) * src_a, swap * src_a + (1 - swap) * src_b,
                swap * (1 - mask) + (1 - swap) * mask)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Critic update(s), and a G update on the n_critic schedule, on one batch.

        Args:
            batch: ``a``, ``b``: (B, 1, patch, patch) in [-1, 1] (only their content is used:
                the pair and its target come from :meth:`alpha_matte_pair`).

        Returns:
            Detached scalars ``loss_g`` (w_adv * adv + w_l1 * l1, on every batch; G steps on
            it only on G batches), ``loss_d`` (mean over this batch's critic updates),
            ``loss_adv``, ``loss_l1``.
        """
        cfg = self.config
        with torch.no_grad():
            src_a, src_b, target = self.alpha_matte_pair(batch["a"], batch["b"])
        same_batch = cfg.critic_schedule == "same_batch"
        g_turn = same_batch or self.batches_seen % cfg.n_critic == 0
        self.batches_seen += 1
        with torch.set_grad_enabled(g_turn), self.autocast():
            pred = self.generator(src_a, src_b)
        pred = pred.float()
        critic = Conditioned(self.discriminator, torch.cat([src_a, src_b], dim=1))
        fake = pred.detach()
        loss_d = self.discriminator_steps(
            lambda: d_loss(critic, target, fake, cfg.adversarial, cfg.lambda_gp),
            cfg.n_critic if same_batch else 1)

        set_requires_grad(self.discriminator, False)
        with self.autocast():
            loss_adv = g_adv_loss(critic, pred, cfg.adversarial).float()
        set_requires_grad(self.discriminator, True)
        loss_l1 = (target - pred).abs().mean()
        loss_g = cfg.w_adv * loss_adv + cfg.w_l1 * loss_l1
        if g_turn:
            self.optimizer_step("g", loss_g)
        terms = {"loss_g": loss_g, "loss_d": loss_d, "loss_adv": loss_adv, "loss_l1": loss_l1}
        return {k: v.detach() for k, v in terms.items()}

    def decision_map(self, a: Tensor, b: Tensor) -> Tensor:
        """G's raw focus map for whole images (no post-processing).

        Args:
            a, b: (B, 1, H, W) near / far sources in [0, 1].

        Returns:
            (B, 1, H, W) map in (0, 1), 1 = take A: G's (4*ceil(H/4), 4*ceil(W/4)) output
            centre-cropped as torchvision CenterCrop (the code's to_same_size).
        """
        with self.autocast():
            out = self.generator(self.to_input_scale(a), self.to_input_scale(b))
        h, w = a.shape[-2:]
        top = int(round((out.shape[-2] - h) / 2))
        left = int(round((out.shape[-1] - w) / 2))
        return out.float()[..., top : top + h, left : left + w]

    def focus_map(self, a: Tensor, b: Tensor) -> Tensor:
        """The map the fusion uses: :meth:`decision_map`, and with ``post_process`` each
        image's map > 0.5 with small regions and holes removed (:func:`remove_small_regions`,
        ``min_region`` * H * W pixels). (B, 1, H, W) sources in [0, 1] -> (B, 1, H, W) map in
        [0, 1] ({0, 1} when post-processed)."""
        raw = self.decision_map(a, b)
        if not self.config.post_process:
            return raw
        size = self.config.min_region * raw.shape[-2] * raw.shape[-1]
        binary = (raw > 0.5).cpu().numpy()
        kept = [remove_small_regions(m[0], size)[None] for m in binary]
        return torch.from_numpy(np.stack(kept)).to(raw)

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """F = M*A + (1-M)*B with M = :meth:`focus_map`.

        Args:
            a, b: (B, 1, H, W) near / far sources in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1].
        """
        m = self.focus_map(a, b)
        return (m * a + (1 - m) * b).clamp(0.0, 1.0)
