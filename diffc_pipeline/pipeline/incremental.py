"""Incremental runs: which listed images the archive already holds, unchanged, and which are new or changed.

An archive grows by runs; each run only appends shards (never rewrites a committed one), with indices after
the highest committed one. So shard numbers follow commit order and the *latest version* of an image id is
its row in the highest-numbered shard that holds it - no extra column is needed, and a plain Parquet reader can
apply the same rule (see docs/format.md).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .archive import STATUS_ERROR
from .commit import data_path
from .reader import read_footer, shard_errors

SIGNATURE = ["source_uri", "source_size", "source_mtime", "source_etag"]  # "same source" = all equal
OUTCOME = ["status", "error"]  # whether the held version was coded, and why not
# An error row with this prefix could not read its source (a storage outage, a file moved away for a while):
# nothing about the image, so every incremental run tries it again. Other error rows (an undecodable or too
# large image, a failed encode) are tried again only when asked (--retry-errors: e.g. after raising a limit).
READ_ERROR_PREFIX = "read:"
EXAMPLES = 5  # names of deleted sources reported


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
    ids = index.column("id").take(order).to_pylist()
    keep = [order[i].as_py() for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    return index.take(pa.array(sorted(keep)))


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
        tables.append(t.append_column("shard", pa.array([name] * t.num_rows, pa.string())))
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
    return latest_rows(pa.concat_tables(tables))


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
    columns = ["id", *SIGNATURE, *(c for c in OUTCOME if c in held.column_names)]
    known = {row["id"]: row for row in held.select(columns).to_pylist()} if held.num_rows else {}
    keep, new, changed, retried = [], 0, 0, 0
    for row in items.select(["id", *SIGNATURE]).to_pylist():
        old = known.get(row["id"])
        versioned = row["source_mtime"] is not None or row["source_etag"] is not None
        fields = [k for k in SIGNATURE if not (k == "source_size" and row[k] < 0 and versioned)]
        if old is not None and row["source_etag"] is not None and old["source_etag"] == row["source_etag"]:
            fields.remove("source_mtime")  # the same object bytes uploaded again (a re-sync): not a change
        differs = old is not None and any(old[k] != row[k] for k in fields)
        failed = old is not None and not differs and old.get("status") == STATUS_ERROR
        again = failed and (retry_errors or str(old.get("error") or "").startswith(READ_ERROR_PREFIX))
        new += old is None
        changed += differs
        retried += again
        keep.append(old is None or differs or again)
    listed = set((items.column("id") if listed_ids is None else listed_ids).to_pylist())
    deleted = sorted(set(known) - listed)
    todo = items.filter(pa.array(keep, pa.bool_())) if items.num_rows else items
    return Delta(todo, new, changed, items.num_rows - new - changed - retried, deleted, retried)
