"""Open an archive for reading: manifest, committed shards, a small index, and prefixes of payloads.

The index (ids, sizes, status, cumulative bits) is read first and alone, so choosing which images and
how many chunks to decode costs a few bytes per image; payload columns are then read for exactly the
chosen chunks. Byte counts of every payload read are kept, to show what a low-bitrate decode costs.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ArchiveError
from .archive import METADATA_KEY, READABLE_VERSIONS, RECORD_FIELDS, payload_columns
from .commit import committed_shards, data_path
from .manifest import Manifest, read_manifest
from .sources import open_fs, public_url, remote_errors

INDEX_COLUMNS = ["id", "source_uri", "source_size", "height", "width", "channels", "seed", "status", "error"]


@dataclass
class Archive:
    fs: fsspec.AbstractFileSystem
    root: str
    url: str  # printable (no credentials)
    manifest: Manifest
    shards: dict[str, dict]  # committed shard name -> marker

    def shard_path(self, name: str) -> str:
        return data_path(self.root, name)

    def shard_url(self, name: str) -> str:
        """Where shard ``name`` lies, as the user named the archive (no credentials): for messages."""
        return self.url.rstrip("/") + self.shard_path(name)[len(self.root) :]


def open_archive(url: str, storage_options: Mapping[str, object]) -> Archive:
    """The archive at ``url``: its manifest and committed shards. Storage that cannot be read (wrong
    credentials, an unreachable endpoint) is one :class:`~.sources.SourceError` naming the URL."""
    fs, root = open_fs(url, storage_options)
    root = root.rstrip("/")
    with remote_errors("read", url, storage_options):
        manifest = read_manifest(fs, root)
        if manifest is None:
            raise ArchiveError(f"{public_url(url)} holds no diffc archive (no manifest.json)")
        shards = committed_shards(fs, root)
    return Archive(fs, root, public_url(url), manifest, shards)


class CountingFile(io.RawIOBase):
    """A read-only file that counts the bytes handed out: what a Parquet reader really fetched."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def read_index(archive: Archive, with_bits: bool = True) -> tuple[pa.Table, int]:
    """The index of every committed shard, plus ``shard`` (name) and ``row`` (row in the shard) columns.

    ``with_bits`` adds ``cum_bits`` (needed to choose a prefix by bitrate, not for a fixed step). Returns
    the table and the bytes read for it.
    """
    columns = [*INDEX_COLUMNS, "cum_bits"] if with_bits else INDEX_COLUMNS
    types = {f.name: f.type for f in RECORD_FIELDS}
    schema = pa.schema([*((c, types[c]) for c in columns), ("shard", pa.string()), ("row", pa.int64())])
    tables, nbytes = [], 0
    for name in sorted(archive.shards):
        path, where = archive.shard_path(name), archive.shard_url(name)
        with shard_errors(where), archive.fs.open(path, "rb", cache_type="none") as raw, CountingFile(raw) as f:
            metadata = read_footer(f, where)
            _check_shard(archive, name, metadata)
            t = pq.ParquetFile(f, metadata=metadata).read(columns=columns)
            nbytes += f.bytes_read
        t = t.append_column("shard", pa.array([name] * t.num_rows, pa.string()))
        t = t.append_column("row", pa.array(range(t.num_rows), pa.int64()))
        tables.append(as_format(t, schema, where))
    # an archive without committed shards (a first run in progress or killed) has the same, typed, columns
    return (pa.concat_tables(tables) if tables else schema.empty_table()), nbytes


def _check_shard(archive: Archive, name: str, metadata: pq.FileMetaData) -> None:
    """Refuse a shard of another format or codec, or one lacking the payload columns of the manifest's chunks
    (which a read task would otherwise fail on, deep in a Ray job)."""
    meta = json.loads((metadata.metadata or {}).get(METADATA_KEY, b"{}"))
    if meta.get("format_version") not in READABLE_VERSIONS or meta.get(
        "codec_fingerprint"
    ) != archive.manifest.codec.get("fingerprint"):
        raise ArchiveError(f"shard {name} of {archive.url} was written by another format or codec than its manifest")
    columns = set(metadata.schema.to_arrow_schema().names)
    missing = [c for c in payload_columns(archive.manifest.num_chunks) if c not in columns]
    if missing:
        raise ArchiveError(
            f"shard {name} of {archive.url} lacks {len(missing)} payload columns ({', '.join(missing[:3])}, ...) of "
            f"the {archive.manifest.num_chunks} chunks its manifest names"
        )


@contextmanager
def shard_errors(where: str) -> Iterator[None]:
    """A shard file that is gone, cut short or garbled becomes one :class:`ArchiveError` naming it (``where``),
    not a ``FileNotFoundError`` or Arrow traceback: archives get copied, synced and pruned by hand."""
    try:
        yield
    except FileNotFoundError:
        raise ArchiveError(
            f"shard file {where} is missing (its commit marker says it was written; restore the file, or delete "
            "the marker and compress again to redo that shard)"
        ) from None
    except (OSError, pa.ArrowException) as exc:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        cause = " ".join(str(exc).split()) or type(exc).__name__  # Arrow's messages span lines
        raise ArchiveError(f"shard file {where} is truncated or corrupt: {cause}") from None


def as_format(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """``table`` with the archive format's column types: a shard rewritten by another tool (``large_string``
    ids, int64 sizes) reads, and compares, as the format says; columns that cannot be cast are one
    :class:`ArchiveError` naming the shard."""
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
        raise ArchiveError(f"shard {where} does not hold the archive's column types: {exc}") from None


def read_footer(f, where: str) -> pq.FileMetaData:
    """Read the Parquet footer of the shard file ``where`` (named in errors) with exactly two small reads.

    pyarrow's own open reads the last 64 KiB speculatively, which for a small shard would be more than the
    chunks a low-bitrate decode needs.
    """
    length = f.seek(0, io.SEEK_END)
    if length < 12:  # magic, footer length, magic
        raise ArchiveError(f"shard file {where} is truncated: {length} bytes, too short for Parquet")
    f.seek(-8, io.SEEK_END)
    tail = f.read(8)
    size = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or size > length - 12:
        raise ArchiveError(f"shard file {where} is truncated or not Parquet (no Parquet footer at its end)")
    f.seek(-8 - size, io.SEEK_END)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + f.read(size) + tail))


def read_prefixes(fs: fsspec.AbstractFileSystem, path: str, rows: list[int], chunks: int) -> tuple[pa.Table, int]:
    """Rows ``rows`` of one shard: header, chunks and CRCs of the first ``chunks`` chunks; and bytes read.

    Only the footer and, in the row groups holding ``rows``, those columns (one contiguous range) are
    fetched.
    """
    columns = payload_columns(chunks)
    where = fs.unstrip_protocol(path)
    with shard_errors(where), fs.open(path, "rb", cache_type="none") as raw, CountingFile(raw) as f:
        pf = pq.ParquetFile(f, metadata=read_footer(f, where))
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        starts = [0, *itertools.accumulate(sizes)]
        group_of = {r: bisect.bisect_right(starts, r) - 1 for r in rows}
        groups = sorted(set(group_of.values()))
        base = dict(zip(groups, [0, *itertools.accumulate(sizes[g] for g in groups)], strict=False))
        table = pf.read_row_groups(groups, columns=columns)
        local = [base[group_of[r]] + r - starts[group_of[r]] for r in rows]
        return table.take(pa.array(local, pa.int64())), f.bytes_read
