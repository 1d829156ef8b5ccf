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
