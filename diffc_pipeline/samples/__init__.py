"""A handful of small sample images shipped with the package (72 KB), so ``make demo`` and the tests run on a
machine without the shared data: six 64x64 Tiny ImageNet validation JPEGs and two 96x96 crops of CBSD68 photos
(lossless PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import decode_image

SAMPLES_DIR = Path(__file__).resolve().parent


def sample_paths() -> list[Path]:
    return sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix in (".jpg", ".png"))


def load_images(data: str = "", count: int = 8, size: int = 64, image_column: str = "image") -> np.ndarray:
    """``count`` images as a ``uint8 (B, size, size, 3)`` batch: from ``data`` (a Parquet dataset or image
    folder URL) or, when empty, the bundled samples; larger images are centre-cropped, none is upscaled."""
    if data:
        from ..training.data import load_encoded_images

        blobs = load_encoded_images(data, image_column=image_column, limit=count)
    else:
        blobs = [p.read_bytes() for p in sample_paths()]
    arrays = [a for a in (decode_image(b) for b in blobs) if min(a.shape[:2]) >= size]
    if not arrays:
        raise ValueError(f"no image of at least {size}x{size} pixels found")
    batch = [_center_crop(arrays[i % len(arrays)], size) for i in range(count)]
    return np.stack(batch)


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]
