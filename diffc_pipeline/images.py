"""Decode image bytes into RGB uint8 arrays, safely.

Shared by the pipeline, training and evaluation so that every part of the tool accepts and rejects exactly
the same inputs. Policy (documented in docs/format.md): an EXIF orientation is applied; grayscale, palette,
CMYK, 16-bit and alpha images are converted to 8-bit RGB (alpha is dropped after compositing on black -
DiffC codes 3 channels); images above ``max_pixels`` are rejected before their pixels are decoded, so a
decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

DEFAULT_MAX_PIXELS = 64_000_000

# Pixels per codec call. A codec's working memory grows with the pixels of the call, not the image count
# (DiffC: ~130 bytes per pixel of latents and channel state at its peak, measured at 12 MP, beside the
# network's tiled evaluation), so a batch of large photos is cut into calls of at most this many pixels; one
# image larger than it is a call of its own. 4 MP keeps a call's state near 0.5 GB.
DEFAULT_BATCH_PIXELS = 4_000_000

# File suffixes read as images wherever a folder is listed (compress, train, eval): one list for all.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# The Pillow formats image bytes are read as: those of the suffixes above, plus GIF and the formats the
# classical codecs write. Left to itself Pillow tries every plugin it has, EPS included, which hands the bytes
# to Ghostscript where it is installed: untrusted files and archives must never reach that.
READ_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "AVIF", "JXL")

# Formats whose extra frames are content (animations, pages), refused rather than cut to the first frame. A
# camera's MPO JPEG is not among them: its first frame is the photo, the others previews or a second view.
ANIMATED_FORMATS = ("PNG", "GIF", "WEBP", "TIFF", "AVIF", "JXL")


def open_image(data: bytes, formats: Sequence[str] = READ_FORMATS) -> Image.Image:
    """``Image.open`` of ``data``, trying only ``formats`` (those this Pillow has; see :data:`READ_FORMATS`)."""
    Image.init()  # registers every plugin, so that the check below sees them
    return Image.open(io.BytesIO(data), formats=[f for f in formats if f in Image.OPEN])


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, formats: Sequence[str] = READ_FORMATS
) -> np.ndarray:
    """Return an ``(H, W, 3)`` uint8 array, or raise :class:`InvalidImageError` naming the problem; the bytes
    are read as one of ``formats`` only."""
    if not data:
        raise InvalidImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = open_image(data, formats)
            w, h = img.size
            if w * h > max_pixels:
                raise InvalidImageError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
            if w == 0 or h == 0:
                raise InvalidImageError(f"image has no pixels ({w}x{h})")
            if getattr(img, "is_animated", False) and img.format in ANIMATED_FORMATS and not _thumbnails_only(img):
                raise InvalidImageError(
                    f"{img.format} image has {img.n_frames} frames (an animation or a multi-page file); only "
                    "single-frame images are coded - extract the frames to archive them"
                )
            img.load()
            # as viewers show it: a camera's portrait photo is stored landscape with an EXIF orientation tag
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to turn
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError("not a decodable image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"corrupt or truncated image: {exc}") from None
    return _to_rgb8(img)


def _thumbnails_only(img: Image.Image) -> bool:
    """Whether a multi-page TIFF's pages after the first are reduced-resolution copies of it (NewSubfileType
    bit 0, as cameras and scanners write previews): then the first page is the image, as a camera's MPO."""
    if img.format != "TIFF":
        return False
    try:
        for page in range(1, img.n_frames):
            img.seek(page)
            if not int(img.tag_v2.get(254, 0)) & 1:
                return False
        return True
    finally:
        img.seek(0)


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "I":
            _check_range(arr, 0.0, 65535.0, "32-bit integer")
        # 16-bit modes are 0..65535 whatever the content (a dark scan is not an 8-bit image). Mode "I" (32-bit
        # integers, e.g. some TIFFs) says nothing of its range: values up to 255 are read as 8-bit, else 16-bit.
        scale = 65535.0 if img.mode != "I" or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        # 0..1 is the one range a float image has by convention; half a level of slack past either end (float
        # processing leaves -1e-7 or 1.0000001) rounds to the same 8-bit values
        _check_range(arr, 0.0, 1.0, "floating-point", slack=0.5 / 255)
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _check_range(arr: np.ndarray, low: float, high: float, kind: str, slack: float = 0.0) -> None:
    """Refuse a single-band image whose values fall outside the range it is read as (by more than ``slack``):
    clipping them would code a silently different image."""
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= low - slack and arr.max() <= high + slack):
        finite = arr[np.isfinite(arr)]
        values = f"from {finite.min():.7g} to {finite.max():.7g}" if finite.size else "all NaN or infinite"
        if 0 < finite.size < arr.size:
            values += f" and {arr.size - finite.size} NaN or infinite"
        raise InvalidImageError(
            f"{kind} image with values {values}, outside {low:g}..{high:g}: its brightness scale is unknown; "
            "convert it to an 8- or 16-bit image first"
        )
