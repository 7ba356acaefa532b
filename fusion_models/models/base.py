"""The base every fusion model derives from (one level below ``nn.Module``).

A model owns its networks, its optimisers and its own training step (it does its own D/G
alternation), as the field's GAN methods need (style.md 1.6: no framework in the way).

Value ranges: the training loop and ``fuse`` speak [0, 1]; each model declares the range its
networks were designed for (``input_scale``: ``pm1`` = [-1, 1] for the Ma-group TF repos and
UFGAN, ``unit`` = [0, 1] for DDcGAN, ``raw`` = 0..255 for DenseFuse, models.md §0.1-0.3) and
the patch store hands training batches already in that range.

Inference contract (every model, enforced here): :meth:`FusionModel.fuse` runs the model's
``_fuse`` under ``no_grad`` inside :func:`eval_context`, so its output does not depend on the
caller's ``train()``/``eval()``, it changes no buffer (BN running statistics, spectral-norm
vectors) and every module's train/eval flag is restored afterwards. A model whose Config asks
for the authors' test-time BN (``inference_bn_stats() == "image"``) normalises each image with
its own statistics, so one image fuses the same alone or in any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusion_models.data.patches import PatchSpec

Scale = Literal["pm1", "unit", "raw"]
#: the epsilon the TF1 repos' ``contrib.layers.batch_norm(epsilon=1e-5)`` really ran with: it
#: took the fused kernel, and ``tf.nn.fused_batch_norm`` raises any epsilon below 1.001e-5 to
#: 1.001e-5 (a cuDNN limit) on every device
TF1_BN_EPS = 1.001e-5
BNStats = Literal["running", "image", "image_fresh"]
DNorm = Literal["batch", "layer", "none"]


class FusionConfig(BaseModel):
    """Base of every model's Config: unknown keys are rejected (``extra="forbid"``).

    Each model's Config declares EVERY sweepable field with its paper default, including
    ``epochs``, ``batch_size``, ``patch`` and ``stride`` (the training loop reads them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class AdversarialConfig(FusionConfig):
    """Base of the Configs of GAN models: ``adversarial`` (declared by each model with its
    paper's default) and the discriminator normalisation ``d_norm`` that goes with it.

    Attributes:
        d_norm: normalisation layers of the discriminator(s): ``batch`` (the papers' BN),
            ``layer`` (``nn.GroupNorm(1, C)``: each sample over C, H, W) or ``none``. None (the
            default) = auto: ``layer`` for ``adversarial="wgan_gp"`` (Gulrajani et al. 2017: a
            gradient penalty through batch statistics is ill-defined, each sample's critic
            gradient would depend on the rest of the batch), the paper's ``batch`` otherwise.
            The resolved value is stored (checkpoints record it); ``batch`` with ``wgan_gp``
            is rejected.
    """

    d_norm: DNorm | None = None

    @model_validator(mode="before")
    @classmethod
    def _auto_d_norm(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("d_norm") is None:
            adversarial = data.get("adversarial", cls.model_fields["adversarial"].default)
            return {**data, "d_norm": "layer" if adversarial == "wgan_gp" else "batch"}
        return data

    @model_validator(mode="after")
    def _no_batch_norm_critic(self) -> AdversarialConfig:
        if self.adversarial == "wgan_gp" and self.d_norm == "batch":
            raise ValueError(
                "d_norm='batch' cannot go with adversarial='wgan_gp': the gradient penalty "
                "through batch statistics is ill-defined (Gulrajani et al. 2017); use "
                "d_norm='layer' (the wgan_gp default) or 'none'")
        return self


def norm_layer(kind: DNorm, channels: int, eps: float = 1e-5, momentum: float = 0.1
               ) -> nn.Module:
    """A discriminator's normalisation for (B, channels, H, W) maps (see ``d_norm``):
    ``BatchNorm2d(eps, momentum)``, ``GroupNorm(1, channels, eps)`` or ``Identity``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if kind == "layer":
        return nn.GroupNorm(1, channels, eps=eps)
    return nn.Identity()


def _per_image_bn(bn: _BatchNorm, inputs: tuple[Tensor, ...], _: Tensor) -> Tensor:
    """Forward hook: BN's output recomputed with each sample's own per-channel mean and
    (biased) variance over its spatial axes, BN's affine weight/bias and eps; float32 stats.
    Running buffers are neither read nor written (= BN on a batch of one, per image)."""
    x = inputs[0]
    return F.instance_norm(x.float(), weight=bn.weight, bias=bn.bias, eps=bn.eps).to(x.dtype)


def _per_image_fresh_bn(bn: _BatchNorm, inputs: tuple[Tensor, ...], _: Tensor) -> Tensor:
    """As :func:`_per_image_bn` with a freshly created BN's affine (weight 1, bias 0): the
    authors' PMGI test graphs rebuild BN and never load its trained variables (models.md §5.4)."""
    x = inputs[0]
    return F.instance_norm(x.float(), eps=bn.eps).to(x.dtype)


@contextmanager
def eval_context(net: nn.Module, bn: BNStats = "running") -> Iterator[None]:
    """Inference mode for ``net``, restoring every module's train/eval flag afterwards.

    ``net.eval()``: dropout off, spectral norm uses its stored u, v, BN its running statistics.
    With ``bn="image"`` every BN layer instead normalises each sample with its own statistics
    (what the authors' TF test graphs did with one image per run, models.md §0.6), so outputs
    do not depend on what else is in the batch; running statistics stay untouched.
    ``bn="image_fresh"`` does the same with weight 1 and bias 0 (a freshly built BN layer, as
    PMGI's test_one_image.py, which loads only the conv variables).
    """
    modes = [(m, m.training) for m in net.modules()]
    hooks = []
    net.eval()
    if bn != "running":
        hook = _per_image_bn if bn == "image" else _per_image_fresh_bn
        hooks = [m.register_forward_hook(hook) for m in net.modules()
                 if isinstance(m, _BatchNorm)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in modes:
            m.training = mode


def minmax_stretch(x: Tensor) -> Tensor:
    """Each image of (B, C, H, W) stretched to [0, 1] over its own min and max (a flat image
    stays as it is): what scipy.misc.imsave did to every float array the TF repos saved
    (models.md §0.5), i.e. their published fused images."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


class FusionModel(nn.Module):
    """A fusion model: networks + optimisers + ``training_step`` + ``fuse``.

    Subclasses set ``name``, ``Config`` and ``input_scale``, build their networks in
    ``__init__`` and finish it with ``self.optimizers = self.configure_optimizers()``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[FusionConfig]]
    input_scale: ClassVar[Scale] = "pm1"

    @property
    def data_dependent_steps(self) -> bool:
        """True when the number of optimiser steps per batch depends on loss values (then
        ranks of a data-parallel run would disagree): such models train on one worker."""
        return False

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.amp_dtype: torch.dtype | None = None  # set by the training loop (bf16 on CUDA)
        # Training batches per epoch, set by the training loop (schedules defined per epoch).
        self.steps_per_epoch: int | None = None

    # -- what every model implements -------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers, e.g. ``{"g": Adam(G), "d": Adam(D)}``."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One training step on a patch batch, optimiser steps included.

        Args:
            batch: ``a``, ``b`` (B, 1, patch, patch) and ``a_label``, ``b_label``
                (B, 1, label, label), already in ``input_scale``; on the model's device.

        Returns:
            Every loss term as a detached scalar tensor, keys like ``loss_g``, ``loss_d``,
            ``loss_adv``, ``loss_grad`` (the loop logs them as ``train/<key>``).
        """
        raise NotImplementedError

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """The model's fusion (its own padding rule); :meth:`fuse` supplies no_grad and the
        eval context. Same arguments and result as :meth:`fuse`."""
        raise NotImplementedError

    def inference_bn_stats(self) -> BNStats:
        """BN statistics at inference: ``running`` (default) or ``image`` (per image)."""
        return "running"

    # -- the inference contract (not overridden) ---------------------------------------------
    def __init_subclass__(cls) -> None:
        """A subclass that still defines ``fuse`` has it adopted as its ``_fuse``, so no
        model can bypass the contract of :meth:`FusionModel.fuse`."""
        super().__init_subclass__()
        own = cls.__dict__.get("fuse")
        if own is None or own is FusionModel.fuse:
            return
        if "_fuse" in cls.__dict__:
            raise TypeError(f"{cls.__name__} defines both fuse and _fuse; implement _fuse only")
        cls._fuse = own
        cls.fuse = FusionModel.fuse

    def fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Fuse whole images of any size, under no_grad, in eval mode whatever the caller's
        mode (flags restored, no buffer changed), BN as :meth:`inference_bn_stats` says.

        Args:
            a, b: (B, 1, H, W) grey sources in [0, 1] (A = ir / functional / near focus).

        Returns:
            (B, 1, H, W) fused image in [0, 1]; each image's result does not depend on the
            others in the batch.
        """
        with torch.no_grad(), eval_context(self, self.inference_bn_stats()):
            return self._fuse(a, b)

    def patch_spec(self) -> PatchSpec:
        """The training windows for this configuration (patch, label, stride, end rule)."""
        raise NotImplementedError

    # -- shared plumbing --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for forward passes when the loop asked for it (CUDA bf16)."""
        if self.amp_dtype is None:
            ctx = nullcontext()
        else:
            ctx = torch.autocast(self.device.type, dtype=self.amp_dtype)
        with ctx:
            yield

    def to_input_scale(self, x01: Tensor) -> Tensor:
        """[0, 1] -> this model's network range."""
        if self.input_scale == "pm1":
            return x01 * 2.0 - 1.0
        return x01 * 255.0 if self.input_scale == "raw" else x01

    def from_input_scale(self, y: Tensor) -> Tensor:
        """This model's network range -> [0, 1], clamped."""
        if self.input_scale == "pm1":
            y = (y + 1.0) / 2.0
        elif self.input_scale == "raw":
            y = y / 255.0
        return y.clamp(0.0, 1.0)

    def optimizer_step(self, name: str, loss: Tensor) -> None:
        """Zero the named optimiser's gradients, back-propagate ``loss``, step."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def discriminator_steps(self, loss_fn: Callable[[], Tensor], steps: int) -> Tensor:
        """``steps`` updates of the ``"d"`` optimiser on ``loss_fn()`` (computed under
        autocast each time); returns the mean D loss as a detached float32 scalar."""
        total: Tensor | None = None
        for _ in range(steps):
            with self.autocast():
                loss = loss_fn()
            self.optimizer_step("d", loss)
            value = loss.detach().float()
            total = value if total is None else total + value
        return total / steps

    def adversarial_content_step(self, loss_adv: Tensor, loss_int: Tensor, loss_grad: Tensor,
                                 loss_d: Tensor) -> dict[str, Tensor]:
        """One G step on the Ma-group objective (FusionGAN, MFF-GAN):
        ``L_G = w_adv * adv + w_content * (int + w_grad * grad)``; the config must have those
        three weights. Returns the detached scalar terms ``loss_g, loss_d, loss_adv,
        loss_content, loss_int, loss_grad``."""
        cfg = self.config
        loss_content = loss_int + cfg.w_grad * loss_grad
        loss_g = cfg.w_adv * loss_adv + cfg.w_content * loss_content
        self.optimizer_step("g", loss_g)
        terms = {"loss_g": loss_g, "loss_d": loss_d, "loss_adv": loss_adv,
                 "loss_content": loss_content, "loss_int": loss_int, "loss_grad": loss_grad}
        return {k: v.detach() for k, v in terms.items()}

    def checkpoint(self, epoch: int) -> dict:
        """Self-describing checkpoint: loads with ``torch.load(weights_only=True)``."""
        return {
            "model": self.name,
            "params": self.config.model_dump(mode="json"),
            "state_dict": self.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "epoch": int(epoch),
        }

    def load_checkpoint_state(self, ckpt: dict, with_optimizers: bool = True) -> None:
        """Restore weights (and optimiser state) from :meth:`checkpoint`'s dict."""
        self.load_state_dict(ckpt["state_dict"])
        if with_optimizers:
            for key, state in ckpt.get("optimizers", {}).items():
                self.optimizers[key].load_state_dict(state)


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    """Freeze/unfreeze a network (e.g. D during the G step)."""
    for p in net.parameters():
        p.requires_grad_(flag)
