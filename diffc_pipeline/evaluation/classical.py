"""Classical codecs through Pillow: JPEG, WebP, AVIF at a sweep of quality settings.

Rates are measured on the complete files Pillow writes (headers, container and all), because that is what a
user would store; on 64x64 images the headers alone are a large share of the bits, which is exactly why
these codecs cannot go below a few tenths of a bit per pixel there.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from ..errors import DiffcError
from ..images import decode_image


@dataclass(frozen=True)
class ClassicalCodec:
    """One Pillow format with the quality grid we sweep and the fixed encoder options we use."""

    name: str
    pillow_format: str
    qualities: tuple[int, ...]
    options: dict = field(default_factory=dict)
    min_quality: int = 0


# Denser at low quality, where the curves bend and where DiffC competes. Encoder options are the ones a
# careful user would pick for size: optimised Huffman tables for JPEG (default 4:2:0 chroma), WebP's slowest
# and best method.
CODECS: dict[str, ClassicalCodec] = {
    "jpeg": ClassicalCodec(
        "jpeg",
        "JPEG",
        (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95),
        {"optimize": True},
        1,
    ),
    "webp": ClassicalCodec("webp", "WEBP", (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100), {"method": 6}),
    "avif": ClassicalCodec("avif", "AVIF", (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)),
}

# The lowest file size is reached somewhere in the low-quality range but not always at the lowest setting
# (AVIF at q=5 can be smaller than at q=0), so the lowest-rate search tries every integer quality up to this.
LOWEST_RATE_SEARCH_MAX_QUALITY = 50


@dataclass(frozen=True)
class ClassicalPoint:
    """One encode/decode of one image at one quality."""

    data: bytes
    reconstruction: np.ndarray
    encode_s: float
    decode_s: float

    def bpp(self, pixels: int) -> float:
        return 8.0 * len(self.data) / pixels


def codec(name: str) -> ClassicalCodec:
    """The codec called ``name``, or a :class:`DiffcError` if it is unknown or this Pillow cannot write it."""
    if name not in CODECS:
        raise DiffcError(f"unknown classical codec {name!r}; choose from {', '.join(CODECS)}")
    if name == "avif" and not features.check("avif"):
        raise DiffcError("this Pillow has no AVIF support (Pillow >= 11.3 or the pillow-avif-plugin package adds it)")
    if name == "webp" and not features.check("webp"):
        raise DiffcError("this Pillow has no WebP support")
    return CODECS[name]


def encode_decode(image: np.ndarray, spec: ClassicalCodec, quality: int) -> ClassicalPoint:
    """Encode ``image`` (H, W, 3 uint8) at ``quality`` and decode it again with the shared decoder."""
    pil = Image.fromarray(image)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    pil.save(buf, spec.pillow_format, quality=quality, **spec.options)
    t1 = time.perf_counter()
    data = buf.getvalue()
    reconstruction = decode_image(data)
    t2 = time.perf_counter()
    return ClassicalPoint(data, reconstruction, t1 - t0, t2 - t1)


def lowest_rate(image: np.ndarray, spec: ClassicalCodec) -> tuple[int, int]:
    """``(bytes, quality)`` of the smallest file the codec writes for ``image`` at any quality.

    Tries every quality from the codec's minimum to :data:`LOWEST_RATE_SEARCH_MAX_QUALITY` and the sweep grid
    above it (files only grow from there; the grid keeps that claim checked on every image).
    """
    pil = Image.fromarray(image)
    candidates = sorted(set(range(spec.min_quality, LOWEST_RATE_SEARCH_MAX_QUALITY + 1)) | set(spec.qualities))
    best: tuple[int, int] | None = None
    for q in candidates:
        buf = io.BytesIO()
        pil.save(buf, spec.pillow_format, quality=q, **spec.options)
        size = buf.tell()
        if best is None or size < best[0]:
            best = (size, q)
    assert best is not None
    return best
