"""The DiffC codec: schedule, reverse-channel coding, bitstream and reconstruction (no Ray, no files)."""

from .bitstream import EncodedImage, Header
from .codec import CHANNELS, DiffcCodec, SweepResult, float_to_uint8, uint8_to_float
from .config import CodecConfig
from .reconstruct import METHODS

__all__ = [
    "CHANNELS",
    "METHODS",
    "CodecConfig",
    "DiffcCodec",
    "EncodedImage",
    "Header",
    "SweepResult",
    "float_to_uint8",
    "uint8_to_float",
]
