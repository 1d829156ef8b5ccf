"""Tiled network evaluation: bounded memory for any image size, the same result on every machine.

A U-Net's activations grow with the image: the built-in network holds ~0.8 GB per megapixel at its widest
level, so a 12 MP photo needed ~10 GB in one call. Above :attr:`Tiling.above` pixels the network runs on a
fixed grid of ``tile`` x ``tile`` cores, each evaluated with ``halo`` pixels of context on every side that
lies inside the image (the halo's output is discarded), so peak memory depends on the tile, not the image.

The grid is a pure function of the image's height and width, and both sides of the codec run the same
network calls, so encoder and decoder compute the same priors (DiffC's stream parses without them in any
case: indices and chunk counts are read from the stream, never recomputed). Tiling is not free: GroupNorm
statistics are per tile and context ends at the halo, so the priors of a tiled image differ slightly from an
untiled evaluation of it. The difference is measured (``docs/benchmarks.md``, *Tiled evaluation*), and
images at or below ``above`` pixels - every 481x321 photo and 64x64 thumbnail - are never tiled.

Changing these constants changes what large images decode to (slightly), so they are part of the model
wrapper's contract: a change needs a new model identity or stream version, never a silent edit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tiling:
    """Tile grid of the network's evaluation; ``tile`` and ``halo`` are multiples of the pad multiple.

    ``balanced``: cut each side into the fewest cores of at most ``tile`` and of (near) equal size, instead of
    full ``tile`` cores and a remainder: no thin last row or column, where a network that normalises per
    window (GroupNorm) would see statistics of a sliver. DiffC's grid keeps the plain cut (its large-image
    streams depend on it); CDC's grid is balanced.
    """

    tile: int = 768
    halo: int = 32
    above: int = 1024 * 1024  # images with more pixels than this are tiled
    balanced: bool = False

    def cuts(self, n: int) -> list[int]:
        """Core boundaries along a side of ``n``: ``[0, ..., n]``."""
        if not self.balanced:
            return [*range(0, n, self.tile), n]
        parts = -(-n // self.tile)
        return [round(i * n / parts) for i in range(parts + 1)]

    def windows(self, height: int, width: int) -> list[tuple[slice, slice, slice, slice]]:
        """``(rows, cols, core rows, core cols)`` per tile: the window to evaluate and, inside the window's
        output, the core that lands in the image. One window covering everything when not tiled."""
        if height * width <= self.above:
            return [(slice(0, height), slice(0, width), slice(0, height), slice(0, width))]
        out = []
        row_cuts, col_cuts = self.cuts(height), self.cuts(width)
        for r0, r1 in itertools.pairwise(row_cuts):
            wr0, wr1 = max(0, r0 - self.halo), min(height, r1 + self.halo)
            for c0, c1 in itertools.pairwise(col_cuts):
                wc0, wc1 = max(0, c0 - self.halo), min(width, c1 + self.halo)
                out.append((slice(wr0, wr1), slice(wc0, wc1), slice(r0 - wr0, r1 - wr0), slice(c0 - wc0, c1 - wc0)))
        return out


def evaluate_tiled(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor, logsnr: torch.Tensor, tiling: Tiling
) -> torch.Tensor:
    """``fn(z, logsnr)`` for ``z`` ``(B, C, H, W)``, window by window on ``tiling``'s grid, and in groups of
    images of at most ``tiling.above`` pixels per call: a batch of many mid-size images is as bounded as one
    large image."""
    b, _, h, w = z.shape
    windows = tiling.windows(h, w)
    per_call = max(1, tiling.above // (h * w)) if len(windows) == 1 else 1
    if len(windows) == 1 and per_call >= b:
        return fn(z, logsnr)
    out = torch.empty_like(z)
    for i in range(0, b, per_call):
        zi, li, oi = z[i : i + per_call], logsnr[i : i + per_call], out[i : i + per_call]
        for rows, cols, core_rows, core_cols in windows:
            part = fn(zi[:, :, rows, cols].contiguous(), li)
            oi[:, :, rows, cols][:, :, core_rows, core_cols] = part[:, :, core_rows, core_cols]
        del part
    if len(windows) > 1:
        release_freed_heap()
    return out


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim, nothing kept either
        return None


def release_freed_heap() -> None:
    """Give the heap memory a large network call freed back to the OS (glibc's ``malloc_trim``).

    glibc serves allocations under its mmap threshold (which adapts up to 32 MB) from its arenas and keeps
    what they free: after one tiled call on a 1600x1600 image the process stayed 0.46 GB above where it
    started until trimmed (2026-12-03, 1 thread). The next network call would reuse that memory, but the
    codec's channel and algebra between calls need their own and would stand on top of it: at 12 MP the
    encoder's peak included it. A trim costs milliseconds against a call of minutes; small images are never
    tiled and never trimmed (their calls would only fault the memory back in). Changes no value computed."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
