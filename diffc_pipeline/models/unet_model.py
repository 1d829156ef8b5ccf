"""The built-in U-Net wrapped as a :class:`~diffc_pipeline.models.base.DiffusionModel`."""

from __future__ import annotations

import torch

from .base import LinearSchedule, ModelIdentity
from .tiling import Tiling, evaluate_tiled
from .unet import UNet, UNetConfig


class UNetDiffusionModel:
    """A trained :class:`UNet` plus its noise schedule and identity; inference only.

    Large images are evaluated in tiles (:mod:`.tiling`), so memory stays bounded whatever the image size.
    """

    def __init__(
        self,
        net: UNet,
        schedule: LinearSchedule,
        identity: ModelIdentity,
        device: str | torch.device = "cpu",
        tiling: Tiling | None = None,
    ) -> None:
        self.net = net.to(device).eval().float()
        self.schedule = schedule
        self.identity = identity
        self.device = torch.device(device)
        self.channels = net.config.channels
        self.pad_multiple = net.config.pad_multiple
        self.config: UNetConfig = net.config
        self.tiling = tiling or Tiling()

    @torch.inference_mode()
    def predict_eps(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        out = evaluate_tiled(
            self.net, z.to(self.device, torch.float32), logsnr.to(self.device, torch.float32), self.tiling
        )
        return out.to(z.device)
