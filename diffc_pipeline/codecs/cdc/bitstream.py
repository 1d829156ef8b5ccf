"""The CDC stream header (fixed layout, big-endian) and the per-chunk checks.

``magic "CDC" | version u8 | model id 4 bytes | rate u8 | chunks u8 | height u16 | width u16 | seed u64 |
one check byte per chunk (low byte of the chunk's CRC-32) | CRC-32 of everything before it``

The model id is the first 4 bytes of the SHA-256 of the weights. The check bytes let a decoder refuse a
truncated or altered chunk of any prefix without reading the rest. 26 bytes + 1 per chunk.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ...errors import StreamError

MAGIC = b"CDC"
VERSION = 1
_FIXED = struct.Struct(">3sB4sBBHHQ")
# The header's own information about one image: its height and width (two u16). Everything else in it is the
# same for every image of an archive or derived there (the seed: from the run seed and the image id).
SHAPE_BITS = 32


@dataclass(frozen=True)
class Header:
    model_id: bytes
    rate: int
    height: int
    width: int
    seed: int
    checks: bytes  # one byte per chunk

    @property
    def chunks(self) -> int:
        return len(self.checks)

    def pack(self) -> bytes:
        body = (
            _FIXED.pack(MAGIC, VERSION, self.model_id, self.rate, self.chunks, self.height, self.width, self.seed)
            + self.checks
        )
        return body + struct.pack(">I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if not isinstance(data, bytes | bytearray) or len(data) < _FIXED.size + 4:
            raise StreamError(f"CDC header too short ({len(data or b'')} bytes, at least {_FIXED.size + 4})")
        magic, version, model_id, rate, chunks, h, w, seed = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise StreamError(f"not a CDC stream (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise StreamError(f"CDC stream version {version} is not supported (this decoder reads {VERSION})")
        size = _FIXED.size + chunks + 4
        if len(data) != size:
            raise StreamError(f"CDC header of {len(data)} bytes, expected {size} for {chunks} chunks")
        (crc,) = struct.unpack_from(">I", data, size - 4)
        if zlib.crc32(data[: size - 4]) != crc:
            raise StreamError("CDC header fails its CRC-32 (corrupted header)")
        if h == 0 or w == 0:
            raise StreamError(f"CDC header names an empty image ({h}x{w})")
        return cls(bytes(model_id), rate, h, w, seed, bytes(data[_FIXED.size : size - 4]))


def chunk_check(chunk: bytes) -> int:
    return zlib.crc32(chunk) & 0xFF
