"""JPEG, WebP, AVIF (and JPEG XL where its plugin is installed) behind the codec contract, through Pillow.

Each image is one chunk: the complete file Pillow writes (headers, container and all), because that is what
a user would store and what the rate of an anchor must count. The header is empty - the file carries its
own size - so an archive row's bits are exactly the file's. Seeds are ignored (the codecs are deterministic).
Encoder settings are the ones a careful user would pick for size: optimised Huffman tables for JPEG (default
4:2:0 chroma), WebP's slowest and best method, AVIF at Pillow's defaults.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image, features

from .. import images as image_files
from ..errors import InvalidInputError, ModelLoadError, StreamError
from .base import Codec, Encoded, check_seeds


@dataclass(frozen=True)
class _QualityOptions:
    quality: int = 75
    LOW: ClassVar[int] = 0
    HIGH: ClassVar[int] = 100

    def __post_init__(self) -> None:
        if not self.LOW <= self.quality <= self.HIGH:
            raise InvalidInputError(f"quality must be in [{self.LOW}, {self.HIGH}], got {self.quality}")


@dataclass(frozen=True)
class JpegOptions(_QualityOptions):
    """``quality`` 1-100 (Pillow's scale; above 95 mostly grows files)."""

    LOW: ClassVar[int] = 1


@dataclass(frozen=True)
class WebpOptions(_QualityOptions):
    """``quality`` 0-100."""


@dataclass(frozen=True)
class AvifOptions(_QualityOptions):
    """``quality`` 0-100 (Pillow maps it to the AV1 quantiser)."""

    quality: int = 50


@dataclass(frozen=True)
class JxlOptions(_QualityOptions):
    """``quality`` 0-100 (needs the optional ``pillow-jxl-plugin``: ``pip install diffc-pipeline[jxl]``)."""


class PillowCodec(Codec):
    """One Pillow format at one quality; a single, non-progressive chunk per image."""

    progressive = False
    pillow_format: ClassVar[str]
    save_options: ClassVar[dict] = {}
    # The format's largest side in pixels (None: no limit short of memory): past it the encoder fails with
    # a message that does not say why ("broken data stream", "Invalid argument").
    max_side: ClassVar[int | None] = None

    def __init__(self, options: _QualityOptions) -> None:
        self._check_available()
        self.options = options
        self._fingerprint = hashlib.sha256(
            json.dumps({"codec": self.name, **asdict(options), **self.save_options}, sort_keys=True).encode()
        ).hexdigest()

    @classmethod
    def from_options(cls, options: _QualityOptions, model: str | None = None, device: str = "cpu") -> PillowCodec:
        return cls(options)

    @classmethod
    def _check_available(cls) -> None:
        feature = {"WEBP": "webp", "AVIF": "avif", "JPEG": "jpg"}.get(cls.pillow_format)
        if feature and not features.check(feature):
            raise ModelLoadError(f"this Pillow cannot write {cls.pillow_format} (Pillow >= 11.3 has AVIF and WebP)")

    @property
    def num_chunks(self) -> int:
        return 1

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict:
        return {
            "name": self.name,
            "options": asdict(self.options),
            "model": None,
            "fingerprint": self.fingerprint,
            "num_chunks": 1,
            "progressive": False,
            "details": {"pillow_format": self.pillow_format, "save_options": self.save_options},
        }

    def compress(self, images: np.ndarray, seeds: Sequence[int]) -> list[Encoded]:
        _check_images(images, seeds)
        if self.max_side is not None and max(images.shape[1:3]) > self.max_side:
            raise InvalidInputError(
                f"{self.name} cannot hold an image of {images.shape[2]}x{images.shape[1]} pixels: its sides are at "
                f"most {self.max_side} pixels"
            )
        out = []
        for image in images:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, self.pillow_format, quality=self.options.quality, **self.save_options)
            out.append(Encoded(header=b"", chunks=[buf.getvalue()]))
        return out

    def decompress(
        self, items: Sequence[Encoded], prefix: int | Sequence[int] | None = None, **options: Any
    ) -> np.ndarray:
        self.parse_decode_options(options)
        if not items:
            raise InvalidInputError("no streams to decode")
        self.check_prefix(items, prefix)
        decoded = []
        for item in items:
            try:
                decoded.append(image_files.decode_image(item.chunks[0], formats=(self.pillow_format,)))
            except Exception as exc:
                raise StreamError(f"{self.name} file does not decode: {exc}") from None
        if len({d.shape for d in decoded}) > 1:
            raise InvalidInputError("all streams decoded in one call must have the same image size")
        return np.stack(decoded)

    def stream_size(self, item: Encoded) -> tuple[int, int]:
        """The size in the image file's own header (the stream header is empty), as Pillow reads it on open,
        before any pixel is decoded; the pixel limit is the caller's, so Pillow's bomb warning is not one."""
        if not item.chunks or not item.chunks[0]:
            raise StreamError(f"{self.name} stream holds no image file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with image_files.open_image(item.chunks[0], (self.pillow_format,)) as img:
                    width, height = img.size
        except Image.DecompressionBombError as exc:
            raise StreamError(f"{self.name} file claims too many pixels: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
            raise StreamError(f"{self.name} file header does not parse: {exc}") from None
        return height, width


class JpegCodec(PillowCodec):
    name = "jpeg"
    pillow_format = "JPEG"
    save_options: ClassVar[dict] = {"optimize": True}
    max_side = 65_500  # libjpeg's JPEG_MAX_DIMENSION


class WebpCodec(PillowCodec):
    name = "webp"
    pillow_format = "WEBP"
    save_options: ClassVar[dict] = {"method": 6}
    max_side = 16_383  # libwebp's WEBP_MAX_DIMENSION


class AvifCodec(PillowCodec):
    name = "avif"
    pillow_format = "AVIF"
    max_side = 65_536  # AV1's largest frame side


class JxlCodec(PillowCodec):
    name = "jxl"
    pillow_format = "JXL"

    @classmethod
    def _check_available(cls) -> None:
        try:
            import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)
        except ImportError:
            raise ModelLoadError(
                "JPEG XL needs the optional plugin: pip install 'diffc-pipeline[jxl]' (pillow-jxl-plugin)"
            ) from None


def _check_images(images: np.ndarray, seeds: Sequence[int]) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise InvalidInputError(
            f"expected uint8 images of shape (B, H, W, 3), got {getattr(images, 'dtype', type(images).__name__)} "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    check_seeds(seeds, len(images))
    if 0 in images.shape[:3]:
        raise InvalidInputError(f"empty batch or image: shape {tuple(images.shape)}")
