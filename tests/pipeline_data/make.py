"""Write small test images of every layout the pipeline must accept or reject."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def rgb(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    """A smooth random colour image (smooth so that codecs behave as on photos, not noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    return np.asarray(img)


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def write_images(folder: Path, n: int, h: int = 16, w: int = 16, sub: str = "") -> list[str]:
    """``n`` PNGs under ``folder/sub``; returns their ids (paths relative to ``folder``)."""
    (folder / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        rel = f"{sub}/img{i:03d}.png" if sub else f"img{i:03d}.png"
        (folder / rel).write_bytes(png_bytes(rgb(i, h, w)))
        ids.append(rel)
    return ids


def odd_layouts(folder: Path) -> dict[str, int]:
    """Gray, gray+alpha, RGBA, 16-bit, CMYK, palette images: name -> channels of the stored image."""
    folder.mkdir(parents=True, exist_ok=True)
    base = rgb(99)
    gray = base[:, :, 0]
    Image.fromarray(gray, "L").save(folder / "gray.png")
    Image.fromarray(np.dstack([gray, gray]), "LA").save(folder / "gray_alpha.png")
    Image.fromarray(np.dstack([base, gray]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(base).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(base).convert("P").save(folder / "palette.png")
    return {
        "gray.png": 1,
        "gray_alpha.png": 2,
        "rgba.png": 4,
        "gray16.png": 1,
        "cmyk.jpg": 4,
        "palette.png": 1,
    }


def bad_files(folder: Path) -> list[str]:
    """Files named like images that are not decodable ones."""
    folder.mkdir(parents=True, exist_ok=True)
    good = png_bytes(rgb(7))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not an image")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    return ["empty.png", "text.png", "truncated.png"]


def bomb_png(h: int = 8000, w: int = 8000) -> bytes:
    """A PNG whose header claims h x w pixels: compressed it is tiny."""
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_parquet(path: Path, n: int, row_group_size: int = 4, start: int = 0) -> list[str]:
    """A Parquet file of ``n`` PNGs with columns id, label, image (like tinyimagenet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [f"p{start + i:04d}" for i in range(n)]
    table = pa.table(
        {
            "id": ids,
            "label": ["x"] * n,
            "image": [png_bytes(rgb(1000 + start + i)) for i in range(n)],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return ids
