"""The per-batch work of the Ray jobs: read + decode images (tasks), encode and decode streams (actors).

Batches travel as ``pyarrow.Table`` with explicit schemas (numpy conversion of binary and nested columns
is fragile in Ray Data, ray#35419). A failure of one image becomes an error row - ``status="error"`` plus
a message naming the stage - and the batch goes on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import TypeVar

import numpy as np
import pyarrow as pa

from ..codecs import CodecSpec, cumulative_bits
from ..errors import ModelMismatchError
from ..images import DEFAULT_BATCH_PIXELS, DEFAULT_MAX_PIXELS, decode_image, open_image
from . import faults
from .archive import ENCODED_SCHEMA, STATUS_ERROR, STATUS_OK, chunk_crcs, row_checksum
from .sources import SourceError, StorageUnavailableError, read_bytes

T = TypeVar("T")

DECODED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_size", pa.int64()),
        pa.field("source_mtime", pa.timestamp("us", tz="UTC")),
        pa.field("source_etag", pa.string()),
        pa.field("shard", pa.int32()),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("channels", pa.int8()),
        pa.field("pixels", pa.binary()),  # (H, W, 3) uint8, row-major
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)
PASS_THROUGH = ["id", "source_uri", "source_mtime", "source_etag", "shard", "seed"]


def error_text(stage: str, exc: BaseException) -> str:
    return f"{stage}: {exc}" if str(exc) else f"{stage}: {type(exc).__name__}"


def source_channels(data: bytes) -> int:
    """Bands of the stored image (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA/CMYK) before conversion to RGB."""
    with open_image(data) as img:
        return len(img.getbands())


def read_and_decode(
    items: pa.Table,
    storage_options: Mapping[str, object],
    image_column: str,
    max_pixels: int,
    batch_size: int,
) -> Iterator[pa.Table]:
    """Read one read unit's images, decode and validate them; yield tables of ``batch_size`` rows.

    Padding to a network's multiple is the codec's business (it pads and crops itself).
    """
    rows: list[dict] = []
    for item, data in zip(items.to_pylist(), read_bytes(items, storage_options, image_column), strict=True):
        row = {k: item[k] for k in PASS_THROUGH}
        row.update(source_size=item["source_size"], status=STATUS_OK)
        if isinstance(data, SourceError) and not isinstance(data, StorageUnavailableError):
            # the input itself holds no image there (a path-only row, a row past the file's end): permanent
            row.update(status=STATUS_ERROR, error=error_text("source", data))
        elif isinstance(data, Exception):  # the storage failed to hand the bytes over: retried by the next run
            row.update(status=STATUS_ERROR, error=error_text("read", data))
        else:
            row["source_size"] = len(data)
            try:
                pixels = decode_image(data, max_pixels)
                row.update(
                    height=pixels.shape[0],
                    width=pixels.shape[1],
                    channels=source_channels(data),
                    pixels=pixels.tobytes(),
                )
            except Exception as exc:  # any undecodable input is an error row, never a crashed job
                row.update(status=STATUS_ERROR, error=error_text("decode", exc))
        rows.append(row)
        if len(rows) >= batch_size:
            yield pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def split_by_pixels(group: list[T], pixels_each: int, budget: int) -> list[list[T]]:
    """``group`` (images of ``pixels_each`` pixels) in consecutive parts of at most ``budget`` pixels (at
    least one image per part)."""
    per_part = max(1, budget // max(1, pixels_each))
    return [group[i : i + per_part] for i in range(0, len(group), per_part)]


def load_codec(spec: dict, fingerprint: str, threads: int, device: str):
    """The codec of a model actor (``spec``: :meth:`CodecSpec.to_dict`), checked against the archive's
    fingerprint.

    Each actor builds the codec (and loads its model) itself; if the weights changed since the driver read
    them (a model being retrained in place), the actor must refuse rather than write streams that the
    manifest attributes to another model.
    """
    import torch

    torch.set_num_threads(threads)
    codec = CodecSpec(**spec).build(device)
    if codec.fingerprint != fingerprint:
        raise ModelMismatchError(
            f"codec {spec['name']!r} with model {spec['model']!r} as built on a worker (fingerprint "
            f"{codec.fingerprint[:12]}) is not the archive's (fingerprint {fingerprint[:12]}); did the model's "
            "weights change during the run?"
        )
    return codec


class Encoder:
    """Ray actor: builds the codec once, then compresses batches grouped by image size."""

    def __init__(
        self,
        spec: dict,
        fingerprint: str,
        threads: int,
        device: str,
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fault: str | None = None,
    ) -> None:
        self.codec = load_codec(spec, fingerprint, threads, device)
        self.batch_pixels = batch_pixels
        self.max_pixels = max_pixels
        self.fault = fault  # a fault-injection setting from the driver (tests only; see .faults)

    def __call__(self, batch: pa.Table) -> pa.Table:
        faults.before_encode(self.fault)
        rows = batch.to_pylist()
        groups: dict[tuple[int, int], list[dict]] = defaultdict(list)
        for row in rows:
            if row["status"] == STATUS_OK:
                groups[(row["height"], row["width"])].append(row)
        for (h, w), group in groups.items():
            work = self.codec.work_pixels(h, w)
            if work > self.max_pixels:  # the read stage checked h x w; the codec's padding can make it more
                padded_h, padded_w = self.codec.padded_size(h, w)
                for row in group:
                    row.update(
                        status=STATUS_ERROR,
                        error=f"encode: image of {w}x{h} pixels is coded padded to {padded_w}x{padded_h} = "
                        f"{work} pixels, over the limit of {self.max_pixels} pixels (--max-pixels)",
                    )
                continue
            for part in split_by_pixels(group, work, self.batch_pixels):
                self._encode_group(part, h, w)
        for row in rows:
            del row["pixels"]
        return pa.Table.from_pylist(rows, schema=ENCODED_SCHEMA)

    def _encode_group(self, group: list[dict], h: int, w: int) -> None:
        """One codec call per same-size group; if it fails, retry image by image to find the culprit."""
        try:
            pixels = np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(h, w, 3) for r in group])
            streams = self.codec.compress(pixels, [r["seed"] for r in group])
        except Exception as exc:
            if len(group) == 1:
                group[0].update(status=STATUS_ERROR, error=error_text("encode", exc))
                return
            for row in group:
                self._encode_group([row], h, w)
            return
        for row, stream in zip(group, streams, strict=True):
            row.update(
                header=stream.header,
                chunks=list(stream.chunks),
                cum_bits=cumulative_bits(stream.header, stream.chunks),
                crcs=chunk_crcs(stream.chunks),
                checksum=row_checksum(stream.header, stream.chunks),
            )
