"""DDcGAN: dual-discriminator conditional GAN for infrared/visible (and PET/MRI) fusion.

Ma, Xu, Jiang, Mei, Zhang, "DDcGAN: A Dual-Discriminator Conditional Generative Adversarial
Network for Multi-Resolution Image Fusion", IEEE TIP 29, 2020 (IJCAI-19 version earlier).
Authors' TF1 code: hanna-xu/DDcGAN (same-resolution vis-ir, multi-resolution vis-ir and
PET-MRI folders: Generator.py, Deconv.py, Discriminator.py, LOSS.py, train.py). Spec: models.md §3.

A = infrared (or PET), B = visible (or MRI); everything works in [0, 1] (§0.2) and G sees
[VI, IR] (§0.13), i.e. [b, a].

- Generator and discriminators: :mod:`fusion_models.models._ddcgan_nets` (§3.1, §3.2).
- Two variants (``variant``):
  ``same_resolution``: D_v sees VI vs F, D_i sees IR vs F (all 84x84).
  ``multi_resolution`` (multi-resolution vis-ir and PET-MRI code): the IR is 1/4 size, G up-
  samples it with a stride-4 transposed conv; D_i sees the low-resolution IR vs ds(F), F taken
  from 84 to 21 by two 3x3 stride-2 'SAME' average pools. In training the low-resolution IR is
  made from the patch (bicubic, see ``downsample_quarter``; the code: scipy zoom 0.25).
- Losses (§3.3; Fro = batch mean of the per-image sum of squares, L1 = batch mean of the
  per-image sum of |x|, lap = 8-neighbour Laplacian, zero 'SAME'):
  L_D = -log D(real) - log(1 - D(F)) for each D;
  L_G = -log D_v(F) - log D_i(F) + w_content * (w_int * Fro(F_i - IR) + w_grad * L1(lap F - lap VI))
  with F_i = F (same resolution) or ds(F) (multi resolution). Code values: w_content 0.6 / 0.8,
  w_int 1/16 / 1, w_grad 1.2 / 1.2 (same / multi resolution).
- Training (§3.4): lr 2e-4 decayed by 0.9 every ``lr_decay_steps`` optimiser steps (one shared
  counter over all solvers, continuous); RMSProp (TF1 semantics) for G, plain SGD for the Ds;
  every parameter clipped to [-8, 8] after each step. Schedule per batch (``alternate``): even
  batches train the Ds, odd batches G. D phase: one step of D_v, then more while its loss >
  ``d_threshold`` (at most ``max_repeats`` steps); the same for D_i. G phase: one full step,
  then adversarial-only steps (a second RMSProp, as the code's separate G_GAN_solver) while
  either D loss < ``g_adv_threshold``, then full steps while L_G > ``g_threshold``, at most
  ``max_repeats`` G steps in all. Thresholds 1.7 / 1.4 / 200 (same), 1.9 / 1.0 / 200 (multi).
- Inference: whole image in one pass (reflect padding keeps the size).

Deliberate deviations from the authors' code:
- BN at inference uses running statistics (eval mode: deterministic, independent of the rest
  of the batch). The TF code always normalised with batch statistics (``training=True``) and
  never updated its moving averages (§0.6); ``bn_at_test="batch"`` restores that behaviour
  for one image per run: each image is normalised with its own statistics, never across the
  images of a batch (so fuse, eval and validation agree whatever their batch size).
- With ``adversarial="wgan_gp"`` both Ds use ``nn.GroupNorm(1, C)`` (layer norm, per sample)
  instead of BN (``d_norm``, auto): a gradient penalty through batch statistics is ill-defined
  (Gulrajani et al. 2017). ``bce``/``lsgan`` keep the paper's BN Ds.
  BN eps 1e-3 as TF; momentum 0.1 (no code value exists, see _ddcgan_nets.BN_MOMENTUM).
- The Ds return the logit 2t of their tanh(t)/2 + 0.5 output (= sigmoid(2t)), so the code's
  -log(D + 1e-8) losses are BCE-with-logits: the same values except where the 1e-8 clamp bit
  (losses above 18), far above every threshold of the schedule.
- The decay period is the code's batches per epoch (``n_batches``), which the model cannot
  know by itself: ``lr_decay_steps=None`` (default) uses the batches per epoch the training loop
  reports (``steps_per_epoch``; 1000 when unknown), an integer fixes the period.
- ``fuse`` of the multi-resolution variant takes ``a`` at FULL size (the common fuse(a, b)
  signature) and makes the 1/4 image itself with the training rule; H, W are reflect-padded
  to multiples of 4 and the output cropped back. (The code's test set ships IR{n}_ds.bmp.)
- The post-step loss evaluation of the adaptive loops is also the forward of the next step
  (the same values, half the passes), and D_v's repeats finish before D_i's first step (the
  two Ds are independent and G is fixed in the D phase).
- ``alternate=False`` runs the D phase then the G phase on every batch (the repo-root
  train.py schedule; its other differences, a gradient-image D_v, a TV loss and weight 3, are
  not reproduced).
- ``adversarial`` also offers ``lsgan`` and ``wgan_gp`` (on the logits; default ``bce``);
  ``optimizer_g``/``optimizer_d`` offer Adam and the other two.
- ``fuse`` returns [0, 1] with no per-image min-max stretch (§0.5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from fusion_models.data.patches import PatchSpec
from fusion_models.models._ddcgan_nets import (
    Discriminator,
    Generator,
    TFRMSprop,
    avg_pool_same,
    downsample_quarter,
)
from fusion_models.models.base import (
    AdversarialConfig,
    BNStats,
    FusionConfig,
    FusionModel,
    set_requires_grad,
)
from fusion_models.models.losses import d_loss, g_adv_loss, laplacian8

logger = logging.getLogger(__name__)

# The multi-resolution / PET-MRI code values that differ from the same-resolution ones (§3.3-3.4).
MULTI_RESOLUTION_DEFAULTS = {"w_content": 0.8, "w_int": 1.0, "d_threshold": 1.9,
                             "g_adv_threshold": 1.0}


class Config(AdversarialConfig):
    """DDcGAN hyperparameters; defaults are the authors' code values (models.md §3).

    With ``variant="multi_resolution"`` the fields of ``MULTI_RESOLUTION_DEFAULTS`` that are not
    given take that variant's code values (0.8, 1.0, 1.9, 1.0) instead of the ones below.

    Attributes:
        variant: ``same_resolution`` (IR and VI at one size) or ``multi_resolution`` (the IR /
            PET at 1/4 size, up-sampled inside G; D_i works at 1/4 size).
        adversarial: GAN objective on the D logits; ``bce`` = the code's -log D losses.
        d_norm: the Ds' normalisation; None = auto: the paper's ``batch``, ``layer`` for
            ``wgan_gp`` (see :class:`~fusion_models.models.base.AdversarialConfig`).
        lambda_gp: gradient-penalty weight, used only with ``wgan_gp``.
        w_content: weight of the content term in L_G (0.6 same / 0.8 multi resolution).
        w_int: weight of Fro(F_i - IR) in the content term (1/16 same: the code's "/16";
            1 multi resolution, where the term has 16x fewer pixels).
        w_grad: weight of L1(lap F - lap VI) in the content term (1.2).
        lr_g: generator learning rate before decay (2e-4).
        lr_d: discriminators' learning rate before decay (2e-4).
        lr_decay_rate: factor of the continuous exponential decay (0.9).
        lr_decay_steps: optimiser steps per decay period; None (default) = the code's batches
            per epoch, as the training loop reports them (1000 when unknown).
        optimizer_g: ``rmsprop`` (TF1 semantics, the code's), ``adam`` or ``sgd``.
        optimizer_d: ``sgd`` (the code's), ``rmsprop`` (TF1 semantics) or ``adam``.
        clip_value: every parameter of the stepped network is clipped to [-clip, clip] after
            each step (8); None turns clipping off.
        d_steps: D updates of each D before the threshold loop (1).
        alternate: True: even batches train the Ds, odd ones G (the code); False: both phases
            on every batch.
        d_threshold: repeat a D's step while its loss exceeds this (1.7 same / 1.9 multi).
        g_adv_threshold: adversarial-only G steps while a D loss is below this (1.4 / 1.0).
        g_threshold: full G steps while L_G exceeds this (200).
        max_repeats: most steps of one D, or of G, per batch, first step included (20).
        bn_at_test: ``running`` (eval-mode BN, our default) or ``batch`` (the TF behaviour:
            each image normalised with its own statistics, independent of the batching).
        epochs: training epochs (1).
        batch_size: patches per batch (24).
        patch: training window side (84); a multiple of 4 for ``multi_resolution``. At least
            20 so D_i's 1/4 input survives its three stride-2 convs.
        stride: step between training windows (84: the stride of the authors' h5 is unknown).
    """

    variant: Literal["same_resolution", "multi_resolution"] = "same_resolution"
    adversarial: Literal["lsgan", "wgan_gp", "bce"] = "bce"
    lambda_gp: float = Field(10.0, ge=0)
    w_content: float = Field(0.6, ge=0)
    w_int: float = Field(1 / 16, ge=0)
    w_grad: float = Field(1.2, ge=0)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    lr_decay_rate: float = Field(0.9, gt=0, le=1)
    lr_decay_steps: int | None = Field(None, ge=1)
    optimizer_g: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    optimizer_d: Literal["sgd", "rmsprop", "adam"] = "sgd"
    clip_value: float | None = Field(8.0, gt=0)
    d_steps: int = Field(1, ge=1)
    alternate: bool = True
    d_threshold: float = 1.7
    g_adv_threshold: float = 1.4
    g_threshold: float = 200.0
    max_repeats: int = Field(20, ge=1)
    bn_at_test: Literal["running", "batch"] = "running"
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(24, ge=1)
    patch: int = Field(84, ge=20)
    stride: int = Field(84, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant") == "multi_resolution":
            return {**MULTI_RESOLUTION_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _check_patch(self) -> Config:
        if self.variant == "multi_resolution" and self.patch % 4:
            raise ValueError(f"multi_resolution needs patch % 4 == 0, got patch={self.patch}")
        return self


class Sources(NamedTuple):
    """What G and the losses see: ``vi`` (B, 1, H, W) and ``ir``: (B, 1, H, W) for the same
    resolution, (B, 1, H/4, W/4) for the multi-resolution variant (G input AND D_i / Fro
    target in both cases)."""

    vi: Tensor
    ir: Tensor


def _fro(x: Tensor) -> Tensor:
    """Batch mean of the per-image squared Frobenius norm (LOSS.py Fro_LOSS)."""
    return x.pow(2).sum(dim=(1, 2, 3)).mean()


def _l1(x: Tensor) -> Tensor:
    """Batch mean of the per-image sum of |x| (LOSS.py L1_LOSS)."""
    return x.abs().sum(dim=(1, 2, 3)).mean()


def _value(x: Tensor) -> float:
    """A scalar loss as a Python float (the schedule's threshold tests)."""
    return float(x.detach())


def _optimizer(kind: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    """The solver named by ``optimizer_g`` / ``optimizer_d`` (TF1 RMSProp, Adam or SGD)."""
    if kind == "rmsprop":
        return TFRMSprop(params, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


class DDcGAN(FusionModel):
    """DDcGAN (models.md §3): A = infrared / PET, B = visible / MRI, networks in [0, 1]."""

    name: ClassVar[str] = "ddcgan"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "unit"

    @property
    def data_dependent_steps(self) -> bool:
        """The threshold loops repeat steps while losses exceed thresholds."""
        return self.config.max_repeats > 1

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.multi_resolution = config.variant == "multi_resolution"
        self.generator = Generator(self.multi_resolution)
        self.d_v = Discriminator(config.patch, config.d_norm)
        self.d_i = Discriminator(config.patch // 4 if self.multi_resolution else config.patch,
                                 config.d_norm)
        # batch parity of the schedule and the solvers' shared global step, kept in checkpoints
        self.register_buffer("n_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_opt_steps", torch.zeros((), dtype=torch.long))
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """G_solver, G_GAN_solver (separate states, as in TF), D1_solver, D2_solver (§3.4)."""
        c, g = self.config, self.generator.parameters
        return {
            "g": _optimizer(c.optimizer_g, g(), c.lr_g),
            "g_adv": _optimizer(c.optimizer_g, g(), c.lr_g),
            "d_v": _optimizer(c.optimizer_d, self.d_v.parameters(), c.lr_d),
            "d_i": _optimizer(c.optimizer_d, self.d_i.parameters(), c.lr_d),
        }

    def patch_spec(self) -> PatchSpec:
        """``patch`` windows every ``stride``; input = label (§3.4)."""
        return PatchSpec(self.config.patch, self.config.patch, self.config.stride, "inclusive")

    def sources(self, a: Tensor, b: Tensor) -> Sources:
        """(IR/PET ``a``, VI/MRI ``b``) at full size -> :class:`Sources` of this variant."""
        return Sources(vi=b, ir=downsample_quarter(a) if self.multi_resolution else a)

    def loss_terms(self, src: Sources, fused: Tensor) -> dict[str, Tensor]:
        """Every loss of §3.3 for one fused (B, 1, H, W) batch (float32, graph kept)."""
        c = self.config
        fake_i = avg_pool_same(avg_pool_same(fused)) if self.multi_resolution else fused
        with self.autocast():
            t = {
                "loss_d_v": d_loss(self.d_v, src.vi, fused.detach(), c.adversarial, c.lambda_gp),
                "loss_d_i": d_loss(self.d_i, src.ir, fake_i.detach(), c.adversarial,
                                   c.lambda_gp),
                "loss_adv_v": g_adv_loss(self.d_v, fused, c.adversarial),
                "loss_adv_i": g_adv_loss(self.d_i, fake_i, c.adversarial),
            }
        t = {k: v.float() for k, v in t.items()}
        t["loss_int"] = _fro(fake_i - src.ir)
        t["loss_grad"] = _l1(laplacian8(fused) - laplacian8(src.vi))
        t["loss_adv"] = t["loss_adv_v"] + t["loss_adv_i"]
        t["loss_content"] = c.w_int * t["loss_int"] + c.w_grad * t["loss_grad"]
        t["loss_g"] = t["loss_adv"] + c.w_content * t["loss_content"]
        t["loss_d"] = t["loss_d_v"] + t["loss_d_i"]
        return t

    def _update(self, key: str, net: nn.Module, loss: Tensor) -> None:
        """One step of solver ``key`` at the decayed lr, then the weight clipping (§3.4)."""
        c, opt = self.config, self.optimizers[key]
        base = c.lr_g if key.startswith("g") else c.lr_d
        period = c.lr_decay_steps or self.steps_per_epoch or 1000
        lr = base * c.lr_decay_rate ** (int(self.n_opt_steps) / period)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.n_opt_steps += 1
        if c.clip_value is not None:
            with torch.no_grad():
                for p in net.parameters():
                    p.clamp_(-c.clip_value, c.clip_value)

    def _d_phase(self, src: Sources, steps: dict[str, int]) -> dict[str, Tensor]:
        """D_v then D_i: ``d_steps`` steps each, repeated while the loss > ``d_threshold``."""
        c = self.config
        with torch.no_grad(), self.autocast():
            fused = self.generator(src.vi, src.ir).float()
        for key, net in (("d_v", self.d_v), ("d_i", self.d_i)):
            while True:
                terms = self.loss_terms(src, fused)
                n, loss = steps[f"steps_{key}"], terms[f"loss_{key}"]
                if n >= c.d_steps and not (_value(loss) > c.d_threshold and n < c.max_repeats):
                    break
                self._update(key, net, loss)
                steps[f"steps_{key}"] += 1
        return terms

    def _g_phase(self, src: Sources, steps: dict[str, int]) -> dict[str, Tensor]:
        """One full G step; adversarial-only steps while a D loss < ``g_adv_threshold``; full
        steps while L_G > ``g_threshold``; at most ``max_repeats`` in all."""
        c, stage = self.config, "first"
        set_requires_grad(self.d_v, False)
        set_requires_grad(self.d_i, False)
        try:
            while True:
                with self.autocast():
                    fused = self.generator(src.vi, src.ir)
                terms = self.loss_terms(src, fused.float())
                n = steps["steps_g"]
                d_min = min(_value(terms["loss_d_v"]), _value(terms["loss_d_i"]))
                if stage == "adv" and not (d_min < c.g_adv_threshold and n < c.max_repeats):
                    stage = "full"
                if stage == "full" and not (_value(terms["loss_g"]) > c.g_threshold
                                            and n < c.max_repeats):
                    break
                adv = stage == "adv"
                self._update("g_adv" if adv else "g", self.generator,
                             terms["loss_adv" if adv else "loss_g"])
                steps["steps_g"] += 1
                stage = "adv" if stage == "first" else stage
        finally:
            set_requires_grad(self.d_v, True)
            set_requires_grad(self.d_i, True)
        return terms

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The D phase and/or the G phase of §3.4 on one batch (see ``alternate``).

        Args:
            batch: ``a`` (IR / PET), ``b`` (VI / MRI): (B, 1, patch, patch) in [0, 1].

        Returns:
            Detached scalars evaluated after the phase, as the code prints them: ``loss_g``,
            ``loss_d`` (= ``loss_d_v`` + ``loss_d_i``), ``loss_adv`` (``loss_adv_v`` +
            ``loss_adv_i``), ``loss_content``, ``loss_int``, ``loss_grad``; and the step
            counts ``steps_d_v``, ``steps_d_i``, ``steps_g`` of this batch.
        """
        src = self.sources(batch["a"], batch["b"])
        odd = bool(int(self.n_batches) % 2)
        self.n_batches += 1
        steps = {"steps_d_v": 0, "steps_d_i": 0, "steps_g": 0}
        if not (self.config.alternate and odd):
            terms = self._d_phase(src, steps)
        if not self.config.alternate or odd:
            terms = self._g_phase(src, steps)
        out = {k: v.detach() for k, v in terms.items()}
        out.update({k: torch.tensor(float(n), device=src.vi.device) for k, n in steps.items()})
        return out

    def inference_bn_stats(self) -> BNStats:
        """``image`` for ``bn_at_test="batch"`` (per-image statistics, §0.6), else running."""
        return "image" if self.config.bn_at_test == "batch" else "running"

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion in one pass.

        Args:
            a, b: (B, 1, H, W) infrared (PET) / visible (MRI) sources in [0, 1], both at full
                size; the multi-resolution variant down-samples ``a`` to 1/4 itself (after a
                reflect pad of H, W to multiples of 4).

        Returns:
            (B, 1, H, W) fused image in [0, 1].
        """
        h, w = a.shape[-2:]
        if self.multi_resolution:
            pad = (0, -w % 4, 0, -h % 4)
            a, b = (torch.nn.functional.pad(x, pad, mode="reflect") for x in (a, b))
        src = self.sources(a, b)
        with self.autocast():
            out = self.generator(src.vi, src.ir)
        return self.from_input_scale(out.float()[..., :h, :w])
