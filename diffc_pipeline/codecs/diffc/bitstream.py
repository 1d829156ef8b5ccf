"""Stream layout: a small per-image header plus one byte chunk per coding step.

Header, little endian. Version 2 (written since 2026-12-01)::

    magic "DC" | version u8 = 2 | flags u8 | model id 3 B | config id 3 B | seed u64 | shape | crc32

``shape`` is a varint (LEB128) of ``(height - 1) << 1 | square``, followed, for a non-square image only, by a
varint of ``width - 1``: one byte for a square image up to 64 pixels a side (Tiny ImageNet, tiles), four
for a 481x321 photo. The shape is the only per-image information the header holds: the model and
configuration ids, magic, version and CRC are the same for every image of an archive (its manifest names
them) and the seed is derived from the archive's seed and the image id; they stay so that a stream on its
own is checked and decodes. Version 1 (before 2026-12-01; still read)::

    magic "DC" | version u8 = 1 | flags u8 | model id 3 B | config id 3 B | height u16 | width u16 | seed u64 | crc32

The version also names the code of the step chunks (:mod:`.index_code`: version 1's generic tables, version
2's context-coded chunk counts and per-chunk-count index tables). The step chunks are consecutive byte slices
of one bit-granular stream: chunk ``k`` ends at the first byte boundary after step ``k``'s last bit, so the
concatenation of chunks ``1..k`` is a byte prefix that decodes steps ``1..k`` and there is no per-step
padding. The optional container (:meth:`EncodedImage.to_bytes`) adds chunk lengths and a CRC32 over
everything for single-file use; archives keep their own per-row checksum instead.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ...errors import StreamError
from ..base import Encoded

MAGIC = b"DC"
STREAM_VERSION = 2  # what this build writes
READ_VERSIONS = (1, 2)
FLAG_IDEAL = 1
_HEADER_V1 = struct.Struct("<2sBB3s3sHHQ")
_PREFIX_V2 = struct.Struct("<2sBB3s3sQ")  # the fixed part of a version-2 header, before the shape
HEADER_SIZE = _HEADER_V1.size + 4  # version 1's (fixed) header size
MAX_SIDE = 65535
_CONTAINER_V1 = b"DCF1"  # header of HEADER_SIZE bytes
_CONTAINER_V2 = b"DCF2"  # header length in one byte after the chunk count


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """``(value, next position)``; at most three bytes (sides up to 65,535 need 17 bits)."""
    value = 0
    for i in range(3):
        if pos + i >= len(data):
            raise StreamError("stream header truncated in the image shape")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise StreamError("corrupt stream header: image shape varint too long")


def shape_bytes(height: int, width: int) -> bytes:
    """The version-2 shape field: ``varint((h - 1) << 1 | square)`` then, if not square, ``varint(w - 1)``."""
    square = height == width
    return _varint((height - 1) << 1 | square) + (b"" if square else _varint(width - 1))


@dataclass(frozen=True)
class Header:
    height: int
    width: int
    seed: int
    model_id: bytes  # first 3 bytes of the model's SHA-256
    config_id: bytes  # first 3 bytes of the codec configuration fingerprint
    ideal: bool = False
    version: int = STREAM_VERSION

    def pack(self) -> bytes:
        if not (0 < self.height <= MAX_SIDE and 0 < self.width <= MAX_SIDE):
            raise StreamError(f"image size {self.height}x{self.width} does not fit the stream header")
        if self.version not in READ_VERSIONS:
            raise StreamError(f"stream version {self.version} is not one this build writes")
        flags = FLAG_IDEAL if self.ideal else 0
        seed = self.seed & (2**64 - 1)
        if self.version == 1:
            body = _HEADER_V1.pack(MAGIC, 1, flags, self.model_id, self.config_id, self.height, self.width, seed)
        else:
            fixed = _PREFIX_V2.pack(MAGIC, 2, flags, self.model_id, self.config_id, seed)
            body = fixed + shape_bytes(self.height, self.width)
        return body + struct.pack("<I", zlib.crc32(body))

    @property
    def shape_bits(self) -> int:
        """Bits of the header that are this image's own information (its shape); the rest is dataset-wide."""
        return 32 if self.version == 1 else 8 * len(shape_bytes(self.height, self.width))

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse and check a whole header (either version); :attr:`height` and :attr:`width` give the size."""
        data = bytes(data)
        if len(data) < 4 or data[:2] != MAGIC:
            raise StreamError("not a DiffC stream (bad magic)")
        version = data[2]
        if version not in READ_VERSIONS:
            raise StreamError(f"stream version {version} is not supported (this build reads {READ_VERSIONS})")
        expected = header_length(data)
        if len(data) != expected:
            raise StreamError(f"stream header has {len(data)} bytes, expected {expected}")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise StreamError("stream header checksum mismatch (corrupted header)")
        if version == 1:
            _, _, flags, model_id, config_id, h, w, seed = _HEADER_V1.unpack(body)
        else:
            _, _, flags, model_id, config_id, seed = _PREFIX_V2.unpack(body[: _PREFIX_V2.size])
            value, pos = _read_varint(body, _PREFIX_V2.size)
            h = (value >> 1) + 1
            if value & 1:
                w = h
            else:
                w, pos = _read_varint(body, pos)
                w += 1
            if pos != len(body) or h > MAX_SIDE or w > MAX_SIDE:
                raise StreamError("corrupt stream header: bad image shape")
        return cls(h, w, seed, model_id, config_id, bool(flags & FLAG_IDEAL), version)


def header_length(data: bytes) -> int:
    """Length of the header that ``data`` starts with (its version and, for version 2, its shape field say);
    what a container or any reader of concatenated streams needs to find the first chunk."""
    data = bytes(data)
    if len(data) < 3 or data[:2] != MAGIC:
        raise StreamError("not a DiffC stream (bad magic)")
    if data[2] == 1:
        return HEADER_SIZE
    if data[2] != 2:
        raise StreamError(f"stream version {data[2]} is not supported (this build reads {READ_VERSIONS})")
    value, pos = _read_varint(data, _PREFIX_V2.size)
    if not value & 1:
        pos = _read_varint(data, pos)[1]
    return pos + 4


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
    def version(self) -> int:
        return self._parsed.version

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
        if self.version == 1:
            parts = [_CONTAINER_V1, struct.pack("<H", len(self.chunks)), self.header]
        else:
            parts = [_CONTAINER_V2, struct.pack("<HB", len(self.chunks), len(self.header)), self.header]
        parts += [struct.pack("<I", len(c)) for c in self.chunks]
        parts += list(self.chunks)
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> EncodedImage:
        if len(data) < 6 + 4 or data[:4] not in (_CONTAINER_V1, _CONTAINER_V2):
            raise StreamError("not a DiffC container (bad magic or too short)")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise StreamError("container checksum mismatch (truncated or corrupted)")
        (n,) = struct.unpack("<H", body[4:6])
        if body[:4] == _CONTAINER_V1:
            start, size = 6, HEADER_SIZE
        else:
            start, size = 7, body[6]
        pos = start + size
        header = body[start:pos]
        lengths = struct.unpack(f"<{n}I", body[pos : pos + 4 * n])
        pos += 4 * n
        if pos + sum(lengths) != len(body):
            raise StreamError("container chunk lengths do not add up")
        chunks = []
        for length in lengths:
            chunks.append(body[pos : pos + length])
            pos += length
        return cls(header=header, chunks=chunks)
