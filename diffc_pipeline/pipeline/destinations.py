"""Checks on where a job writes (``OUTPUT``), made before anything is written, and the clean-up of a folder a
failed run created and left empty.

A job that fails on bad input must leave nothing behind it did not find (an empty ``OUTPUT`` folder makes the
next run's "not empty / not an archive" checks and a user's listing lie), and must never write where it would
pollute or overwrite an archive.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import fsspec

from ..errors import ArchiveError
from .sources import SourceError, protocols, public_url, remote_errors, same_filesystem, within, would_list


def check_output_folder(
    fs: fsspec.AbstractFileSystem, root: str, url: str, storage_options: Mapping[str, object] | None = None
) -> None:
    """Refuse an ``OUTPUT`` that exists as a file (a job writes a folder there), and on an object store one
    whose bucket does not exist: s3fs creates a missing bucket on the first write, so a typo in its name
    made a new bucket (or, in another region, failed deep in the run). Storage that cannot be reached or
    read is one :class:`~.sources.SourceError` naming the URL."""
    with remote_errors("write to", url, storage_options or {}):
        if set(protocols(fs)) & BUCKET_STORES:
            bucket = root.strip("/").split("/", 1)[0]
            if bucket and not fs.exists(bucket):
                raise ArchiveError(
                    f"OUTPUT {public_url(url)}: bucket {bucket!r} does not exist (diffc never creates buckets; "
                    "create it, or check the name)"
                )
        if fs.isfile(root):
            raise ArchiveError(f"OUTPUT {public_url(url)} is a file; give a folder (new or empty) to write into")


# A whole Parquet decode writes SUCCESS_NAME last (Spark's and Hadoop's convention): parts without it are what
# an interrupted decode left. Names that start with "_" are skipped by Parquet readers.
SUCCESS_NAME = "_SUCCESS"


def check_no_parts(fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
    """Refuse a Parquet decode into a folder that holds an earlier decode's parts: the new run rewrites only
    as many parts as it makes, so the old ones past them would be read as part of the new dataset."""
    if not fs.isdir(root):
        return
    names = [posixpath.basename(p) for p in fs.ls(root, detail=False)]
    if any(n.startswith("part-") or n == SUCCESS_NAME for n in names):
        state = "a whole" if SUCCESS_NAME in names else f"an interrupted (no {SUCCESS_NAME})"
        raise ArchiveError(
            f"OUTPUT {public_url(url)} holds the parts of {state} earlier decode; decode into a new or empty folder "
            "(or remove them)"
        )


# A file name a decode could write: what the input's listing would take in there.
PROBE_NAME = "decoded.png"


def check_outside_source(
    out_fs: fsspec.AbstractFileSystem, out_root: str, source: dict, storage_options: Mapping[str, object]
) -> None:
    """Refuse decoding where the archive's input lists images: decoded PNGs are named by their ids, i.e. the
    source's own paths, so they would overwrite the originals, and the next run would list them as input."""
    url = source.get("url")
    if not isinstance(url, str):
        return
    try:
        inside = would_list(url, storage_options, out_fs, [out_root, f"{out_root}/{PROBE_NAME}"])
    except SourceError:  # the input is gone or out of reach: there is nothing there to overwrite
        return
    if inside:
        raise ArchiveError(
            f"OUTPUT {public_url(out_root)} lies inside the archive's input {public_url(url)}: decoded images would "
            "overwrite the originals (or be listed as new input); decode into another folder"
        )


# Object stores whose first path component is a bucket (container) that a write would create: other
# filesystems (local, sftp, hdfs, memory) make folders, which is what a new OUTPUT means there.
BUCKET_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "oci"})


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in protocols(fs)


def check_outside_archive(
    out_fs: fsspec.AbstractFileSystem, out_root: str, archive_fs: fsspec.AbstractFileSystem, archive_root: str
) -> None:
    """Refuse decoding into the archive's own folder or below it: decoded files would mix with its shards."""
    if same_filesystem(out_fs, archive_fs) and within(out_root, archive_root):
        raise ArchiveError(f"OUTPUT {out_root} lies inside the archive {archive_root}; decode into another folder")


@contextmanager
def removed_if_left_empty(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[None]:
    """Run the body; if it fails and ``root`` did not exist before it, remove ``root`` again when the failure
    left it empty (a run that wrote anything keeps it: nothing already written is lost).

    Local folders only: an object store has no empty folders to leave behind, and removing a "directory" there
    can mean deleting a bucket."""
    existed = not is_local(fs) or fs.exists(root)
    try:
        yield
    except BaseException:
        if not existed:
            try:
                if fs.isdir(root) and not fs.ls(root, detail=False):
                    fs.rmdir(root)
            except OSError:  # best effort: the original error is the one to report
                pass
        raise
