"""PMGI: proportional maintenance of gradient and intensity, one network for several tasks.

Zhang, Xu, Xiao, Guo, Ma, "Rethinking the Image Fusion: A Fast Unified Image Fusion Network
based on Proportional Maintenance of Gradient and Intensity", AAAI 2020. Authors' TF1 code:
HaoZhang1018/PMGI_AAAI2020 (Code_PMGI/<task>/model.py, main.py, test_one_image.py).
Spec: models.md §5. Not adversarial: the authors' D code is commented out, so there is no D and
no ``adversarial`` field.

- Network (§5.1): :class:`~fusion_models.models.mffgan.TwoPathGenerator` (MFF-GAN's topology)
  with 3-channel path inputs [A, A, B] and [B, B, A], BN (TF decay 0.9 -> momentum 0.1, §0.7;
  eps 1.001e-5, what TF1 ran for the code's 1e-5; affine) + LeakyReLU 0.2 after every conv but
  the last, 'SAME' convs, tanh.
- Loss (§5.2): L = w_content * [w_int_a*mse(F, A) + w_int_b*mse(F, B)
  + w_grad_a*mse(lap F, lap A) + w_grad_b*mse(lap F, lap B)], lap = 4-neighbour Laplacian with
  zero 'SAME' padding, w_content = 100.
- Task presets (§5.2-5.3): ``task`` selects the table's weights, patch/label/stride and epochs.
  :class:`Config` fills them from :data:`PRESETS` for every field the caller did NOT set,
  so ``Config(task="medical", w_grad_b=10)`` keeps w_grad_b=10 and takes the rest of the
  medical row. The declared field defaults are the ``ivif`` row (the default task).
- Training (§5.3): the network is FED THE LABEL CROP (``a_label``, ``b_label``: 120 of 132, or
  60 of 72 for mff); batch 32, Adam 1e-4, data in [-1, 1].
- Inference (§5.4): whole image, no padding.

Deliberate deviations from the authors' code:
- BN at inference: the authors' test graphs run BN with each test image's own statistics
  (§0.6). We default to the running statistics (``bn_eval_stats="running"``): ``fuse`` is then
  deterministic and independent of the batch it is called with, and a validation score does not
  depend on how images are batched. ``bn_eval_stats="image"`` normalises each image of the
  batch with its own statistics (deterministic, independent of the batching; the base class's
  per-image BN, see ``inference_bn_stats``) with the trained BN weight/bias;
  ``"image_fresh"`` also drops those (weight 1, bias 0), which is exactly the authors' test
  graph: their test_one_image.py rebuilds BN fresh and loads only the conv variables.
- ``task="pan"`` is the Pan_shapening folder's network and loss (no BN, A = the "ir" input,
  B = the "vi" input); the pan data layout, the per-band fusion, the authors' post-network
  histogram matching and a training function are in :mod:`fusion_models.pansharpen_pmgi`.
- ``fuse`` returns [0, 1] clamped, without the per-image min-max stretch of scipy imsave (§0.5)
  unless ``output_stretch`` (set by the imported released checkpoints).
- ``epochs`` is each main.py's training flag; the authors' test scripts then load an earlier
  checkpoint (e.g. IR_VI ``CGAN.model-1``, mff ``CGAN.model-1``, §5.3): checkpoint selection is
  the training loop's job (validation metric), not a model default.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from fusion_models.data.patches import PatchSpec
from fusion_models.models.base import BNStats, FusionConfig, FusionModel, minmax_stretch
from fusion_models.models.losses import laplacian4
from fusion_models.models.mffgan import TwoPathGenerator

logger = logging.getLogger(__name__)

Task = Literal["ivif", "medical", "mef", "mff", "pan"]

#: Per-task defaults (models.md §5.2 weight table, §5.3 training table). A = the code's "ir"
#: input (infrared / PET intensity / exposure 1 / source 1), B = its "vi" input.
PRESETS: dict[str, dict[str, float | int | bool]] = {
    "ivif": {"w_int_a": 1.0, "w_int_b": 0.3, "w_grad_a": 4.0, "w_grad_b": 5.0,
             "patch": 132, "label": 120, "stride": 14, "epochs": 15},
    "medical": {"w_int_a": 1.0, "w_int_b": 1.0, "w_grad_a": 0.0, "w_grad_b": 300.0,
                "patch": 132, "label": 120, "stride": 14, "epochs": 35},
    "mef": {"w_int_a": 1.5, "w_int_b": 1.5, "w_grad_a": 16.0, "w_grad_b": 16.0,
            "patch": 132, "label": 120, "stride": 14, "epochs": 30},
    "mff": {"w_int_a": 2.0, "w_int_b": 2.0, "w_grad_a": 3.0, "w_grad_b": 3.0,
            "patch": 72, "label": 60, "stride": 6, "epochs": 15},
    # Pan_shapening/*/model.py: 100 * [mse(F, A) + 2 mse(lap F, lap B)], no BN anywhere
    "pan": {"w_int_a": 1.0, "w_int_b": 0.0, "w_grad_a": 0.0, "w_grad_b": 2.0,
            "patch": 80, "label": 80, "stride": 7, "epochs": 10, "batch_norm": False},
}


class Config(FusionConfig):
    """PMGI hyperparameters; fields a caller leaves out come from ``PRESETS[task]``.

    Attributes:
        task: which of the authors' task folders supplies the defaults (ivif, medical, mef,
            mff, pan = Pan_shapening); the declared defaults below are the ivif row.
        w_content: overall factor of the loss (code: 100).
        w_int_a: beta_a, intensity weight of A (ivif 1, medical 1, mef 1.5, mff 2).
        w_int_b: beta_b, intensity weight of B (ivif 0.3, medical 1, mef 1.5, mff 2).
        w_grad_a: gamma_a, Laplacian-gradient weight of A (ivif 4, medical 0, mef 16, mff 3).
        w_grad_b: gamma_b, Laplacian-gradient weight of B (ivif 5, medical 300, mef 16, mff 3).
        lr_g: Adam learning rate of the network (1e-4).
        channels: feature maps per conv (16).
        init_std: std of the truncated-normal weight init, cut at 2 std (1e-3).
        batch_norm: BN after every conv but the last (True; the authors' pansharpening
            variant has none).
        bn_momentum: PyTorch BN momentum; TF decay 0.9 -> 0.1 (§0.7).
        bn_eval_stats: BN statistics in eval mode: ``running`` (deterministic, our default),
            ``image`` (each image's own statistics, §0.6) or ``image_fresh`` (each image's own
            statistics with weight 1, bias 0: exactly the authors' test_one_image.py, which
            rebuilds BN and loads only the conv variables, §5.4; the imported released
            checkpoints use it).
        epochs: training epochs (ivif 15, medical 35, mef 30, mff 15).
        batch_size: patches per batch (32).
        patch: input window side (132; mff 72); only its centred label crop is used.
        label: side of the centred label crop the network is fed (120; mff 60).
        stride: step between training windows (14; mff 6).
        output_stretch: stretch each fused image to [0, 1] over its own min/max, as the
            authors' saved (published) images were by scipy.misc.imsave (§0.5); False = the
            generator's output as it is (our default). The imported released checkpoints
            set it, so their rows show the authors' published images.
    """

    task: Task = "ivif"
    w_content: float = Field(100.0, ge=0)
    w_int_a: float = Field(1.0, ge=0)
    w_int_b: float = Field(0.3, ge=0)
    w_grad_a: float = Field(4.0, ge=0)
    w_grad_b: float = Field(5.0, ge=0)
    lr_g: float = Field(1e-4, gt=0)
    channels: int = Field(16, ge=1)
    init_std: float = Field(1e-3, gt=0)
    batch_norm: bool = True
    bn_momentum: float = Field(0.1, gt=0, le=1)
    bn_eval_stats: BNStats = "running"
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(32, ge=1)
    patch: int = Field(132, ge=1)
    label: int = Field(120, ge=1)
    stride: int = Field(14, ge=1)
    output_stretch: bool = False

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Fill the task's preset values for the fields the caller did not give."""
        if not isinstance(data, dict):
            return data
        preset = PRESETS.get(data.get("task", "ivif"))
        return data if preset is None else {**preset, **data}  # bad task: Literal error

    @model_validator(mode="after")
    def _centred_label(self) -> Config:
        if self.label > self.patch or (self.patch - self.label) % 2:
            raise ValueError(
                f"label ({self.label}) must be <= patch ({self.patch}) and centred "
                "(patch - label even)"
            )
        return self


def proportional_terms(fused: Tensor, a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """The four unweighted terms of §5.2 (per-pixel means).

    Args:
        fused, a, b: (B, 1, H, W) in [-1, 1].

    Returns:
        ``int_a`` = mse(F, A), ``int_b`` = mse(F, B), ``grad_a`` = mse(lap F, lap A),
        ``grad_b`` = mse(lap F, lap B), lap = 4-neighbour Laplacian, zero 'SAME' padding.
    """
    lap_f = laplacian4(fused)
    return {
        "int_a": F.mse_loss(fused, a),
        "int_b": F.mse_loss(fused, b),
        "grad_a": F.mse_loss(lap_f, laplacian4(a)),
        "grad_b": F.mse_loss(lap_f, laplacian4(b)),
    }


class PMGI(FusionModel):
    """PMGI (models.md §5): two-path network, proportional-maintenance loss, no discriminator."""

    name: ClassVar[str] = "pmgi"
    Config: ClassVar[type[FusionConfig]] = Config
    input_scale: ClassVar[Literal["pm1", "unit", "raw"]] = "pm1"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.config: Config = config
        self.generator = TwoPathGenerator(
            in_channels=3, channels=config.channels, init_std=config.init_std,
            batch_norm=config.batch_norm, bn_momentum=config.bn_momentum,
        )
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam with TF's defaults (betas 0.9/0.999, eps 1e-8)."""
        return {"g": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr_g)}

    def patch_spec(self) -> PatchSpec:
        """``patch`` windows every ``stride``, centred ``label`` crop (§5.3)."""
        cfg = self.config
        return PatchSpec(cfg.patch, cfg.label, cfg.stride, "inclusive")

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """(B, 1, H, W) x 2 in [-1, 1] -> fused (B, 1, H, W) in (-1, 1); paths [A,A,B], [B,B,A]."""
        return self.generator(torch.cat([a, a, b], dim=1), torch.cat([b, b, a], dim=1))

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One Adam step on the label crops (§5.2, §5.3).

        Args:
            batch: ``a_label``, ``b_label``: (B, 1, label, label) in [-1, 1] (the network is
                fed these crops; ``a`` and ``b`` are unused).

        Returns:
            Detached scalars ``loss_g`` (total), ``loss_int`` (w_int_a*int_a + w_int_b*int_b),
            ``loss_grad`` (w_grad_a*grad_a + w_grad_b*grad_b) and the unweighted
            ``loss_int_a``, ``loss_int_b``, ``loss_grad_a``, ``loss_grad_b``.
        """
        cfg = self.config
        a, b = batch["a_label"], batch["b_label"]
        with self.autocast():
            fused = self(a, b)
        t = proportional_terms(fused.float(), a, b)
        loss_int = cfg.w_int_a * t["int_a"] + cfg.w_int_b * t["int_b"]
        loss_grad = cfg.w_grad_a * t["grad_a"] + cfg.w_grad_b * t["grad_b"]
        loss_g = cfg.w_content * (loss_int + loss_grad)
        self.optimizer_step("g", loss_g)
        out = {"loss_g": loss_g, "loss_int": loss_int, "loss_grad": loss_grad}
        out.update({f"loss_{k}": v for k, v in t.items()})
        return {k: v.detach() for k, v in out.items()}

    def inference_bn_stats(self) -> BNStats:
        """``bn_eval_stats``: ``image`` = each image's own statistics (the authors' batch-of-one
        test graph, §0.6), ``image_fresh`` = the same with weight 1, bias 0 (their test graph
        exactly, §5.4), or the running statistics."""
        return self.config.bn_eval_stats

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        """Whole-image fusion, no padding (§5.4: 'SAME' convs keep any H, W).

        Args:
            a, b: (B, 1, H, W) sources in [0, 1].

        Returns:
            (B, 1, H, W) fused image in [0, 1].
        """
        xa, xb = self.to_input_scale(a), self.to_input_scale(b)
        with self.autocast():
            out = self(xa, xb)
        fused = self.from_input_scale(out.float())
        return minmax_stretch(fused) if self.config.output_stretch else fused
