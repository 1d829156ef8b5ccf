"""Find the images of a dataset on any fsspec filesystem, and read their bytes back: the one image listing of
the tool (compress, train and the benchmarks list through :func:`list_source`).

Two kinds of input: a folder or glob of image files (searched recursively), and a Parquet dataset with one
image per row in a bytes column. Listing happens once, on the driver, and yields an :class:`pyarrow.Table`
of items (one row per image); the Ray read stage later opens exactly the items it is handed, so the
dataset is never materialised as a whole.
"""

from __future__ import annotations

import datetime as dt
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import has_magic
from fsspec.utils import glob_translate

from ..errors import ClusterError, DiffcError
from ..images import IMAGE_EXTENSIONS
from ..redaction import MASKED_LENGTH, looks_secret


class SourceError(DiffcError):
    """The input URL is missing, empty, unreadable, or not an image folder or Parquet dataset."""


class StorageUnavailableError(SourceError, ClusterError):
    """The storage did not answer (a refused or dropped connection, a timeout, an HTTP 5xx, throttling): not
    the user's input, so the CLI exits 1 as for a cluster out of reach, and a scheduler may retry."""


# Failures of the storage service rather than of the request, by exception class name (botocore's and
# aiohttp's classes are not imported: the clients are optional) or by what the message says.
UNAVAILABLE_NAMES = frozenset(
    {
        "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
        "ClientConnectorError", "ServerDisconnectedError", "ServerTimeoutError", "ClientOSError",
    }
)  # fmt: skip
UNAVAILABLE_TEXT = re.compile(
    r"\((?:500|502|503|504)\)|Service ?Unavailable|SlowDown|Throttl|InternalError|RequestTimeout|Bad Gateway"
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: s3fs re-raises botocore's errors as OSError) says the storage did
    not answer, as opposed to refusing the request (no such bucket, access denied)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ConnectionError | TimeoutError) or type(seen).__name__ in UNAVAILABLE_NAMES:
            return True
        if UNAVAILABLE_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# A Parquet input without this column gets FILE:ROW ids when no id column is named (id_column=None); a column
# the user named, this one included, must exist.
DEFAULT_ID_COLUMN = "id"

# What to do about remote failures users meet first, by exception class name (botocore's classes are not
# imported: s3fs is optional).
REMOTE_HINTS = {
    "NoCredentialsError": "set credentials: AWS_* variables, a profile, or -S key=... -S secret=...; "
    "or -S anon=true for a public bucket",
    "EndpointConnectionError": "check -S client_kwargs.endpoint_url and the network",
}
# Numbers in storage option values: decimal only (not "nan", "inf" or "1_000", which Python would also accept)
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


ITEM_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # file to open (the Parquet file for row items)
        pa.field("row", pa.int64(), nullable=False),  # row in that Parquet file, -1 for image files
        pa.field("row_group", pa.int32(), nullable=False),  # row group holding `row`, -1 for image files
        pa.field("source_size", pa.int64(), nullable=False),  # from the listing; -1 where unknown
        pa.field("source_mtime", pa.timestamp("us", tz="UTC")),
        pa.field("source_etag", pa.string()),
    ]
)


@dataclass(frozen=True)
class Source:
    """Where the images are and how to read them; ``url`` never carries credentials."""

    url: str
    kind: str  # "images" | "parquet"
    image_column: str
    id_column: str
    items: pa.Table  # ITEM_SCHEMA, sorted in the order shards are cut
    skipped: int  # files found that are neither images nor Parquet
    limit: int = 0  # only the first ``limit`` inputs were kept (0: all)
    listed_ids: pa.Array | None = None  # with a limit: every id the listing found (what an archive may lose)

    def describe(self) -> dict:
        """What the manifest records about the input (nothing secret: storage options stay out)."""
        d: dict = {"url": self.url, "kind": self.kind}
        if self.kind == "parquet":
            d.update(image_column=self.image_column, id_column=self.id_column)
        if self.limit:
            d["limit"] = self.limit
        return d


def parse_storage_options(pairs: list[str]) -> dict[str, object]:
    """``["key=value", ...]`` -> dict; ``a.b=c`` nests (``client_kwargs.endpoint_url=...``); values are typed
    by :func:`_typed`."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SourceError(f"--storage-option wants KEY=VALUE, got {key or pair!r}")
        *parents, leaf = key.split(".")
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})  # type: ignore[assignment]
            if not isinstance(node, dict):
                raise SourceError(f"--storage-option {key}: {parent} is both a value and a group")
        node[leaf] = _typed(leaf, value)
    return options


def _typed(name: str, value: str) -> object:
    """The value as the filesystem expects it: ``anon=true`` / ``use_ssl=false`` as booleans and
    ``config_kwargs.retries.max_attempts=3`` as a number (botocore compares it with an int; a string fails
    deep inside the client). A credential stays the string it was typed as (a numeric password must not
    lose its leading zeros), and so does a value in double quotes (``-S 'region="1"'``), quotes removed."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if not looks_secret(name):
        if _INT.fullmatch(value):
            return int(value)
        if _FLOAT.fullmatch(value):
            return float(value)
    return value


def public_url(url: str) -> str:
    """The URL without any ``user:password@`` part, safe to print and to store in an archive."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def canonical_url(url: str) -> str:
    """``url`` spelled one way, for the manifest and for telling whether two runs read the same input: a local
    path made absolute (``data``, ``./data/`` and ``/home/me/data`` are one input; a relative path run from
    another folder is another; ``..`` and ``.`` resolved), ``file://`` dropped, a trailing ``/`` dropped.
    Remote URLs keep their protocol (and any credentials: :func:`public_url` drops those) and are otherwise
    as given. A listing reads the canonical URL, so the same files get the same source URIs whichever way
    the input was spelled."""
    if "::" in url:  # a chained URL (simplecache::s3://...): fsspec resolves its links itself
        return url
    local = url[len("file://") :] if url.startswith("file://") and len(url) > len("file://") else url
    if "://" not in local:
        local = os.path.abspath(os.path.expanduser(local))
        return local if local == "/" else local.rstrip("/")
    return url.rstrip("/") if not url.endswith("://") else url


def open_fs(url: str, storage_options: Mapping[str, object]) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.url_to_fs(url, **dict(storage_options))
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {public_url(url)}: {exc}") from None


def list_source(
    url: str,
    storage_options: Mapping[str, object],
    image_column: str = "image",
    id_column: str | None = None,
    limit: int = 0,
) -> Source:
    """List every image under ``url`` (a folder, a glob, an image file, or Parquet file(s)).

    ``limit`` keeps the first N in sorted order (a sample of a dataset, e.g. for benchmarks). ``id_column``
    ``None``: a Parquet input's ``id`` column if it has one, else FILE:ROW ids.
    """
    url = canonical_url(url)
    fs, path = open_fs(url, storage_options)
    with remote_errors("list", url, storage_options):
        files, skipped = _find_files(fs, path, url)
    parquet = sorted(p for p in files if p.lower().endswith(".parquet"))
    images = sorted(p for p in files if p.lower().endswith(IMAGE_EXTENSIONS))
    if parquet and images:
        raise SourceError(
            f"{public_url(url)} mixes Parquet files and image files; point INPUT at one kind "
            "(a glob such as '.../*.png' selects the images)"
        )
    if parquet:
        items = _parquet_items(fs, parquet, image_column, id_column, storage_options)
        kind = "parquet"
    else:
        root = _root_of(fs, path)
        items = _image_items(fs, images, files, root)
        kind = "images"
    if items.num_rows == 0:
        raise SourceError(
            f"no images found in {public_url(url)} (looked for {', '.join(IMAGE_EXTENSIONS)} files "
            "and Parquet datasets)"
        )
    listed_ids = items.column("id").combine_chunks() if limit and items.num_rows > limit else None
    if limit:
        items = items.slice(0, limit)
    _check_unique_ids(items)
    return Source(
        public_url(url), kind, image_column, id_column or DEFAULT_ID_COLUMN, items, skipped, limit, listed_ids
    )


@contextmanager
def remote_errors(action: str, url: str, storage_options: Mapping[str, object]) -> Iterator[None]:
    """Turn any failure of the filesystem (botocore, aiohttp, OSError, Arrow: many unrelated types) into one
    :class:`SourceError` naming the URL and the cause, instead of a traceback from deep in the client.

    :class:`DiffcError` passes as raised (it already names the problem), and so does ``KeyboardInterrupt``
    (not an ``Exception``). The message holds the public URL and the exception, never the storage options,
    and any secret option value that the client quoted is masked.
    """
    try:
        yield
    except DiffcError:
        raise
    except Exception as exc:
        name = type(exc).__name__
        detail = _masked(str(exc).strip() or name, storage_options)
        hint = REMOTE_HINTS.get(name)
        error = StorageUnavailableError if is_unavailable(exc) else SourceError
        raise error(f"cannot {action} {public_url(url)}: {name}: {detail}" + (f" ({hint})" if hint else "")) from None


def _masked(text: str, storage_options: Mapping[str, object]) -> str:
    """``text`` with the values of secret-looking storage options (keys, tokens, passwords) replaced by ***."""
    for key, value in storage_options.items():
        if isinstance(value, Mapping):
            text = _masked(text, value)
        elif isinstance(value, str) and len(value) >= MASKED_LENGTH and looks_secret(key):
            text = text.replace(value, "***")
    return text


def _find_files(fs: fsspec.AbstractFileSystem, path: str, url: str) -> tuple[dict[str, dict], int]:
    """All files under ``path`` (recursive), or matching it if it is a glob, with their listing info."""
    if is_glob(fs, path):
        found = fs.glob(path, detail=True)
        files: dict[str, dict] = {}
        for p, info in found.items():
            if info.get("type") == "directory":
                files.update(fs.find(p, detail=True))
            else:
                files[p] = info
    elif not fs.exists(path):
        raise SourceError(f"input {public_url(url)} does not exist")
    elif fs.isdir(path):
        files = fs.find(path, detail=True)
    else:
        files = {path: fs.info(path)}
    files = {p: i for p, i in files.items() if not any(part.startswith(".") for part in p.split("/")[-1:])}
    usable = {p: i for p, i in files.items() if p.lower().endswith((*IMAGE_EXTENSIONS, ".parquet"))}
    for p in usable:  # ids, manifests and Parquet strings are UTF-8: one such name would stop the run later
        if not p.isascii():
            try:
                p.encode("utf-8")
            except UnicodeEncodeError:
                raise SourceError(
                    f"file name {p!r} under {public_url(url)} is not valid UTF-8; rename it (ids are UTF-8)"
                ) from None
    return usable, len(files) - len(usable)


def would_list(
    url: str, storage_options: Mapping[str, object], fs: fsspec.AbstractFileSystem, paths: list[str]
) -> bool:
    """Whether a listing of ``url`` would take in any of ``paths`` (on ``fs``): what an archive written there
    would hold, which the next run would then list as input. A folder input takes in everything below it; a
    glob takes in what it matches and everything below a folder it matches (``in/*.png`` never matches
    ``in/arch/shards/...``; ``in/*`` does)."""
    in_fs, path = open_fs(canonical_url(url), storage_options)
    if not same_filesystem(in_fs, fs):
        return False
    paths = [posixpath.normpath(p) for p in paths]
    with remote_errors("list", url, storage_options):
        if is_glob(in_fs, path):
            pattern, root = re.compile(glob_translate(path)), posixpath.normpath(_root_of(in_fs, path))
            candidates = set()
            for p in paths:  # the path and every folder above it, up to the glob's root
                while p.startswith(root.rstrip("/") + "/"):
                    candidates.add(p)
                    p = posixpath.dirname(p)
            return any(pattern.match(c) for c in candidates)
        if in_fs.isdir(path):
            return any(within(p, path) for p in paths)
    return False  # a single file, or nothing there (the listing names that problem)


def is_glob(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` is a pattern: it has wildcards and names nothing that exists (a folder called
    ``shots[1]`` is that folder, not the pattern that matches ``shots1``)."""
    return has_magic(path) and not fs.exists(path)


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both normalised: ``a/./b/`` is ``a/b``)."""
    path, folder = posixpath.normpath(path), posixpath.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    """The filesystem's protocol names (fsspec gives a string or a tuple)."""
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def same_filesystem(a: fsspec.AbstractFileSystem, b: fsspec.AbstractFileSystem) -> bool:
    """Whether paths on ``a`` and ``b`` name the same places (``s3`` and ``s3a``, ``file`` and ``local`` alike):
    the one test of "is OUTPUT inside that folder" for archives and inputs."""
    return bool(set(protocols(a)) & set(protocols(b)))


def _root_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Ids are paths relative to this folder: the input folder, or the part of a glob before any wildcard."""
    if is_glob(fs, path):
        head = []
        for part in path.split("/"):
            if has_magic(part):
                break
            head.append(part)
        return "/".join(head)
    return path if fs.isdir(path) else path.rsplit("/", 1)[0]


def _image_items(fs: fsspec.AbstractFileSystem, images: list[str], info: dict[str, dict], root: str) -> pa.Table:
    prefix = root.rstrip("/") + "/"
    rows = []
    for p in images:
        rel = p[len(prefix) :] if p.startswith(prefix) else p.rsplit("/", 1)[-1]
        mtime, etag = _version_of(info[p])
        uri = fs.unstrip_protocol(p)
        rows.append((rel, uri, uri, -1, -1, int(info[p].get("size") or -1), mtime, etag))
    return _table(rows)


def _parquet_items(
    fs: fsspec.AbstractFileSystem,
    files: list[str],
    image_column: str,
    id_column: str | None,
    storage_options: Mapping[str, object],
) -> pa.Table:
    """One item per row; rows keep their file order so a read task touches one row group at a time.

    Without an ``id`` column (and none named) a file's rows get FILE:ROW ids; a column the user named must be
    there, or every id would silently be FILE:ROW instead of theirs."""
    column = id_column or DEFAULT_ID_COLUMN
    rows = []
    for p in files:
        uri = fs.unstrip_protocol(p)
        with remote_errors("read", uri, storage_options):
            mtime, etag = _version_of(fs.info(p))
            # no read-ahead cache: s3fs's default fetched the whole file (its images) behind the id column
            with fs.open(p, "rb", cache_type="none") as f:
                pf = pq.ParquetFile(f)
                names = pf.schema_arrow.names
                if image_column not in names:
                    raise SourceError(
                        f"{uri} has no column {image_column!r} (columns: {', '.join(names)}); "
                        "name the image-bytes column with --image-column"
                    )
                _check_image_type(uri, image_column, pf.schema_arrow.field(image_column).type)
                if id_column is not None and id_column not in names:
                    raise SourceError(
                        f"{uri} has no column {id_column!r} (columns: {', '.join(names)}); "
                        "name the id column with --id-column, or leave it out for FILE:ROW ids"
                    )
                ids = pf.read(columns=[column]).column(0).to_pylist() if column in names else None
            row = 0
            for rg in range(pf.metadata.num_row_groups):
                for _ in range(pf.metadata.row_group(rg).num_rows):
                    stem = p.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                    image_id = str(ids[row]) if ids is not None and ids[row] is not None else f"{stem}:{row}"
                    rows.append((image_id, f"{uri}#row={row}", uri, row, rg, -1, mtime, etag))
                    row += 1
    return _table(rows)


def _is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _check_image_type(uri: str, column: str, t: pa.DataType) -> None:
    """The image column holds encoded image bytes: a binary column, or a struct with a binary ``bytes`` field
    (the layout Hugging Face ``datasets`` writes for its Image feature: ``{bytes, path}``). Anything else
    would fail every row with a type error, so it is named here, before any work."""
    if _is_bytes(t):
        return
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_bytes(t.field("bytes").type):
        return
    raise SourceError(
        f"{uri}: column {column!r} holds {t}, not encoded image bytes (a binary column, or a struct with a "
        "binary 'bytes' field as Hugging Face datasets write); name the image-bytes column with --image-column"
    )


def _table(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in ITEM_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, ITEM_SCHEMA, strict=True)], schema=ITEM_SCHEMA
    )


def _version_of(info: Mapping) -> tuple[dt.datetime | None, str | None]:
    """``(mtime, etag)`` of a listing entry: ``mtime`` locally, ``LastModified``/``ETag`` on object stores."""
    mtime = info.get("mtime", info.get("LastModified", info.get("last_modified", info.get("updated"))))
    if isinstance(mtime, int | float):
        mtime = dt.datetime.fromtimestamp(mtime, tz=dt.UTC)
    elif isinstance(mtime, str):
        try:
            mtime = dt.datetime.fromisoformat(mtime.replace("Z", "+00:00"))
        except ValueError:
            mtime = None
    elif not isinstance(mtime, dt.datetime):
        mtime = None
    if isinstance(mtime, dt.datetime) and mtime.tzinfo is None:
        mtime = mtime.replace(tzinfo=dt.UTC)
    etag = info.get("ETag", info.get("etag", info.get("md5Hash")))
    return mtime, (str(etag).strip('"') if etag is not None else None)


def _check_unique_ids(items: pa.Table) -> None:
    ids = items.column("id")
    if len(pa.compute.unique(ids)) == len(ids):
        return
    counts = pa.compute.value_counts(ids)
    dup = next(v["values"] for v in counts.to_pylist() if v["counts"] > 1)
    raise SourceError(f"image id {dup!r} occurs more than once; ids must be unique (choose --id-column)")


def read_bytes(
    items: pa.Table, storage_options: Mapping[str, object], image_column: str
) -> Iterator[bytes | Exception]:
    """The bytes of each item in order, or the exception that stopped reading it (turned into an error row).

    Parquet items are streamed forward through their row group, only the image column, a few rows at a time
    (:func:`_row_group_values`): a read task holds about one data page of the file and the images it is
    handed, not the row group, which may be a whole dataset's (pyarrow writes one group per million rows).
    """
    key: tuple[str, int] | None = None
    values: Iterator[tuple[int, object]] | None = None
    at = -1  # the row ``value`` belongs to
    value: object = None
    for item in items.to_pylist():
        try:
            fs, path = open_item(item["path"], storage_options)
            if item["row"] < 0:
                yield fs.cat_file(path)
                continue
            if values is None or (item["path"], item["row_group"]) != key or item["row"] < at:
                if values is not None:
                    values.close()  # type: ignore[attr-defined]
                values = _row_group_values(fs, path, item["row_group"], image_column)
                key, at = (item["path"], item["row_group"]), -1
            while at < item["row"]:
                at, value = next(values, (None, None))  # type: ignore[assignment]
                if at is None:
                    raise SourceError(f"{item['path']} has no row {item['row']} in row group {item['row_group']}")
            yield value if value is not None else b""  # a row's own problem (an Exception) keeps the stream
        except Exception as exc:  # one unreadable item becomes one error row; the job goes on
            key, at = None, -1
            yield exc


def open_item(uri: str, storage_options: Mapping[str, object]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of one listed item. Items are the plain ``protocol://path`` URLs the listing
    made, never chains, but fsspec reads ``::`` anywhere in a URL as a chain (``in/a::b.png`` would open
    ``in/a``), so a ``::`` after the protocol is part of the file's name."""
    protocol, sep, rest = uri.partition("://")
    if sep and "::" in rest and "::" not in protocol:
        fs = fsspec.filesystem(protocol, **dict(storage_options))
        return fs, fs._strip_protocol(uri)
    return open_fs(uri, storage_options)


# Rows per batch when a row group is streamed: small, so that a batch of full-size photos stays small.
_ROWS_PER_BATCH = 8
# Read buffer of a streamed column chunk; without one pyarrow reads the whole column chunk in one call.
_READ_BUFFER_BYTES = 4 << 20


def _row_group_values(
    fs: fsspec.AbstractFileSystem, path: str, row_group: int, image_column: str
) -> Iterator[tuple[int, object]]:
    """``(row in file, value)`` of one row group's ``image_column``, in order, read a batch at a time.

    Measured (pyarrow 26, one 300-row group of 1 MB values in 8-row pages): 21 MB of Arrow memory at any time,
    against 600 MB for ``read_row_group``. A data page is read whole, so the writer's page size is the floor
    (pyarrow's writer puts up to 1,024 values in a page)."""
    with fs.open(path, "rb", cache_type="none") as f:  # the read buffer below sizes the reads, not a block cache
        pf = pq.ParquetFile(f, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
        row = sum(pf.metadata.row_group(i).num_rows for i in range(row_group))
        batches = pf.iter_batches(
            batch_size=_ROWS_PER_BATCH, row_groups=[row_group], columns=[image_column], use_threads=False
        )
        for batch in batches:
            column = batch.column(0)
            paths: list = []
            if pa.types.is_struct(column.type):  # Hugging Face's Image layout: {bytes, path}
                if column.type.get_field_index("path") >= 0:
                    paths = column.field("path").to_pylist()
                column = column.field("bytes")
            for i, value in enumerate(column.to_pylist()):
                if value is None and paths and paths[i]:  # the image lies elsewhere, by path: not in this file
                    value = SourceError(
                        f"row {row} of {path} holds no image bytes, only a path ({paths[i]!r}); export the "
                        "dataset with its images embedded (datasets: cast_column with Image(decode=True))"
                    )
                yield row, value
                row += 1
