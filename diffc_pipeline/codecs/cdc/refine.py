"""Encoder-side latent refinement: spend encode time to write a smaller stream for the same decoder.

A learned encoder ``g_a`` is amortised inference: one pass predicts latents that are good on average, not the
best ones for this image. Given the image, the encoder can instead *search* for the integer latents that
minimise the rate-distortion loss the model was trained on, ``bits / pixels + lambda_r 255^2 MSE(mean, x)``,
through the decoder it shares with the receiver. Nothing in the stream or the decoder changes: the refined
latents are entropy-coded exactly like ``g_a``'s, and any CDC decoder reads them.

The search is Stochastic Gumbel Annealing (Yang, Bamler & Mandt, "Improving Inference for Neural Image
Compression", NeurIPS 2020 - the CDC authors' group): continuous latents, each relaxed to a random soft choice
between its two nearest integers whose temperature anneals towards hard rounding, optimised with Adam from
``g_a``'s output. Rounding of ``y`` is around the predicted mean of its slice (in gain units), as the coder
rounds it, so the relaxed rate is the coder's rate. The paper's bits-back part is not used (it would change the
stream).

Measured (docs/cdc.md, *Encoder refinement*): on full-size photos the briefly trained encoder leaves a gap
worth closing (release 4, 2 CBSD68 photos, 100 steps: BD-rate -7.6% with the mean decoder, -12.5% with the
diffusion decoder), at ~0.34 s per step for a 481x321 photo on one core; at 64x64 about 5-7% of the rate.
"""

from __future__ import annotations

import math

import torch

from ...models.tiling import Tiling
from .model import CdcModel, gaussian_likelihood
from .tiles import PIXELS_PER_LATENT, analysis

# Adam's step on the latents (in their own units, ~1 per quantisation bin in gain units) and the annealing of
# the rounding temperature, 0.5 -> 0.5 e^-4 ~ 0.009 over the run: chosen on 8 Tiny ImageNet images and one
# photo (5e-3 moved the latents too little in 150 steps; 2e-2 gained at every step count tried).
LEARNING_RATE = 2e-2
TAU_START = 0.5
TAU_DECAY = 4.0
# The distortion's gradient goes through the synthesis at full resolution, whose saved activations cost ~0.8 GB
# per megapixel: it is computed on tiles of the latent grid (cores of TILE x TILE latent positions = 512 x 512
# pixels, each with HALO positions of context), so memory stays bounded at ~0.4 GB for any image size. The
# synthesis (four 5x5 stride-2 transposed convolutions, GDN is pointwise) sees about +-2.3 latent positions, so
# a halo of 4 reproduces the untiled values (tested); images up to 512 x 512 pixels are one tile.
TILE = 32
HALO = 4


def sga_round(v: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """A differentiable random soft rounding of ``v`` to ``floor(v)`` or ``floor(v) + 1`` (SGA).

    The weights of the two integers are a Gumbel-softmax sample at temperature ``tau`` with logits
    ``-atanh(distance) / tau``: the nearer integer is likelier, and as ``tau -> 0`` the sample becomes
    ``round(v)``.
    """
    low = torch.floor(v)
    distance = torch.stack([v - low, low + 1 - v], -1).clamp(1e-5, 1 - 1e-5)
    logits = -torch.atanh(distance) / tau
    u = torch.rand(logits.shape, generator=gen, dtype=v.dtype).clamp(1e-10, 1 - 1e-10)
    weights = torch.softmax((logits - torch.log(-torch.log(u))) / tau, -1)
    return low + weights[..., 1]


def refine_latents(
    net: CdcModel, x: torch.Tensor, height: int, width: int, rate: int, steps: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, z)`` for one padded image ``x (1, 3, H, W)`` in ``[-1, 1]``: ``g_a``'s latents after ``steps``
    steps of SGA on the rate-distortion loss of rate index ``rate``, the distortion taken on the image's own
    ``height x width`` pixels (not the padding). The caller rounds and codes them as usual.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y0 = analysis(net, x)
        z0 = net.h_a(y0)
    y = y0.clone().requires_grad_(True)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=LEARNING_RATE)
    lam = net.cfg.lambdas[rate]
    s = net.slice_ch
    with torch.enable_grad():
        gains = net.gains(torch.tensor([rate]))
        for step in range(steps):
            tau = TAU_START * math.exp(-TAU_DECAY * step / steps)
            z_soft = sga_round(z, tau, gen)
            bits = -torch.log2(net.z_prior.likelihood(z_soft).clamp_min(1e-9)).sum()
            hyper = net.h_s(z_soft)
            decoded: list[torch.Tensor] = []
            for i in range(net.cfg.slices):
                g = gains[:, i * s : (i + 1) * s]
                mean, scale = net.slice_params(i, hyper, decoded)
                mean_s = mean * g
                scale_s = (scale * g).clamp_min(net.cfg.scale_min)
                v = sga_round(y[:, i * s : (i + 1) * s] * g - mean_s, tau, gen)  # the coder's symbol, relaxed
                lik = gaussian_likelihood(v, torch.zeros_like(v), scale_s).clamp_min(1e-9)
                bits = bits - torch.log2(lik).sum()
                decoded.append((v + mean_s) / g)
            y_soft = torch.cat(decoded, 1)
            _, grad = distortion_and_gradient(net, y_soft.detach(), x, height, width, lam)
            # bits / pixels + distortion, with the distortion's gradient computed tile by tile above
            loss = bits / (height * width) + (y_soft * grad).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return y.detach(), z.detach()


def distortion_and_gradient(
    net: CdcModel,
    y_hat: torch.Tensor,
    x: torch.Tensor,
    height: int,
    width: int,
    lam: float,
    tile: int = TILE,
    halo: int = HALO,
) -> tuple[float, torch.Tensor]:
    """``lam 255^2 MSE(mean(y_hat), x)`` on the image's own ``height x width`` pixels (MSE on ``[0, 1]``, as the
    trainer's) and its gradient with respect to ``y_hat``, the synthesis run on tiles of ``tile`` latent
    positions with ``halo`` positions of context, one tile's graph at a time (see :data:`TILE`)."""
    y_leaf = y_hat.detach().requires_grad_(True)
    p = PIXELS_PER_LATENT
    scale = lam * 255.0**2 / (4.0 * 3 * height * width)
    total = 0.0
    with torch.enable_grad():
        for rows, cols, core_rows, core_cols in Tiling(tile, halo, above=0).windows(*y_leaf.shape[-2:]):
            top, left = rows.start + core_rows.start, cols.start + core_cols.start  # the core, in the image
            h_core = min(p * (rows.start + core_rows.stop), height) - p * top
            w_core = min(p * (cols.start + core_cols.stop), width) - p * left
            if h_core <= 0 or w_core <= 0:  # padding only
                continue
            out = net.synthesis(y_leaf[..., rows, cols])["mean"]
            r0, c0 = p * core_rows.start, p * core_cols.start
            target = x[..., p * top : p * top + h_core, p * left : p * left + w_core]
            diff = out[..., r0 : r0 + h_core, c0 : c0 + w_core] - target
            part = scale * (diff**2).sum()
            part.backward()
            total += float(part.detach())
    return total, y_leaf.grad
