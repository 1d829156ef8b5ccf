"""The built-in compact U-Net: fully convolutional, conditioned on log-SNR, predicts the noise.

Design for CPU speed (every codec step runs it once): a 2x2 pixel-unshuffle stem halves the resolution
before any wide convolution, so the widest level runs at H/2 x W/2; no attention (the model must work on
any H x W). Fourier features of ``z`` (VDM, Kingma et al. 2021) give the network the fine-scale detail
that dominates the likelihood at low noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    channels: int = 3
    widths: tuple[int, ...] = (64, 96, 128)
    blocks_per_level: int = 2
    mid_blocks: int = 1
    emb_dim: int = 128
    fourier_octaves: tuple[int, ...] = (6, 7)
    dropout: float = 0.0
    groups: int = 16
    extra: dict = field(default_factory=dict)

    @property
    def pad_multiple(self) -> int:
        # stem unshuffle (2) times one downsample per level after the first
        return 2 * 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["fourier_octaves"] = list(self.fourier_octaves)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["widths"] = tuple(int(w) for w in known.get("widths", cls.widths))
        known["fourier_octaves"] = tuple(int(o) for o in known.get("fourier_octaves", cls.fourier_octaves))
        return cls(**known)


def logsnr_embedding(logsnr: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of log-SNR, rescaled so its useful range (about -10..15) spans the frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=logsnr.device) / half)
    arg = (logsnr.float() * 50.0).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """eps-prediction U-Net; ``forward(z, logsnr)`` with ``z`` in VP scale and ``logsnr`` of shape ``(B,)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, w, e = config.channels, config.widths, config.emb_dim
        n_fourier = 2 * len(config.fourier_octaves) * c
        self.emb = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.stem = nn.Conv2d(4 * (c + n_fourier), w[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [w[0]]
        ch = w[0]
        for level, width in enumerate(w):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(ResBlock(ch, width, e, config.groups, config.dropout))
                ch = width
                skips.append(ch)
            self.down.append(blocks)
            if level < len(w) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, e, config.groups, config.dropout) for _ in range(config.mid_blocks)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(w))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level + 1):
                blocks.append(ResBlock(ch + skips.pop(), w[level], e, config.groups, config.dropout))
                ch = w[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_norm = nn.GroupNorm(min(config.groups, ch), ch)
        self.out = nn.Conv2d(ch, 4 * c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _fourier(self, z: torch.Tensor) -> torch.Tensor:
        feats = [z]
        for octave in self.config.fourier_octaves:
            arg = z * (2.0**octave * math.pi)
            feats += [arg.sin(), arg.cos()]
        return torch.cat(feats, dim=1)

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        emb = self.emb(logsnr_embedding(logsnr, self.config.emb_dim))
        h = self.stem(F.pixel_unshuffle(self._fourier(z), 2))
        hs = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), 2)
