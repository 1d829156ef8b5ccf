"""Stream layout: a small per-image header plus one byte chunk per coding step.

Header (``HEADER_SIZE`` bytes, little endian)::

    magic "DC" | version u8 | flags u8 | model id 3 B | config id 3 B | height u16 | width u16 | seed u64 | crc32

The step chunks are consecutive byte slices of one bit-granular stream (see :mod:`.index_code`): chunk ``k``
ends at the first byte boundary after step ``k``'s last bit, so the concatenation of chunks ``1..k`` is a
byte prefix that decodes steps ``1..k`` and there is no per-step padding. The optional container
(:meth:`EncodedImage.to_bytes`) adds chunk lengths and a CRC32 over everything for single-file use;
archives keep their own per-row checksum instead.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ...errors import StreamError
from ..base import Encoded

MAGIC = b"DC"
STREAM_VERSION = 1
FLAG_IDEAL = 1
_HEADER = struct.Struct("<2sBB3s3sHHQ")
HEADER_SIZE = _HEADER.size + 4
_CONTAINER_MAGIC = b"DCF1"


@dataclass(frozen=True)
class Header:
    height: int
    width: int
    seed: int
    model_id: bytes  # first 3 bytes of the model's SHA-256
    config_id: bytes  # first 3 bytes of the codec configuration fingerprint
    ideal: bool = False

    def pack(self) -> bytes:
        if not (0 < self.height < 65536 and 0 < self.width < 65536):
            raise StreamError(f"image size {self.height}x{self.width} does not fit the stream header")
        body = _HEADER.pack(
            MAGIC,
            STREAM_VERSION,
            FLAG_IDEAL if self.ideal else 0,
            self.model_id,
            self.config_id,
            self.height,
            self.width,
            self.seed & (2**64 - 1),
        )
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if len(data) != HEADER_SIZE:
            raise StreamError(f"stream header has {len(data)} bytes, expected {HEADER_SIZE}")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise StreamError("stream header checksum mismatch (corrupted header)")
        magic, version, flags, model_id, config_id, h, w, seed = _HEADER.unpack(body)
        if magic != MAGIC:
            raise StreamError("not a DiffC stream (bad magic)")
        if version != STREAM_VERSION:
            raise StreamError(f"stream version {version} is not supported (this build reads {STREAM_VERSION})")
        return cls(h, w, seed, model_id, config_id, bool(flags & FLAG_IDEAL))


@dataclass
class EncodedImage(Encoded):
    """One DiffC stream: ``header`` + progressive ``chunks`` (one per coding step); ``estimated_bits`` holds
    each step's true KL (the ideal rate, not serialised)."""

    def __post_init__(self) -> None:
        self._parsed = Header.unpack(bytes(self.header))

    @property
    def parsed(self) -> Header:
        return self._parsed

    @property
    def seed(self) -> int:
        return self._parsed.seed

    @property
    def height(self) -> int:
        return self._parsed.height

    @property
    def width(self) -> int:
        return self._parsed.width

    def to_bytes(self) -> bytes:
        parts = [_CONTAINER_MAGIC, struct.pack("<H", len(self.chunks)), self.header]
        parts += [struct.pack("<I", len(c)) for c in self.chunks]
        parts += list(self.chunks)
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> EncodedImage:
        if len(data) < 6 + HEADER_SIZE + 4 or data[:4] != _CONTAINER_MAGIC:
            raise StreamError("not a DiffC container (bad magic or too short)")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise StreamError("container checksum mismatch (truncated or corrupted)")
        (n,) = struct.unpack("<H", body[4:6])
        pos = 6 + HEADER_SIZE
        header = body[6:pos]
        lengths = struct.unpack(f"<{n}I", body[pos : pos + 4 * n])
        pos += 4 * n
        if pos + sum(lengths) != len(body):
            raise StreamError("container chunk lengths do not add up")
        chunks = []
        for length in lengths:
            chunks.append(body[pos : pos + length])
            pos += length
        return cls(header=header, chunks=chunks)
