"""An archive lock for incremental runs: ``OUTPUT/_lock.json`` created with exclusive create.

Exclusive create (``open(path, "xb")``) is put-if-absent on local disk and on S3 (s3fs sends
``If-None-Match``; see the field notes), so two runs cannot both hold it. A scheduler without an overlap
policy (RayCronJob) can therefore start runs freely: the second fails with the holder's name, or waits.
The name starts with an underscore so Parquet readers of the archive skip it. There is no heartbeat: a
run longer than the stale timeout would have its lock broken, so the timeout must exceed the longest run.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import fsspec

from ..errors import ArchiveError

LOCK_NAME = "_lock.json"
POLL_S = 1.0


class ArchiveLockedError(ArchiveError):
    """Another run holds the archive's lock."""


def lock_path(root: str) -> str:
    return f"{root}/{LOCK_NAME}"


@contextmanager
def archive_lock(
    fs: fsspec.AbstractFileSystem,
    root: str,
    run_id: str,
    wait_s: float = 0.0,
    stale_s: float = 6 * 3600,
    say: Callable[[str], None] = print,
) -> Iterator[dict]:
    """Hold the lock for the block; waits up to ``wait_s``, breaks a lock older than ``stale_s`` (saying so)."""
    holder = {"run_id": run_id, "host": socket.gethostname(), "time": time.time()}
    path = lock_path(root)
    fs.makedirs(root, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while not _try_create(fs, path, holder):
        theirs = _read(fs, path)
        if theirs is None:  # released between our create and our read
            continue
        age = time.time() - float(theirs.get("time", 0))
        if age > stale_s:
            # Not atomic (no conditional delete): re-reading first narrows the window in which two runs
            # breaking the same stale lock could remove each other's new one. Rare: only after stale_s.
            if _read(fs, path) == theirs:
                say(f"breaking a stale lock of {_describe(theirs)} ({age / 3600:.1f} h old, over --lock-timeout)")
                fs.rm_file(path)
            continue
        if time.monotonic() >= deadline:
            raise ArchiveLockedError(
                f"{path} is held by {_describe(theirs)} for {age:.0f} s; another run is writing this archive "
                "(wait with --wait-lock SECONDS; a lock older than --lock-timeout is broken)"
            )
        time.sleep(POLL_S)
    try:
        yield holder
    finally:
        if (_read(fs, path) or {}).get("run_id") == run_id:  # never remove a lock another run took after a break
            fs.rm_file(path)


def _try_create(fs: fsspec.AbstractFileSystem, path: str, holder: dict) -> bool:
    try:
        with fs.open(path, "xb") as f:
            f.write(json.dumps(holder).encode())
    except FileExistsError:
        return False
    return True


def _read(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    fs.invalidate_cache(path.rsplit("/", 1)[0])
    try:
        data = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        data = None
    # Half-written (a local create is visible before its write): count it as fresh, never break it early.
    return (
        data
        if isinstance(data, dict)
        else {"run_id": "unknown (unreadable lock file)", "host": "?", "time": time.time()}
    )


def _describe(holder: dict) -> str:
    when = dt.datetime.fromtimestamp(float(holder.get("time", 0)), dt.UTC).isoformat(timespec="seconds")
    return f"run {holder.get('run_id')} on host {holder.get('host')} (taken {when})"
