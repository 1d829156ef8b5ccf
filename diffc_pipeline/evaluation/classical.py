"""The classical anchors of an evaluation: which qualities of the registry's JPEG/WebP/AVIF/JXL codecs are swept,
and each image's lowest reachable rate.

The codecs themselves live in :mod:`diffc_pipeline.codecs.classical` (one chunk = the complete file Pillow
writes, so the rate counts headers and container as a user would store them); this module only chooses
settings. On 64x64 images the headers alone are a large share of the bits, which is exactly why these codecs
cannot go below a few tenths of a bit per pixel there - hence the lowest-rate search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codecs import Codec, resolve
from ..errors import DiffcError, InvalidInputError

# Denser at low quality, where the curves bend and where DiffC competes.
GRIDS: dict[str, tuple[int, ...]] = {
    "jpeg": (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95),
    "webp": (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
    "avif": (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
    "jxl": (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100),
}

# The lowest file size is reached somewhere in the low-quality range but not always at the lowest setting
# (AVIF at q=5 can be smaller than at q=0), so the lowest-rate search tries every integer quality up to this.
LOWEST_RATE_SEARCH_MAX_QUALITY = 50


@dataclass(frozen=True)
class Anchor:
    """One registry codec at every quality the sweep or the lowest-rate search uses, built once per run."""

    name: str
    qualities: tuple[int, ...]  # the swept grid
    codecs: dict[int, Codec]  # quality -> codec: the grid plus every quality the lowest-rate search tries

    @classmethod
    def build(cls, name: str) -> Anchor:
        """The anchor ``name``; an unknown one, or one this Pillow cannot write, fails here (before any work)."""
        if name not in GRIDS:
            raise DiffcError(f"unknown anchor {name!r}; choose from {', '.join(GRIDS)} (or 'none')")
        codecs: dict[int, Codec] = {}
        for q in sorted(set(range(LOWEST_RATE_SEARCH_MAX_QUALITY + 1)) | set(GRIDS[name])):
            try:
                spec = resolve(name, {"quality": q})
            except InvalidInputError:  # below the codec's scale (JPEG starts at 1)
                continue
            codecs[q] = spec.build()
        return cls(name, tuple(q for q in GRIDS[name] if q in codecs), codecs)

    def describe(self) -> dict:
        """What results.json records: the grid and the codec's own description (encoder settings)."""
        return {"qualities": list(self.qualities), "codec": self.codecs[self.qualities[0]].describe()}

    def lowest_rate(self, image: np.ndarray) -> tuple[int, int]:
        """``(bytes, quality)`` of the smallest file the codec writes for ``image`` (H, W, 3) at any quality.

        Tries every quality up to :data:`LOWEST_RATE_SEARCH_MAX_QUALITY` and the sweep grid above it (files
        only grow from there; the grid keeps that claim checked on every image).
        """
        sizes = {q: codec.compress(image[None], [0])[0].prefix_bits() // 8 for q, codec in self.codecs.items()}
        quality = min(sizes, key=lambda q: (sizes[q], q))
        return sizes[quality], quality
