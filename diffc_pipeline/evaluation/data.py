"""The images an evaluation runs on: a fixed, deterministic subset of a Parquet dataset or an image folder.

Results are only comparable across runs and machines if the subset is a pure function of the dataset and the
arguments, so ids are sorted, a fixed-seed permutation picks ``limit`` of them, and the chosen ids are sorted
again (the subset of 500 is the same whatever the file order or the machine).

Preprocessing for the classical comparison: Tiny ImageNet is stored as JPEG q75, which flatters JPEG near q75;
a lossless source such as CBSD68 can be brought to the same scale by area downsampling (``downsample``, an
integer box filter that also averages away most sensor noise) and cut into ``tile``-sized squares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from ..errors import DiffcError
from ..images import DEFAULT_MAX_PIXELS, decode_image
from ..pipeline.sources import list_source, read_bytes
from .metrics import WIN_SIZE as MIN_SIDE

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
    id_column: str | None = None  # None: a Parquet input's "id" column if it has one, else FILE:ROW ids
    downsample: int = 1
    tile: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: Mapping[str, object] = field(default_factory=dict, repr=False)


def load_eval_images(source: ImageSource) -> list[EvalImage]:
    """Decode the chosen subset, downsampled and tiled as asked, in id order."""
    if source.downsample < 1:
        raise DiffcError(f"--downsample must be >= 1, got {source.downsample}")
    if source.tile is not None and source.tile < 1:
        raise DiffcError(f"--tile must be >= 1, got {source.tile}")
    encoded = _read_encoded(source)
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
    small = [im.id for im in out if min(im.pixels.shape[:2]) < MIN_SIDE]
    if small:  # found now, not after the codecs ran: MS-SSIM would fail on them and lose the whole run
        raise DiffcError(
            f"{len(small)} image(s) smaller than {MIN_SIDE} px on a side, too small for MS-SSIM: "
            f"{', '.join(small[:5])} (use a smaller --downsample or a larger --tile, or leave them out)"
        )
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


def _read_encoded(source: ImageSource) -> dict[str, bytes]:
    """The encoded bytes of the chosen subset by id. The listing and the ids are ``diffc compress``'s own
    (:func:`~diffc_pipeline.pipeline.sources.list_source`): the same files, globs, Parquet layouts and errors,
    and the same ids - so the same image and run seed give the same stream in eval and in an archive."""
    listed = list_source(source.url, source.storage_options, source.image_column, source.id_column)
    ids = listed.items.column("id").to_pylist()
    chosen = set(choose_subset(ids, source.limit))
    rows = listed.items.take(pa.array([i for i, image_id in enumerate(ids) if image_id in chosen], pa.int64()))
    out: dict[str, bytes] = {}
    for image_id, data in zip(
        rows.column("id").to_pylist(), read_bytes(rows, source.storage_options, source.image_column), strict=True
    ):
        if isinstance(data, Exception):
            raise DiffcError(f"cannot read image {image_id!r} of {listed.url}: {data}")
        out[image_id] = data
    return out
