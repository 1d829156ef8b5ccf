"""The archive's row format: one Parquet row per image, one binary column per codec chunk.

A codec writes a header and ``K`` chunks per image (DiffC: one chunk per coding step; a classical codec: one
chunk, the file). Why one column per chunk: Parquet reads per column chunk, so a decoder that wants the first
``k`` chunks projects ``chunk_001 .. chunk_k`` and never touches the bytes of later ones. A single ``list<binary>``
column would force reading every chunk of every image. Payload columns are stored uncompressed (bitstreams
do not compress) and without statistics; the small scalar columns are zstd-compressed with statistics so
readers can filter on them. Every field is documented in docs/format.md.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ArchiveError

FORMAT_NAME = "diffc-archive"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1: DiffC-only manifests; rows and shards have the same layout
METADATA_KEY = b"diffc.archive"
ROW_GROUP_SIZE = 256  # selecting a few images reads a few row groups; more groups would grow the footer
STATUS_OK = "ok"
STATUS_ERROR = "error"

# Per-image fields in the order they appear in a shard; ``header`` then, per chunk, ``chunk_k`` and ``crc_k``
# follow, so the bytes of a prefix (header + first k chunks) are one contiguous range of each row group.
RECORD_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_size", pa.int64()),
    pa.field("source_mtime", pa.timestamp("us", tz="UTC")),
    pa.field("source_etag", pa.string()),
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("channels", pa.int8()),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("cum_bits", pa.list_(pa.int64())),
    pa.field("checksum", pa.string()),
    pa.field("header", pa.binary()),
]
SCALAR_COLUMNS = [f.name for f in RECORD_FIELDS if f.name not in ("cum_bits", "checksum", "header")]

# What the encoder stage hands the writer: the record fields, the shard index, chunks and CRCs as lists.
ENCODED_SCHEMA = pa.schema(
    [
        *RECORD_FIELDS,
        pa.field("shard", pa.int32()),
        pa.field("chunks", pa.list_(pa.binary())),
        pa.field("crcs", pa.list_(pa.uint32())),
    ]
)


def chunk_column(k: int) -> str:
    """Name of the column holding chunk ``k`` (1-based)."""
    return f"chunk_{k:03d}"


def crc_column(k: int) -> str:
    """Name of the column holding the CRC-32 of chunk ``k``."""
    return f"crc_{k:03d}"


def payload_columns(chunks: int) -> list[str]:
    """``header`` and the chunk and CRC columns of the first ``chunks`` chunks, in file order."""
    return ["header", *(c for k in range(1, chunks + 1) for c in (chunk_column(k), crc_column(k)))]


def shard_schema(num_chunks: int, metadata: dict) -> pa.Schema:
    columns = [
        f
        for k in range(1, num_chunks + 1)
        for f in (pa.field(chunk_column(k), pa.binary()), pa.field(crc_column(k), pa.uint32()))
    ]
    return pa.schema([*RECORD_FIELDS, *columns], metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})


def chunk_crcs(chunks: list[bytes]) -> list[int]:
    """One CRC-32 per chunk, so a prefix can be verified without reading later chunks."""
    return [zlib.crc32(c) for c in chunks]


def row_checksum(header: bytes, chunks: list[bytes]) -> str:
    """SHA-256 over the header and the length-prefixed chunks: names the whole stream of one image."""
    h = hashlib.sha256()
    h.update(len(header).to_bytes(4, "big"))
    h.update(header)
    for chunk in chunks:
        h.update(len(chunk).to_bytes(4, "big"))
        h.update(chunk)
    return h.hexdigest()


def encoded_to_shard(rows: pa.Table, num_chunks: int, metadata: dict) -> pa.Table:
    """Spread the encoder's ``chunks``/``crcs`` lists into one column per chunk, in record order."""
    chunks, crcs = rows.column("chunks").to_pylist(), rows.column("crcs").to_pylist()

    def column(lists: list, k: int, kind: pa.DataType) -> pa.Array:
        return pa.array([v[k] if v is not None and k < len(v) else None for v in lists], kind)

    columns = [rows.column(f.name).cast(f.type) for f in RECORD_FIELDS]
    for k in range(num_chunks):
        columns += [column(chunks, k, pa.binary()), column(crcs, k, pa.uint32())]
    return pa.Table.from_arrays(columns, schema=shard_schema(num_chunks, metadata))


def shard_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    scalar = {*SCALAR_COLUMNS, "cum_bits", "checksum"}
    # Per-column options name Parquet leaf columns: a list column's leaf is "<name>.list.element".
    compression = {
        f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name: "zstd" if f.name in scalar else "none"
        for f in table.schema
    }
    pq.write_table(
        table,
        sink,
        row_group_size=ROW_GROUP_SIZE,
        compression=compression,
        use_dictionary=["status"],
        write_statistics=SCALAR_COLUMNS,
    )
    return sink.getvalue().to_pybytes()


def shard_metadata(path_or_file) -> dict:
    """The ``diffc.archive`` key of a shard's Parquet schema metadata."""
    meta = pq.read_schema(path_or_file).metadata or {}
    if METADATA_KEY not in meta:
        raise ArchiveError("shard has no diffc.archive schema metadata: not a diffc archive shard")
    return json.loads(meta[METADATA_KEY])


def verify_prefix(image_id: str, header: bytes, chunks: list[bytes], crcs: list[int]) -> None:
    """Raise :class:`ArchiveError` if any stored chunk of the prefix does not match its CRC-32."""
    if header is None:
        raise ArchiveError(f"image {image_id!r}: row has no header")
    for k, (chunk, crc) in enumerate(zip(chunks, crcs, strict=False), start=1):
        if chunk is None or zlib.crc32(chunk) != crc:
            raise ArchiveError(f"image {image_id!r}: chunk {k} fails its checksum (archive row corrupted)")
