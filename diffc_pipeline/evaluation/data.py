"""The images an evaluation runs on: a fixed, deterministic subset of a Parquet dataset or an image folder.

Results are only comparable across runs and machines if the subset is a pure function of the dataset and the
arguments, so ids are sorted, a fixed-seed permutation picks ``limit`` of them, and the chosen ids are sorted
again (the subset of 500 is the same whatever the file order or the machine).

Preprocessing for the classical comparison: Tiny ImageNet is stored as JPEG q75, which flatters JPEG near q75;
a lossless source such as CBSD68 can be brought to the same scale by area downsampling (``downsample``, an
integer box filter that also averages away most sensor noise) and cut into ``tile``-sized squares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ..errors import DiffcError
from ..images import DEFAULT_MAX_PIXELS, decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SUBSET_SEED = 20221  # fixed: the subset must not depend on anything but the dataset and --limit


@dataclass(frozen=True)
class EvalImage:
    id: str
    pixels: np.ndarray  # (H, W, 3) uint8


@dataclass(frozen=True)
class ImageSource:
    """Where to read images and how to prepare them."""

    url: str
    limit: int | None = None
    image_column: str = "image"
    id_column: str = "id"
    downsample: int = 1
    tile: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


def load_eval_images(source: ImageSource, **storage_options) -> list[EvalImage]:
    """Decode the chosen subset, downsampled and tiled as asked, in id order."""
    if source.downsample < 1:
        raise DiffcError(f"--downsample must be >= 1, got {source.downsample}")
    if source.tile is not None and source.tile < 1:
        raise DiffcError(f"--tile must be >= 1, got {source.tile}")
    fs, root = fsspec.url_to_fs(source.url, **storage_options)
    encoded = _read_encoded(fs, root, source)
    out: list[EvalImage] = []
    for image_id in sorted(encoded):
        pixels = decode_image(encoded[image_id], source.max_pixels)
        pixels = area_downsample(pixels, source.downsample)
        if source.tile is None:
            out.append(EvalImage(image_id, pixels))
        else:
            out.extend(EvalImage(f"{image_id}_t{i}", t) for i, t in enumerate(tiles(pixels, source.tile)))
    if not out:
        raise DiffcError(f"no images to evaluate from {source.url} (tiles larger than the images?)")
    return out


def choose_subset(ids: list[str], limit: int | None) -> list[str]:
    """The first ``limit`` ids of a fixed-seed permutation of the sorted ids, sorted again."""
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise DiffcError("image ids are not unique")
    if limit is None or limit >= len(ordered):
        return ordered
    perm = np.random.default_rng(SUBSET_SEED).permutation(len(ordered))
    return sorted(ordered[i] for i in perm[:limit])


def area_downsample(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks (Pillow's box reduce; a ragged edge averages what exists)."""
    if factor == 1:
        return pixels
    return np.asarray(Image.fromarray(pixels).reduce(factor), dtype=np.uint8)


def tiles(pixels: np.ndarray, size: int) -> list[np.ndarray]:
    """Non-overlapping ``size x size`` tiles in row-major order; a ragged right/bottom edge is dropped."""
    h, w, _ = pixels.shape
    return [
        np.ascontiguousarray(pixels[r : r + size, c : c + size])
        for r in range(0, h - size + 1, size)
        for c in range(0, w - size + 1, size)
    ]


def _read_encoded(fs: fsspec.AbstractFileSystem, root: str, source: ImageSource) -> dict[str, bytes]:
    if fs.isfile(root):
        paths = [root]
    elif fs.isdir(root):
        paths = sorted(p for p in fs.find(root) if p.lower().endswith((".parquet", *IMAGE_SUFFIXES)))
    else:
        raise DiffcError(f"{source.url}: no such file or directory")
    parquet = [p for p in paths if p.lower().endswith(".parquet")]
    if parquet:
        return _read_parquet(fs, parquet, source)
    files = [p for p in paths if p.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise DiffcError(f"no Parquet or image files under {source.url}")
    by_id = {_file_id(p, root): p for p in files}
    return {i: fs.cat_file(by_id[i]) for i in choose_subset(list(by_id), source.limit)}


def _file_id(path: str, root: str) -> str:
    """The path relative to the folder, suffix kept: the id ``diffc compress`` gives the same file, so that
    the same image and run seed give the same stream in both."""
    rel = PurePosixPath(path).relative_to(root) if path != root else PurePosixPath(PurePosixPath(path).name)
    return str(rel)


def _read_parquet(fs: fsspec.AbstractFileSystem, paths: list[str], source: ImageSource) -> dict[str, bytes]:
    """Read ids first (cheap), then only the image bytes of the chosen rows."""
    ids_per_file: list[list[str]] = []
    for path in paths:
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
            missing = {source.id_column, source.image_column} - set(schema.names)
            if missing:
                raise DiffcError(f"{path}: no column(s) {sorted(missing)} (columns: {schema.names})")
            f.seek(0)
            ids_per_file.append([str(v) for v in pq.read_table(f, columns=[source.id_column]).column(0).to_pylist()])
    chosen = set(choose_subset([i for ids in ids_per_file for i in ids], source.limit))
    out: dict[str, bytes] = {}
    for path, ids in zip(paths, ids_per_file, strict=True):
        rows = [k for k, i in enumerate(ids) if i in chosen]
        if not rows:
            continue
        with fs.open(path, "rb") as f:
            column = pq.read_table(f, columns=[source.image_column]).column(0).take(rows)
        out.update(zip((ids[k] for k in rows), column.to_pylist(), strict=True))
    return out
