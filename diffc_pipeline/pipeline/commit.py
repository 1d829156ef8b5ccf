"""Shard commit protocol: data under a temporary name, then its final name, then a stats marker LAST.

A shard counts as committed only when its marker ``shards/<name>.stats.json`` exists; the marker is written
after the data file has its final name, so a committed shard is always complete. On object stores a
rename is a copy plus a delete, never atomic across the two keys - the marker, a single PUT, is what makes
the commit atomic there. A data file without a marker (a run killed in between) is simply rewritten by
the next run under the same name, so records are never duplicated.
"""

from __future__ import annotations

import json
import uuid

import fsspec

from ..errors import ArchiveError

SHARDS_DIR = "shards"
MARKER_SUFFIX = ".stats.json"
TMP_INFIX = ".tmp-"


def data_path(root: str, name: str) -> str:
    return f"{root}/{SHARDS_DIR}/{name}.parquet"


def marker_path(root: str, name: str) -> str:
    return f"{root}/{SHARDS_DIR}/{name}{MARKER_SUFFIX}"


def commit_shard(fs: fsspec.AbstractFileSystem, root: str, name: str, data: bytes, stats: dict) -> dict:
    """Write one shard and commit it; returns the marker's contents (``stats`` plus file facts)."""
    final = data_path(root, name)
    tmp = f"{final}{TMP_INFIX}{uuid.uuid4().hex}"
    fs.makedirs(f"{root}/{SHARDS_DIR}", exist_ok=True)
    fs.pipe_file(tmp, data)
    fs.mv(tmp, final)
    marker = {**stats, "shard": name, "file": f"{SHARDS_DIR}/{name}.parquet", "file_bytes": len(data)}
    fs.pipe_file(marker_path(root, name), json.dumps(marker, indent=1, sort_keys=True).encode())
    return marker


def committed_shards(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    """``{shard name: marker}`` for every committed shard (markers are the source of truth)."""
    fs.invalidate_cache(root)
    try:
        paths = fs.glob(f"{root}/{SHARDS_DIR}/*{MARKER_SUFFIX}")
    except FileNotFoundError:
        return {}
    out = {}
    for p in sorted(paths):
        name = p.rsplit("/", 1)[-1][: -len(MARKER_SUFFIX)]
        try:
            out[name] = json.loads(fs.cat_file(p))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"commit marker {p} is not valid JSON ({exc}); delete it to redo that shard") from None
    return out


def discard_uncommitted(fs: fsspec.AbstractFileSystem, root: str, committed: set[str]) -> int:
    """Remove leftovers of killed runs: temporary files and data files that never got their marker."""
    try:
        paths = fs.glob(f"{root}/{SHARDS_DIR}/*.parquet*")
    except FileNotFoundError:
        return 0
    removed = 0
    for p in paths:
        base = p.rsplit("/", 1)[-1]
        name = base.split(".parquet", 1)[0]
        if TMP_INFIX in base or name not in committed:
            fs.rm_file(p)
            removed += 1
    return removed


def remove_shards(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """``--overwrite``: drop all shards and markers (markers first: no half-removed shard looks committed)."""
    try:
        paths = fs.glob(f"{root}/{SHARDS_DIR}/*")
    except FileNotFoundError:
        return
    for p in sorted(paths, key=lambda p: not p.endswith(MARKER_SUFFIX)):
        fs.rm_file(p)
