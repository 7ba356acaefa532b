"""DenseFuse: a dense-block auto-encoder with a hand-made fusion rule (models.md §6).

Paper: H. Li and X.-J. Wu, "DenseFuse: A Fusion Approach to Infrared and Visible Images",
IEEE Transactions on Image Processing 28(5), 2019. Code: hli1221/imagefusion_densefuse (TF, the
paper's code, which we follow) and hli1221/densefuse-pytorch (a port, "for reference only").

The network is trained as an AUTO-ENCODER on single images (§6.2): loss = MSE + w_ssim *
(1 - SSIM). No fusion happens during training and there is no discriminator. At test time
encoder(A) and encoder(B) are merged by a fixed rule (``strategy``, §6.3) and decoded. Pixels
stay in raw 0..255 (``input_scale = "raw"``, §0.3).

How our paired patch store feeds an auto-encoder: the paper trains on MS-COCO single images,
while our training batches are aligned pairs (A, B). Each ``training_step`` therefore treats A
and B as 2B independent single images and reconstructs every one of them. ``batch_size = 2``
(the TF value) is counted in pairs, so one step sees 4 images. An epoch over N pairs sees 2N
images.

SSIM with L = 1 (``ssim_kind = "ssim_cs"``, the TF default): the TF loss uses
C2 = (0.03 * L)^2 with L = 1 on 0..255 data, so C2 = 9e-4. The standard constant for 8-bit data
would be (0.03 * 255)^2 = 58.5. Local variances of natural images on 0..255 run from about 1 to
thousands, so C2 is almost always negligible. The term then becomes the bare contrast-structure
ratio 2 s_xy / (s_x^2 + s_y^2). That ratio is invariant to scaling the output's local contrast
and is no longer stabilised in flat regions: where the target is (near) flat, output noise of
about 0.03 grey levels already pulls cs from 1 toward 0. The loss therefore spends its weight
on making flat areas exactly flat, with gradients that scale like 1/C2 there. We keep L = 1 as
coded (``ssim_data_range = None``); set it to 255 to sweep the conventional constant. In float32
on 0..255 data, E[x^2] - mu^2 carries rounding errors of about 4e-3, which exceed C2. We
therefore evaluate both SSIM variants in float64. The value is the same function; only rounding
differs.

Deliberate deviations (each also noted where it is implemented):

- The decoder's last layer is linear, as in TF. The PyTorch port ends in ReLU because
  ``is_last`` is never set (densefuse-pytorch #4, §6.5).
- ``ms_ssim`` implements the port's ``pytorch_msssim.msssim(normalize=True)`` with two changes.
  (a) It uses Wang's product prod_{i<5} cs_i^w_i * ssim_5^w_5. The port's
  ``prod(pow1[:-1] * pow2[-1])`` multiplies ssim_5^w_5 into each of the four cs factors.
  (b) It uses a fixed data range of 255. The port picks 255 or 1 per call from the output's
  maximum (> 128). Below 2 px the pyramid stops halving. The port would crash there.
- l1-norm weights where C_A + C_B = 0 (all features zero) are 0.5 / 0.5. TF divides 0/0 there
  and gets NaN. The TF code also sums the activity over the batch; we fuse each sample alone.
- l1 block averaging (radius r > 0) pads with scipy ``boundary="symm"``, as in the TF code's
  commented-out mean filter. TF itself uses r = 0 (§6.3). The paper describes r as a block size.
- ``fuse`` returns the decoded image clamped to [0, 1]. TF saved with scipy's imsave, which
  min-max stretches (§0.5). The TF output is also transposed (§6.4: issues #15/#19); we do not
  transpose. Note that ``strategy = "add"`` (the TF default) doubles the feature magnitude, so
  bright regions can saturate at 1. The stretched TF outputs hide this; ``mean`` does not do it.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from fusion_models.data.patches import PATCH_PRESETS, PatchSpec
from fusion_models.models.base import FusionConfig, FusionModel
from fusion_models.models.losses import ssim

logger = logging.getLogger(__name__)

Strategy = Literal["add", "mean", "l1"]
SsimKind = Literal["ssim_cs", "ms_ssim"]
_PRESET = PATCH_PRESETS["densefuse"]
_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_DEFAULT_RANGE: dict[str, float] = {"ssim_cs": 1.0, "ms_ssim": 255.0}


class Config(FusionConfig):
    """DenseFuse hyper-parameters (TF paper-code defaults, models.md §6.2-6.3).

    There is no ``adversarial`` / ``lambda_gp`` / ``lr_d``: DenseFuse has no discriminator.

    Attributes:
        w_ssim: lambda in loss = MSE + lambda * (1 - SSIM). The TF code trained lambda in
            {1, 10, 100, 1000}. 100 is the default index of both repos (§6.2).
        ssim_kind: ``ssim_cs`` = the TF contrast-structure-only SSIM (Gaussian 11, sigma 1.5,
            valid, mean); ``ms_ssim`` = the PyTorch port's 5-scale MS-SSIM (normalize=True).
        ssim_data_range: L in C2 = (0.03 L)^2. None = as each code has it: 1 for
            ``ssim_cs`` (TF, on 0..255 data: see the module docstring), 255 for ``ms_ssim``.
        lr_g: Adam learning rate of the auto-encoder (1e-4 in both repos).
        strategy: test-time fusion rule on the 64 feature maps: ``add`` = phi_A + phi_B (TF),
            ``mean`` = (phi_A + phi_B) / 2 (PyTorch port), ``l1`` = l1-norm weighting (§6.3).
        l1_radius: window radius r of the l1-norm activity average. 0 = TF's per-pixel
            activity; 1 = the paper's block average over 3x3.
        init_std: std of the truncated-normal conv init (TF: 0.1, cut at 2 std; biases 0).
        epochs: training epochs (4).
        batch_size: pairs per step (TF: 2 images per step). Each pair gives two images.
        patch: training window side (256: the whole image after ``resize``).
        stride: step between windows (256: one window per resized image).
        resize: side the whole image is resized to (nearest) before cutting, as DenseFuse
            prepares COCO; None keeps the stored size.
    """

    w_ssim: float = Field(100.0, ge=0)
    ssim_kind: SsimKind = "ssim_cs"
    ssim_data_range: float | None = Field(None, gt=0)
    lr_g: float = Field(1e-4, gt=0)
    strategy: Strategy = "add"
    l1_radius: int = Field(1, ge=0, le=16)
    init_std: float = Field(0.1, gt=0)
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(2, ge=1)
    patch: int = Field(_PRESET.patch, ge=16)
    stride: int = Field(_PRESET.stride, ge=1)
    resize: int | None = Field(_PRESET.resize, ge=16)

    @model_validator(mode="after")
    def _patch_fits(self) -> Config:
        if self.resize is not None and self.patch > self.resize:
            raise ValueError(f"patch ({self.patch}) must be <= resize ({self.resize})")
        return self


# -- networks (§6.1) ---------------------------------------------------------------------------
def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3, stride 1, reflect-pad 1 (size-preserving), with bias."""
    return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="reflect")


class Encoder(nn.Module):
    """C1 (1->16) then a dense block of three 16-channel convs: (B,1,H,W) -> (B,64,H,W).

    Every conv is followed by ReLU. Each dense conv's output is concatenated in front of its
    input, as TF does ``concat([out, x])``, so the block yields 16 + 3*16 = 64 channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv3(1, 16)
        self.dense = nn.ModuleList(_conv3(16 * (i + 1), 16) for i in range(3))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        for conv in self.dense:
            x = torch.cat([F.relu(conv(x)), x], dim=1)
        return x


class Decoder(nn.Module):
    """C2..C5: 64->64->32->16->1, ReLU after all but the last (linear, §6.5 fix)."""

    def __init__(self) -> None:
        super().__init__()
        chans = (64, 64, 32, 16, 1)
        self.convs = nn.ModuleList(_conv3(i, o) for i, o in zip(chans[:-1], chans[1:], strict=True))

    def forward(self, f: Tensor) -> Tensor:
        for conv in self.convs[:-1]:
            f = F.relu(conv(f))
        return self.convs[-1](f)


# -- fusion strategies (§6.3) ------------------------------------------------------------------
def _pad_symmetric(x: Tensor, r: int) -> Tensor:
    """Pad H and W by r with scipy/numpy 'symmetric' mirroring (edge sample repeated)."""

    def index(n: int) -> Tensor:
        i = torch.arange(-r, n + r, device=x.device) % (2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)

    return x.index_select(-2, index(x.shape[-2])).index_select(-1, index(x.shape[-1]))


def l1_activity(f: Tensor, radius: int) -> Tensor:
    """Activity C = sum_c |phi^c| averaged over a (2r+1)^2 block: (B,C,H,W) -> (B,1,H,W)."""
    act = f.abs().sum(dim=1, keepdim=True)
    if radius == 0:
        return act
    return F.avg_pool2d(_pad_symmetric(act, radius), 2 * radius + 1, stride=1)


def l1_weights(fa: Tensor, fb: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """The l1-norm rule's weight maps w_k = C_k / (C_A + C_B), each (B,1,H,W) in [0, 1].

    They sum to 1 everywhere. Where C_A + C_B = 0 both are 0.5 (TF gives NaN there).
    """
    ca, cb = l1_activity(fa, radius), l1_activity(fb, radius)
    total = ca + cb
    safe = total.clamp_min(torch.finfo(total.dtype).tiny)
    half = torch.full_like(total, 0.5)
    wa = torch.where(total > 0, ca / safe, half)
    wb = torch.where(total > 0, cb / safe, half)
    return wa, wb


def fuse_features(fa: Tensor, fb: Tensor, strategy: Strategy, radius: int = 1) -> Tensor:
    """Merge encoder features (B,64,H,W) of A and B by ``strategy`` -> (B,64,H,W)."""
    if strategy == "add":
        return fa + fb
    if strategy == "mean":
        return (fa + fb) / 2
    if strategy == "l1":
        wa, wb = l1_weights(fa, fb, radius)
        return wa * fa + wb * fb
    raise ValueError(f"unknown strategy {strategy!r}; valid: add, mean, l1")


# -- reconstruction losses (§6.2) -------------------------------------------------------------
def ms_ssim(x: Tensor, y: Tensor, data_range: float) -> Tensor:
    """Wang 5-scale MS-SSIM with the port's (v + 1) / 2 normalisation; scalar.

    Each scale uses a Gaussian 11 / 1.5 window (shrunk to the image if smaller), 'valid'
    windows and batch means. Between scales the image is 2x2 average-pooled (floor).

    Args:
        x, y: (B,1,H,W) on a range of width ``data_range``.
    """
    sims, css = [], []
    for level in range(len(_MS_WEIGHTS)):
        if level and min(x.shape[-2:]) >= 2:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        size = min(11, *x.shape[-2:])
        sims.append(ssim(x, y, data_range, size=size))
        css.append(ssim(x, y, data_range, size=size, structure_only=True))
    w = torch.tensor(_MS_WEIGHTS, dtype=x.dtype, device=x.device)
    sim, cs = (torch.stack(sims) + 1) / 2, (torch.stack(css) + 1) / 2
    return torch.prod(cs[:-1] ** w[:-1]) * sim[-1] ** w[-1]


def reconstruction_ssim_loss(
    out: Tensor, target: Tensor, kind: SsimKind = "ssim_cs", data_range: float | None = None
) -> Tensor:
    """1 - SSIM(target, out) as DenseFuse trains it, computed in float64 (see module doc).

    Args:
        out, target: (B,1,H,W) raw 0..255 reconstructions and originals.
        kind: ``ssim_cs`` (TF: contrast-structure only, C2 with L = 1) or ``ms_ssim`` (port).
        data_range: L; None = 1 for ``ssim_cs`` and 255 for ``ms_ssim`` as the codes have it.

    Returns:
        Float64 scalar, 0 for identical images.
    """
    rng = _DEFAULT_RANGE[kind] if data_range is None else data_range
    o, t = out.double(), target.double()
    if kind == "ssim_cs":
        sim = ssim(t, o, rng, size=min(11, *t.shape[-2:]), structure_only=True)
    elif kind == "ms_ssim":
        sim = ms_ssim(t, o, rng)
    else:
        raise ValueError(f"unknown ssim_kind {kind!r}; valid: ssim_cs, ms_ssim")
    return 1.0 - sim


# -- the model ---------------------------------------------------------------------------------
class DenseFuse(FusionModel):
    """DenseFuse auto-encoder: trained on single images, fuses features at test time."""

    name: ClassVar[str] = "densefuse"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["raw"]] = "raw"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.encoder = Encoder()
        self.decoder = Decoder()
        std = config.init_std
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)
        self.optimizers = self.configure_optimizers()
        logger.debug("built DenseFuse: %s", config)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam over encoder + decoder (lr 1e-4, default betas, as both repos)."""
        return {"g": torch.optim.Adam(self.parameters(), lr=self.config.lr_g)}

    def reconstruct(self, x: Tensor) -> Tensor:
        """decoder(encoder(x)) on raw 0..255 (B,1,H,W); unclamped, same size."""
        return self.decoder(self.encoder(x))

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reconstruct A and B as 2B independent images; one Adam step on MSE + w * L_ssim.

        Args:
            batch: ``a``, ``b`` (B,1,P,P) raw 0..255 (labels are unused: label == patch).

        Returns:
            ``loss_g`` (total), ``loss_pixel`` (MSE, 0..255 units), ``loss_ssim`` (1 - SSIM).
        """
        cfg = self.config
        x = torch.cat([batch["a"], batch["b"]], dim=0)
        opt = self.optimizers["g"]
        opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.reconstruct(x)
        out = out.float()  # losses outside autocast: bf16 cannot hold 0..255 statistics
        loss_pixel = F.mse_loss(out, x)
        loss_ssim = reconstruction_ssim_loss(out, x, cfg.ssim_kind, cfg.ssim_data_range).float()
        loss = loss_pixel + cfg.w_ssim * loss_ssim
        loss.backward()
        opt.step()
        return {
            "loss_g": loss.detach(),
            "loss_pixel": loss_pixel.detach(),
            "loss_ssim": loss_ssim.detach(),
        }

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """encoder(A), encoder(B) -> ``strategy`` -> decoder, at the image's own size.

        Reflect padding keeps every layer size-preserving, so no outer padding is needed.

        Args:
            a, b: (B,1,H,W) in [0, 1], H, W >= 2.

        Returns:
            (B,1,H,W) fused image in [0, 1] (clamped, not stretched).
        """
        x = torch.cat([self.to_input_scale(a), self.to_input_scale(b)], dim=0)
        with self.autocast():
            feats = self.encoder(x)
        fa, fb = feats.float().chunk(2, dim=0)
        fused = fuse_features(fa, fb, self.config.strategy, self.config.l1_radius)
        with self.autocast():
            out = self.decoder(fused)
        return self.from_input_scale(out.float())

    def patch_spec(self) -> PatchSpec:
        """Whole images resized to ``resize`` (256), one ``patch`` window each (§6.2)."""
        cfg = self.config
        return PatchSpec(cfg.patch, cfg.patch, cfg.stride, "inclusive", resize=cfg.resize)
