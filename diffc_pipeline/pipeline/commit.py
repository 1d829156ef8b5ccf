"""Shard commit protocol: data under a temporary name, then its final name, then a stats marker LAST.

A shard counts as committed only when its marker ``commits/<name>.stats.json`` exists; the marker is written
after the data file has its final name, so a committed shard is always complete. Markers live outside
``shards/`` and temporary files start with a dot, so ``shards/`` read as a Parquet dataset by any reader
(which skip dot- and underscore-files) holds nothing but complete shards. On object stores a
rename is a copy plus a delete, never atomic across the two keys - the marker, a single PUT, is what makes
the commit atomic there. A data file without a marker (a run killed in between) is simply rewritten by
the next run under the same name, so records are never duplicated.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid

import fsspec

from ..errors import ArchiveError, is_whole
from .destinations import BUCKET_STORES
from .sources import protocols

SHARDS_DIR = "shards"
MARKERS_DIR = "commits"
MARKER_SUFFIX = ".stats.json"
TMP_PREFIX = ".tmp-"


def data_path(root: str, name: str) -> str:
    return f"{root}/{SHARDS_DIR}/{name}.parquet"


def marker_path(root: str, name: str) -> str:
    return f"{root}/{MARKERS_DIR}/{name}{MARKER_SUFFIX}"


def commit_shard(fs: fsspec.AbstractFileSystem, root: str, name: str, data: bytes, stats: dict) -> dict:
    """Write one shard and commit it; returns the marker's contents (``stats`` plus file facts)."""
    final = data_path(root, name)
    tmp = f"{root}/{SHARDS_DIR}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}.parquet"
    fs.makedirs(f"{root}/{SHARDS_DIR}", exist_ok=True)
    fs.makedirs(f"{root}/{MARKERS_DIR}", exist_ok=True)
    fs.pipe_file(tmp, data)
    fs.mv(tmp, final)
    marker = {**stats, "shard": name, "file": f"{SHARDS_DIR}/{name}.parquet", "file_bytes": len(data)}
    # whole or not at all: a kill mid-write must not leave a marker that is half JSON
    replace_file(fs, marker_path(root, name), json.dumps(marker, indent=1, sort_keys=True).encode())
    return marker


# The counts a marker holds that readers add up (inspect, incremental runs): each a non-negative integer.
MARKER_COUNTS = ("rows", "file_bytes", "payload_bytes", "ok", "errors")


def committed_shards(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    """``{shard name: marker}`` for every committed shard (markers are the source of truth)."""
    fs.invalidate_cache(f"{root}/{MARKERS_DIR}")  # other processes may have committed since we listed
    try:
        paths = fs.glob(f"{root}/{MARKERS_DIR}/*{MARKER_SUFFIX}")
    except FileNotFoundError:
        return {}
    out = {}
    for p in sorted(paths):
        name = p.rsplit("/", 1)[-1][: -len(MARKER_SUFFIX)]
        try:
            marker = json.loads(fs.cat_file(p))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"commit marker {p} is not valid JSON ({exc}); delete it to redo that shard") from None
        counts = [marker.get(k, 0) for k in MARKER_COUNTS] if isinstance(marker, dict) else []
        if not counts or not all(is_whole(v) and v >= 0 for v in counts):
            raise ArchiveError(f"commit marker {p} is not a marker (an object of counts); delete it to redo that shard")
        out[name] = marker
    return out


def discard_uncommitted(fs: fsspec.AbstractFileSystem, root: str, committed: set[str]) -> int:
    """Remove leftovers of killed runs: temporary files and data files that never got their marker."""
    removed = 0
    for p in _list(fs, f"{root}/{SHARDS_DIR}"):
        base = p.rsplit("/", 1)[-1]
        if base.startswith(TMP_PREFIX) or base.removesuffix(".parquet") not in committed:
            fs.rm_file(p)
            removed += 1
    return removed


def remove_shards(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """``--overwrite``: drop all markers, then all shards (no half-removed shard ever looks committed)."""
    for folder in (MARKERS_DIR, SHARDS_DIR):
        for p in _list(fs, f"{root}/{folder}"):
            fs.rm_file(p)


def _list(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Files directly in ``folder`` (dot-files included), none if it does not exist."""
    fs.invalidate_cache(folder)
    try:
        return [e["name"] for e in fs.ls(folder, detail=True) if e["type"] == "file"]
    except FileNotFoundError:
        return []


def replace_file(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all, so a reader (or the next run) sees the old content or the new, never
    half: the manifest, the archive lock's heartbeat and a decode's PNGs and parts all write this way. An
    object store's PUT is whole already; elsewhere the bytes go to a short dot-name in the same folder (hidden
    from Parquet readers; short, so a name near the filesystem's length limit still fits) and are renamed
    over ``path`` (a rename on an object store would be a second copy)."""
    if set(protocols(fs)) & BUCKET_STORES:
        fs.pipe_file(path, data)
        return
    tmp = f"{posixpath.dirname(path)}/{TMP_PREFIX}{uuid.uuid4().hex}"
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # best effort: the rename's error is the one to report
            fs.rm(tmp)
        raise
