"""Codecs behind one contract (:mod:`.base`) and one registry (:mod:`.registry`).

- :mod:`.diffc`: DiffC, progressive reverse-channel coding of a Gaussian diffusion.
- :mod:`.classical`: JPEG, WebP and AVIF through Pillow (anchors, and archives users may choose).

Importing this package imports no torch; building a codec imports what it needs.
"""

from .base import Codec, DecodeOption, Encoded, SupportsSweep, cumulative_bits, prefix_bits
from .registry import CODECS, CodecSpec, resolve

__all__ = [
    "CODECS",
    "Codec",
    "CodecSpec",
    "DecodeOption",
    "Encoded",
    "SupportsSweep",
    "cumulative_bits",
    "prefix_bits",
    "resolve",
]
