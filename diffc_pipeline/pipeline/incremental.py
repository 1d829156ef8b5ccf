"""Incremental runs: which listed images the archive already holds, unchanged, and which are new or changed.

An archive grows by runs; each run only appends shards (never rewrites a committed one), with indices after
the highest committed one. So shard numbers follow commit order and the *latest version* of an image id is
its row in the highest-numbered shard that holds it - no extra column is needed, and a plain Parquet reader can
apply the same rule (see docs/format.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .archive import RECORD_FIELDS, STATUS_ERROR
from .commit import data_path
from .reader import as_format, read_footer, shard_errors

SIGNATURE = ["source_uri", "source_size", "source_mtime", "source_etag"]  # "same source" = all equal
OUTCOME = ["status", "error"]  # whether the held version was coded, and why not
# An error row with this prefix could not read its source (a storage outage, a file moved away for a while):
# nothing about the image, so every incremental run tries it again. Other error rows (``source:`` the input
# holds no image there, ``decode:`` an undecodable or too large image, ``encode:``) are tried again only when
# asked (--retry-errors: e.g. after raising a limit).
READ_ERROR_PREFIX = "read:"
EXAMPLES = 5  # names of deleted sources reported
HELD_TYPES = {f.name: f.type for f in RECORD_FIELDS}


def new_run_id() -> str:
    """Sortable by start time, unique across hosts (random suffix)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def latest_rows(index: pa.Table) -> pa.Table:
    """Keep, per id, the row of the highest-numbered shard (``index`` has ``id`` and ``shard`` columns). By
    number, not name: ``shard-1000000`` follows ``shard-999999`` though it sorts before it as text."""
    if index.num_rows == 0:
        return index
    number = pc.cast(pc.replace_substring_regex(index.column("shard"), r"^.*-", ""), pa.int64())
    keyed = pa.table({"id": index.column("id"), "number": number})
    order = pc.sort_indices(keyed, sort_keys=[("id", "ascending"), ("number", "descending")])
    ids = index.column("id").take(order)
    first = np.ones(len(ids), dtype=bool)  # the first row of each id in that order is its latest
    first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    return index.take(pa.array(np.sort(order.to_numpy()[first])))


def held_sources(fs: fsspec.AbstractFileSystem, root: str, shards: list[str]) -> pa.Table:
    """The latest version of each id held by the committed ``shards``: id, shard, the source signature and
    the outcome (status, error).

    Only those columns' bytes are fetched (no read-ahead cache: s3fs's default fetched whole 50 MB blocks of
    payload behind each small column, i.e. every nightly run downloaded the whole archive)."""
    tables = []
    for name in sorted(shards):
        path = data_path(root, name)
        where = fs.unstrip_protocol(path)
        with shard_errors(where), fs.open(path, "rb", cache_type="none") as f:
            t = pq.ParquetFile(f, metadata=read_footer(f, where)).read(columns=["id", *SIGNATURE, *OUTCOME])
        t = as_format(t, pa.schema([(c, HELD_TYPES[c]) for c in t.column_names]), where)
        tables.append(t.append_column("shard", pa.array([name] * t.num_rows, pa.string())))
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
    return latest_rows(pa.concat_tables(tables))


def _differs(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """``a != b`` per element with null compared as a value (null equals null, and nothing else)."""
    return pc.if_else(
        pc.and_(pc.is_valid(a), pc.is_valid(b)), pc.not_equal(a, b), pc.not_equal(pc.is_null(a), pc.is_null(b))
    )


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """``name``, or nulls where the table lacks it (a held table without outcome columns)."""
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def _column_equals(table: pa.Table, name: str, value: str) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(_column(table, name), value), False)


@dataclass
class Delta:
    """How the listing compares with the archive."""

    todo: pa.Table  # the listed items to compress (new, changed or retried), in listing order
    new: int
    changed: int
    unchanged: int  # held, unchanged and not retried
    deleted: list[str]  # ids held whose source is no longer listed
    retried: int = 0  # held as an error row of an unchanged source, coded again


def compare(
    items: pa.Table, held: pa.Table, listed_ids: pa.Array | None = None, retry_errors: bool = False
) -> Delta:
    """New: id not held. Changed: held with another URI, size, mtime or ETag. Retried: held unchanged as an
    error row that could not read its source (:data:`READ_ERROR_PREFIX`), or as any error row with
    ``retry_errors``: a storage outage on one night must not leave an image out of the archive for good.
    Deleted: held, not listed (in ``listed_ids``, every id the listing found, when ``items`` is only the first
    N of them: ``--limit``). An object's ETag, where the listing has one, decides over its modification time:
    ``aws s3 sync`` uploading the same bytes again made every image "changed", coded again as a new version.

    A size the listing does not know (-1: a Parquet row, whose bytes only a read would tell; an archive row
    holds the bytes it read) is not compared when the listing knows the file's mtime or ETag: such a row is
    the same when its file's URI#row, mtime and ETag are (comparing the size made every Parquet row "changed"
    on every run, and each nightly run re-coded the set). With neither (some HTTP or FTP listings) nothing
    would tell a replaced file, so such a row counts as changed, as before."""
    if held.num_rows == 0:  # a new archive: everything listed is new
        return Delta(items, items.num_rows, 0, 0, [])
    # Arrow columns, not Python rows: a nightly run compares every listed image with the archive, and dicts
    # of rows cost ~1.4 GB and 13 s per million images.
    mine = items.select(["id", *SIGNATURE]).append_column("_pos", pa.array(np.arange(items.num_rows)))
    theirs = held.select(["id", *SIGNATURE, *(c for c in OUTCOME if c in held.column_names)])
    theirs = theirs.rename_columns(["id", *(f"old_{c}" for c in theirs.column_names[1:])])
    theirs = theirs.append_column("_held", pa.array(np.ones(theirs.num_rows, dtype=bool)))
    joined = mine.join(theirs, keys="id", join_type="left outer", use_threads=False).sort_by("_pos")
    held_now = pc.fill_null(joined.column("_held"), False)
    versioned = pc.or_(pc.is_valid(joined.column("source_mtime")), pc.is_valid(joined.column("source_etag")))
    unknown_size = pc.and_(pc.less(joined.column("source_size"), 0), versioned)
    same_etag = pc.fill_null(pc.equal(joined.column("source_etag"), joined.column("old_source_etag")), False)
    differs_by = {k: _differs(joined.column(k), joined.column(f"old_{k}")) for k in SIGNATURE}
    differs_by["source_size"] = pc.and_not(differs_by["source_size"], unknown_size)
    differs_by["source_mtime"] = pc.and_not(differs_by["source_mtime"], same_etag)  # the same bytes re-synced
    differs = pc.and_(held_now, functools.reduce(pc.or_, differs_by.values()))
    failed = pc.and_(pc.and_not(held_now, differs), _column_equals(joined, "old_status", STATUS_ERROR))
    unread = pc.fill_null(pc.starts_with(_column(joined, "old_error"), READ_ERROR_PREFIX), False)
    again = failed if retry_errors else pc.and_(failed, unread)
    keep = pc.or_(pc.or_(pc.invert(held_now), differs), again)
    new, changed, retried = (int(pc.sum(c).as_py() or 0) for c in (pc.invert(held_now), differs, again))
    listed = items.column("id") if listed_ids is None else listed_ids
    if isinstance(listed, pa.ChunkedArray):
        listed = listed.combine_chunks()
    gone = pc.invert(pc.is_in(held.column("id"), value_set=listed.cast(held.column("id").type)))
    deleted = sorted(held.column("id").filter(gone).to_pylist())
    todo = items.filter(keep) if items.num_rows else items
    return Delta(todo, new, changed, items.num_rows - new - changed - retried, deleted, retried)
