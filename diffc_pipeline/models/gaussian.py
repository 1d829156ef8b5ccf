"""An analytic diffusion model: the data are Gaussian with a known per-channel mean and variance.

``E[x | z_t]`` is exact, so the codec can be checked against the theory of the DiffC paper (e.g. ancestral
reconstruction distortion ``2 s^2`` and flow distortion ``2 (1 - sqrt(1 - s^2))`` for unit-variance data) with
the real channel, and the pipeline can be tested end to end with a model that needs no weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from .base import LinearSchedule, ModelIdentity


class GaussianModel:
    """``x ~ N(mean_c, var_c)`` i.i.d. per pixel of channel ``c``."""

    pad_multiple = 1

    def __init__(
        self,
        mean: Sequence[float],
        var: Sequence[float],
        clip_denoised: bool = False,
        name: str = "gaussian",
        schedule: LinearSchedule | None = None,
    ) -> None:
        if len(mean) != len(var) or any(v <= 0 for v in var):
            raise ValueError("mean and var need one entry per channel, var > 0")
        self.mean = torch.tensor(list(mean), dtype=torch.float64).view(1, -1, 1, 1)
        self.var = torch.tensor(list(var), dtype=torch.float64).view(1, -1, 1, 1)
        self.channels = len(mean)
        self.clip_denoised = clip_denoised
        self.schedule = schedule or LinearSchedule()
        params = {
            "mean": list(map(float, mean)),
            "var": list(map(float, var)),
            "clip": clip_denoised,
            "schedule": self.schedule.to_dict(),
        }
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
        self.identity = ModelIdentity(name=name, sha256=digest)

    @classmethod
    def unit(cls, channels: int = 3) -> GaussianModel:
        """Zero-mean unit-variance data: the setting of the paper's closed-form distortions."""
        return cls([0.0] * channels, [1.0] * channels, clip_denoised=False, name="gaussian-unit")

    @classmethod
    def default(cls) -> GaussianModel:
        """Rough per-channel statistics of natural RGB images in ``[-1, 1]``; clipped like an image model."""
        return cls([-0.05, -0.1, -0.2], [0.28, 0.27, 0.3], clip_denoised=True, name="gaussian-rgb")

    def posterior_mean(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        lam = logsnr.double().view(-1, 1, 1, 1)
        a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        a = a2.sqrt()
        return self.mean + self.var * a / (a2 * self.var + s2) * (z.double() - a * self.mean)

    def predict_eps(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        lam = logsnr.double().view(-1, 1, 1, 1)
        a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        return ((z.double() - a * self.posterior_mean(z, logsnr)) / s).to(z.dtype)
