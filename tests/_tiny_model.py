"""A tiny registered-for-the-test model: exercises the training loop in seconds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fusion_models.data.patches import PatchSpec
from fusion_models.models.base import FusionConfig, FusionModel


class TinyConfig(FusionConfig):
    """Attributes: lr, epochs, batch_size, patch, stride, nan_at_step (0: never)."""

    lr_g: float = Field(1e-2, gt=0)
    epochs: int = Field(2, gt=0)
    batch_size: int = Field(8, gt=0)
    patch: int = Field(32, gt=0)
    stride: int = Field(32, gt=0)
    nan_at_step: int = Field(0, ge=0)


class TinyFuse(FusionModel):
    """Two 3x3 convs on [a, b] learning to output max(a, b) (pm1 range)."""

    name = "tiny"
    Config = TinyConfig
    input_scale = "pm1"

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 1, 3, padding=1), nn.Tanh())
        self.steps = 0
        self.optimizers = self.configure_optimizers()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": torch.optim.Adam(self.net.parameters(), lr=self.config.lr_g)}

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.steps += 1
        with self.autocast():
            fused = self.net(torch.cat([batch["a"], batch["b"]], dim=1))
        loss = F.mse_loss(fused.float(), torch.maximum(batch["a"], batch["b"]))
        if self.config.nan_at_step and self.steps >= self.config.nan_at_step:
            loss = loss * float("nan")
        self.optimizers["g"].zero_grad()
        loss.backward()
        self.optimizers["g"].step()
        return {"loss_g": loss.detach()}

    def _fuse(self, a: Tensor, b: Tensor) -> Tensor:
        x = torch.cat([self.to_input_scale(a), self.to_input_scale(b)], dim=1)
        return self.from_input_scale(self.net(x))

    def patch_spec(self) -> PatchSpec:
        return PatchSpec(self.config.patch, self.config.patch, self.config.stride)
