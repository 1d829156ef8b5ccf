"""The continuous-time VDM objective (Kingma et al. 2021): the negative ELBO, hence the DiffC rate.

Every DiffC step from ``t_{k-1}`` to ``t_k`` costs ``0.5 (SNR(t_k) - SNR(t_{k-1})) |x - x_hat|^2`` nats, the
discrete-time term of this bound; training on it trains the codec's rate directly.
"""

from __future__ import annotations

import math

import torch

from ..models.base import LinearSchedule, alpha_sigma


def diffusion_loss(
    eps_model, x: torch.Tensor, schedule: LinearSchedule, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image continuous-time diffusion loss in nats, ``0.5 g'(t) |eps - eps_hat|^2``.

    ``t`` is drawn with the low-discrepancy sampler of VDM (one uniform offset, evenly spaced), which cuts the
    variance of the estimate at no cost.
    """
    b = x.shape[0]
    u0 = torch.rand((), generator=generator)
    t = torch.remainder(u0 + torch.arange(b) / b, 1.0).to(x.device)
    gamma = schedule.gamma(t)
    a, s = alpha_sigma(gamma)
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    z = a.view(-1, 1, 1, 1) * x + s.view(-1, 1, 1, 1) * eps
    eps_hat = eps_model(z, -gamma)
    sq = (eps - eps_hat).pow(2).flatten(1).sum(1)
    return 0.5 * schedule.dgamma_dt(t) * sq


def prior_loss(x: torch.Tensor, schedule: LinearSchedule) -> torch.Tensor:
    """Per-image ``KL(q(z_1 | x) || N(0, I))`` in nats."""
    a, s = alpha_sigma(torch.tensor(schedule.gamma_max))
    var = s**2
    kl = 0.5 * (var + (a * x) ** 2 - torch.log(var) - 1.0)
    return kl.flatten(1).sum(1)


def reconstruction_loss(x: torch.Tensor, schedule: LinearSchedule, generator=None) -> torch.Tensor:
    """Per-image ``-log p(x | z_0)`` in nats for 8-bit data, with VDM's factorised discretised decoder."""
    gamma0 = torch.tensor(schedule.gamma_min)
    a, s = alpha_sigma(gamma0)
    eps = torch.randn(x.shape, generator=generator).to(x.device)
    z0_rescaled = x + (s / a) * eps
    levels = torch.linspace(-1.0, 1.0, 256, device=x.device)
    var = (s / a) ** 2
    logits = -0.5 * (z0_rescaled.unsqueeze(-1) - levels) ** 2 / var
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    idx = torch.round((x + 1.0) * 127.5).long().clamp(0, 255).unsqueeze(-1)
    return -logp.gather(-1, idx).squeeze(-1).flatten(1).sum(1)


def nats_to_bpd(nats: torch.Tensor, dims: int) -> torch.Tensor:
    return nats / (dims * math.log(2.0))
