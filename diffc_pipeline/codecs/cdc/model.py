"""CDC networks: transform coder with a mean-scale hyperprior, a channel-wise context model, gain units for
variable rate, a one-pass mean decoder and a conditional X-parameterised diffusion decoder.

Shapes (H, W multiples of 64): ``x (B,3,H,W)`` in ``[-1, 1]`` -> ``y (B,M,H/16,W/16)`` -> ``z (B,Z,H/64,W/64)``.
Variable rate: the rate index ``r`` selects a gain vector ``g_r`` (M,); the coded quantity is ``y * g_r`` with a
Gaussian of mean ``mu * g_r`` and scale ``sigma * g_r`` (``mu, sigma`` predicted in the unscaled domain), so
every network except the gains is shared by all rates. Symbols are ``k = round(y*g - mu*g)`` (mean rounding);
the decoder sees ``y_hat = (k + mu*g) / g``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


# ---- building blocks -----------------------------------------------------------------------------------
class GDN(nn.Module):
    """Generalised divisive normalisation (Balle et al. 2016); ``inverse=True`` gives IGDN."""

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.full((channels,), _softplus_inv(1.0)))
        self.gamma = nn.Parameter(_softplus_inv(0.1 * torch.eye(channels) + 1e-4).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = F.softplus(self.beta) + 1e-6
        gamma = F.softplus(self.gamma)
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta) + 1e-9)
        return x * norm if self.inverse else x / norm


def _softplus_inv(v: float | torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32)
    return v + torch.log(-torch.expm1(-v))


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class FactorizedPrior(nn.Module):
    """Per-channel learned univariate density (Balle et al. 2018, appendix 6.1): a monotone cumulative
    ``c(v)`` whose differences over unit bins are the likelihoods."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3)) -> None:
        super().__init__()
        dims = (1, *filters, 1)
        scale = 10.0 ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """``v (C, 1, N)`` -> cumulative logits ``(C, 1, N)``."""
        h = v
        n = len(self.matrices)
        for i in range(n):
            m = F.softplus(self.matrices[i].to(v.dtype))
            h = torch.matmul(m, h) + self.biases[i].to(v.dtype)
            if i < n - 1:
                h = h + torch.tanh(self.factors[i].to(v.dtype)) * torch.tanh(h)
        return h

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit bin around each element of ``z (B, C, h, w)``."""
        b, c, hh, ww = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return lik.reshape(c, b, hh, ww).permute(1, 0, 2, 3)


def gaussian_likelihood(v: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of ``N(mean, scale)`` on ``[v - 1/2, v + 1/2]`` (computed on the symmetric tail for accuracy)."""
    d = torch.abs(v - mean)
    s = scale
    upper = 0.5 * torch.erfc(-(0.5 - d) / (s * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - d) / (s * math.sqrt(2)))
    return upper - lower


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int, rates: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.SiLU(), nn.Linear(dim * 2, dim))
        self.rate = nn.Embedding(rates, dim)

    def forward(self, t: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
        args = (t[:, None] * 1000.0) * freqs[None]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        return self.mlp(emb) + self.rate(rate)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(temb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class CondUNet(nn.Module):
    """Small conditional U-Net predicting ``x0`` from ``x_t``, ``t``, the rate and the synthesis features. For CPU
    speed it works on 2x2 pixel patches (pixel-unshuffle), at 1/2, 1/4 and 1/8 resolution, where the synthesis
    features of those resolutions are concatenated in (as CDC concatenates its pyramid into the first U-Net
    levels). The output is added to the mean reconstruction: the diffusion decoder refines the mean decoder."""

    def __init__(self, widths: tuple[int, ...], feats: tuple[int, ...], rates: int, temb: int = 64) -> None:
        super().__init__()
        c0, c1, c2 = widths
        f2, f4, f8 = feats
        self.temb = TimeEmbedding(temb, rates)
        self.inp = nn.Conv2d(12 + 12 + f2, c0, 3, padding=1)
        self.d0 = ResBlock(c0, c0, temb)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.d1 = ResBlock(c1 + f4, c1, temb)
        self.down2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.d2 = ResBlock(c2 + f8, c2, temb)
        self.mid = ResBlock(c2, c2, temb)
        self.up2 = nn.Conv2d(c2, c1 * 4, 3, padding=1)
        self.u1 = ResBlock(c1 + c1, c1, temb)
        self.up1 = nn.Conv2d(c1, c0 * 4, 3, padding=1)
        self.u0 = ResBlock(c0 + c0, c0, temb)
        self.out = nn.Conv2d(c0, 12, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, rate: torch.Tensor, cond: dict) -> torch.Tensor:
        emb = self.temb(t, rate)
        inp = torch.cat([F.pixel_unshuffle(xt, 2), F.pixel_unshuffle(cond["mean"], 2), cond["f2"]], 1)
        h0 = self.d0(self.inp(inp), emb)
        h1 = self.d1(torch.cat([self.down1(h0), cond["f4"]], 1), emb)
        h2 = self.mid(self.d2(torch.cat([self.down2(h1), cond["f8"]], 1), emb), emb)
        u1 = self.u1(torch.cat([F.pixel_shuffle(self.up2(h2), 2), h1], 1), emb)
        u0 = self.u0(torch.cat([F.pixel_shuffle(self.up1(u1), 2), h0], 1), emb)
        return cond["mean"] + F.pixel_shuffle(self.out(F.silu(u0)), 2)


# ---- diffusion schedule --------------------------------------------------------------------------------
def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, s = 0.008), clipped away from 0 and 1."""
    s = 0.008
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f.clamp(1e-5, 1.0 - 1e-5)


# ---- the codec network -----------------------------------------------------------------------------------
class CdcModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, m, zc = cfg.channels, cfg.latent, cfg.hyper
        if m % cfg.slices:
            raise ValueError(f"latent channels {m} not divisible by {cfg.slices} slices")
        self.slice_ch = m // cfg.slices
        self.g_a = nn.Sequential(conv(3, n), GDN(n), conv(n, n), GDN(n), conv(n, n), GDN(n), conv(n, m))
        self.h_a = nn.Sequential(
            conv(m, n, 3, 1), nn.LeakyReLU(inplace=True), conv(n, n), nn.LeakyReLU(inplace=True), conv(n, zc)
        )
        self.h_s = nn.Sequential(
            deconv(zc, n),
            nn.LeakyReLU(inplace=True),
            deconv(n, n),
            nn.LeakyReLU(inplace=True),
            conv(n, n, 3, 1),
        )
        s = self.slice_ch
        self.context = nn.ModuleList(
            nn.Sequential(
                conv(n + i * s, cfg.context, 3, 1),
                nn.LeakyReLU(inplace=True),
                conv(cfg.context, cfg.context, 3, 1),
                nn.LeakyReLU(inplace=True),
                conv(cfg.context, 2 * s, 3, 1),
            )
            for i in range(cfg.slices)
        )
        self.z_prior = FactorizedPrior(zc)
        # gains per rate: y is coded as y * gain[r]; log-spaced init following lambda^(1/2)
        lam = torch.tensor(cfg.lambdas, dtype=torch.float32)
        init = 0.5 * torch.log(lam / lam[len(cfg.lambdas) // 2])
        self.log_gain = nn.Parameter(init[:, None].repeat(1, m))
        # synthesis: feature pyramid at 1/8, 1/4, 1/2, 1 and the one-pass mean reconstruction
        f2 = n * 2 // 3
        self.s8 = nn.Sequential(deconv(m, n), GDN(n, inverse=True))
        self.s4 = nn.Sequential(deconv(n, n), GDN(n, inverse=True))
        self.s2 = nn.Sequential(deconv(n, f2), GDN(f2, inverse=True))
        self.to_rgb = deconv(f2, 3)
        self.unet = CondUNet(cfg.unet, (f2, n, n), cfg.rates)

    # ---- pieces used by training and the codec -------------------------------------------------------
    def gains(self, rate: torch.Tensor) -> torch.Tensor:
        """``(B, M, 1, 1)`` gains of the rate indices ``rate (B,)``."""
        return torch.exp(self.log_gain[rate])[:, :, None, None]

    def slice_params(self, i: int, hyper: torch.Tensor, prev: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Mean and scale (unscaled domain) of slice ``i`` from the hyper features and the previous slices."""
        out = self.context[i](torch.cat([hyper, *prev], 1))
        mean, log_scale = out.chunk(2, 1)
        return mean, torch.exp(log_scale.clamp(-10.0, 10.0))

    def synthesis(self, y_hat: torch.Tensor) -> dict:
        f8 = self.s8(y_hat)
        f4 = self.s4(f8)
        f2 = self.s2(f4)
        return {"f8": f8, "f4": f4, "f2": f2, "mean": self.to_rgb(f2)}

    def forward_train(
        self, x: torch.Tensor, rate: torch.Tensor, gen: torch.Generator, keep: torch.Tensor | None = None
    ) -> dict:
        """Rates (bits per image, noisy relaxation) and the synthesis outputs, for the training loss. ``keep``
        (B,): number of slices the decoder side sees per image (the rest from their predicted means)."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_noisy = z + torch.rand(z.shape, generator=gen) - 0.5
        z_hat = z + (torch.round(z) - z).detach()  # straight-through rounding for the decoder side
        z_bits = -torch.log2(self.z_prior.likelihood(z_noisy).clamp_min(1e-9)).sum((1, 2, 3))
        hyper = self.h_s(z_hat)
        g = self.gains(rate)
        s = self.slice_ch
        prev: list[torch.Tensor] = []
        y_bits = torch.zeros(x.shape[0])
        for i in range(self.cfg.slices):
            gi = g[:, i * s : (i + 1) * s]
            yi = y[:, i * s : (i + 1) * s] * gi
            mean, scale = self.slice_params(i, hyper, prev)
            mean_s = mean * gi
            scale_s = (scale * gi).clamp_min(self.cfg.scale_min)
            noisy = yi + torch.rand(yi.shape, generator=gen) - 0.5
            lik = gaussian_likelihood(noisy, mean_s, scale_s).clamp_min(1e-9)
            y_bits = y_bits - torch.log2(lik).sum((1, 2, 3))
            q = yi - mean_s
            yi_hat = (q + (torch.round(q) - q).detach() + mean_s) / gi
            prev.append(yi_hat)
        if keep is not None:  # prefix decoding: slices >= keep[b] replaced by their predicted means (chained)
            dec: list[torch.Tensor] = []
            for i in range(self.cfg.slices):
                mean, _ = self.slice_params(i, hyper, dec)
                use = (keep > i).to(x.dtype)[:, None, None, None]
                dec.append(use * prev[i] + (1 - use) * mean)
            prev = dec
        y_hat = torch.cat(prev, 1)
        return {"z_bits": z_bits, "y_bits": y_bits, "cond": self.synthesis(y_hat)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
