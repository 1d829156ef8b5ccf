"""Gaussian diffusion step algebra in log-SNR terms (variance preserving).

For ``lambda_t < lambda_s`` (``s`` less noisy), ``q(z_s | z_t, x) = N(c_z z_t + c_x x, var I)``: the DiffC
sender's target with the true ``x``, the receiver's prior with ``x_hat``; both share ``var``, so the
normalised target is ``N(d, I)`` with ``d = c_x (x - x_hat) / sqrt(var)`` and
``|d|^2 / 2 = (SNR(s) - SNR(t)) |x - x_hat|^2 / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...models.base import map_in_pieces


@dataclass(frozen=True)
class StepCoefficients:
    c_z: torch.Tensor  # (B, 1, 1, 1)
    c_x: torch.Tensor
    std: torch.Tensor


def alpha_sigma_of_logsnr(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a = sqrt(sigmoid(lambda))``, ``s = sqrt(sigmoid(-lambda))``."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def step_coefficients(logsnr_t: torch.Tensor, logsnr_s: torch.Tensor) -> StepCoefficients:
    """Coefficients of ``q(z_s | z_t, x)`` per image, computed in float64 for stability at high SNR."""
    lt, ls = logsnr_t.double(), logsnr_s.double()
    a_t, s_t = alpha_sigma_of_logsnr(lt)
    a_s, s_s = alpha_sigma_of_logsnr(ls)
    var_ts = -torch.expm1(F.softplus(-ls) - F.softplus(-lt))  # sigma^2_{t|s} = 1 - a_t^2 / a_s^2
    c_z = (a_t / a_s) * s_s**2 / s_t**2
    c_x = a_s * var_ts / s_t**2
    std = (var_ts * s_s**2 / s_t**2).sqrt()

    def shape(v: torch.Tensor) -> torch.Tensor:
        return v.float().view(-1, 1, 1, 1)

    return StepCoefficients(shape(c_z), shape(c_x), shape(std))


def step_mean_plus_noise(
    c: StepCoefficients, z: torch.Tensor, x_hat: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``c_z z + c_x x_hat + std noise``: the next latent, where ``noise`` is the channel's sample (the codec's
    chain, both sides) or fresh noise (ancestral reconstruction). The one definition of the update, computed
    in pieces (:func:`~diffc_pipeline.models.base.map_in_pieces`) so a 12 MP image holds no whole-image
    temporaries."""

    def update(zp: torch.Tensor, xp: torch.Tensor, up: torch.Tensor, cz, cx, sd) -> torch.Tensor:
        return cz * zp + cx * xp + sd * up

    return map_in_pieces(update, (z, x_hat, noise), (c.c_z.view(-1), c.c_x.view(-1), c.std.view(-1)))


def normalised_target(c: StepCoefficients, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``d = c_x (x - x_hat) / std``: the sender's target in noise units (see the module docstring)."""

    def target(xp: torch.Tensor, hp: torch.Tensor, cx, sd) -> torch.Tensor:
        return cx * (xp - hp) / sd

    return map_in_pieces(target, (x, x_hat), (c.c_x.view(-1), c.std.view(-1)))
