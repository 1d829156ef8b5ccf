"""Receiver-side reconstruction from the last received ``z`` at log-SNR ``lambda_k``.

* ``denoise``: the posterior mean ``x_hat(z)`` (MSE-optimal, blurry).
* ``flow`` (DiffC-F): the probability-flow ODE from ``lambda_k`` to the model's least noisy level, solved with
  DDIM steps uniform in log-SNR; deterministic. For Gaussian data it halves DiffC-A's distortion at high rate.
* ``ancestral`` (DiffC-A): ancestral sampling over the same grid, seeded from the image's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ...errors import InvalidInputError
from ...models.base import DiffusionModel, predict_x
from . import prng
from .steps import alpha_sigma_of_logsnr, step_coefficients

Method = Literal["flow", "ancestral", "denoise"]
METHODS: tuple[str, ...] = ("flow", "ancestral", "denoise")


def denoise(model: DiffusionModel, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """The posterior mean ``x_hat(z)``: :func:`~diffc_pipeline.models.base.predict_x`."""
    return predict_x(model, z, logsnr)


def reconstruct(
    model: DiffusionModel,
    z: torch.Tensor,
    logsnr: torch.Tensor,
    method: str,
    steps: int,
    seeds: Sequence[int],
    logsnr_end: float,
) -> torch.Tensor:
    """Reconstruct ``x`` from ``z`` at per-image ``logsnr``; returns floats in the data scale."""
    if method == "denoise":
        return denoise(model, z, logsnr)
    if method not in METHODS:
        raise InvalidInputError(f"unknown reconstruction method {method!r}; choose one of {', '.join(METHODS)}")
    if steps < 1:
        raise InvalidInputError(f"reconstruction needs at least one step, got {steps}")
    end = torch.full_like(logsnr, logsnr_end)
    end = torch.maximum(end, logsnr)
    for i in range(steps):
        lam_t = logsnr + (end - logsnr) * (i / steps)
        lam_s = logsnr + (end - logsnr) * ((i + 1) / steps)
        x_hat = denoise(model, z, lam_t)
        if method == "flow":
            a_t, s_t = alpha_sigma_of_logsnr(lam_t.double())
            a_s, s_s = alpha_sigma_of_logsnr(lam_s.double())
            eps = (z.double() - a_t.view(-1, 1, 1, 1) * x_hat.double()) / s_t.view(-1, 1, 1, 1)
            z = (a_s.view(-1, 1, 1, 1) * x_hat.double() + s_s.view(-1, 1, 1, 1) * eps).float()
        else:
            c = step_coefficients(lam_t, lam_s)
            noise = torch.from_numpy(
                np.stack([prng.normals(seed, i, prng.ANCESTRAL, tuple(z.shape[1:])) for seed in seeds])
            )
            z = c.c_z * z + c.c_x * x_hat + c.std * noise
    a_end, _ = alpha_sigma_of_logsnr(end.double())
    x = z.double() / a_end.view(-1, 1, 1, 1)
    if getattr(model, "clip_denoised", True):
        x = x.clamp(-1.0, 1.0)
    return x.float()
