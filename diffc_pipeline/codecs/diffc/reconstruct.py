"""Receiver-side reconstruction from the last received ``z`` at log-SNR ``lambda_k``.

* ``denoise``: the posterior mean ``x_hat(z)`` (MSE-optimal, blurry).
* ``flow`` (DiffC-F): the probability-flow ODE from ``lambda_k`` to the model's least noisy level, solved with
  DDIM steps uniform in log-SNR; deterministic. For Gaussian data it halves DiffC-A's distortion at high rate.
* ``ancestral`` (DiffC-A): ancestral sampling over the same grid, seeded from the image's seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...errors import InvalidInputError
from ...models.base import DiffusionModel, map_in_pieces, predict_x
from . import prng
from .steps import alpha_sigma_of_logsnr, step_coefficients, step_mean_plus_noise

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
    clip = getattr(model, "clip_denoised", True)
    for i in range(steps):
        lam_t = logsnr + (end - logsnr) * (i / steps)
        lam_s = logsnr + (end - logsnr) * ((i + 1) / steps)
        x_hat = denoise(model, z, lam_t)
        if method == "flow":
            a_t, s_t = alpha_sigma_of_logsnr(lam_t.double())
            a_s, s_s = alpha_sigma_of_logsnr(lam_s.double())
            z = map_in_pieces(_ddim_step, (z, x_hat), (a_t, s_t, a_s, s_s))
        else:
            noise = torch.from_numpy(
                np.stack([prng.normals(seed, i, prng.ANCESTRAL, tuple(z.shape[1:])) for seed in seeds])
            )
            z = step_mean_plus_noise(step_coefficients(lam_t, lam_s), z, x_hat, noise)
    a_end, _ = alpha_sigma_of_logsnr(end.double())

    def data_scale(zp: torch.Tensor, ap: torch.Tensor) -> torch.Tensor:
        x = zp.double() / ap
        return x.clamp(-1.0, 1.0) if clip else x

    return map_in_pieces(data_scale, (z,), (a_end,))


def _ddim_step(
    z: torch.Tensor, x_hat: torch.Tensor, a_t: torch.Tensor, s_t: torch.Tensor, a_s: torch.Tensor, s_s: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (the probability-flow ODE's Euler step in log-SNR), in float64."""
    eps = (z.double() - a_t * x_hat.double()) / s_t
    return a_s * x_hat.double() + s_s * eps
