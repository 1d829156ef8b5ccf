"""The archive lock every compress run holds while it writes: ``OUTPUT/_lock.json`` created with exclusive create.

Exclusive create (``open(path, "xb")``) is put-if-absent on local disk and on S3 (s3fs sends
``If-None-Match``; see the field notes), so two runs cannot both hold it. A scheduler without an overlap
policy (RayCronJob) can therefore start runs freely: the second fails with the holder's name, or waits.
The name starts with an underscore so Parquet readers of the archive skip it.

A run that died holding the lock (SIGKILL, a lost node) leaves it behind. The lock names its holder's
host, pid and process start time, so a run on the same host breaks it at once when that process is gone
(the usual case: a resumed laptop run, a cron job on one head node). From another host it cannot tell, so
a lock older than the stale timeout is broken; there is no heartbeat, so that timeout must exceed the
longest run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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
    holder = {"run_id": run_id, "host": socket.gethostname(), "time": time.time(), **_this_process()}
    path = lock_path(root)
    fs.makedirs(root, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while not _try_create(fs, path, holder):
        theirs = _read(fs, path)
        if theirs is None:  # released between our create and our read
            continue
        age = time.time() - float(theirs.get("time", 0))
        dead = _holder_is_gone(theirs)
        if dead or age > stale_s:
            # Not atomic (no conditional delete): re-reading first narrows the window in which two runs
            # breaking the same lock could remove each other's new one.
            if _read(fs, path) == theirs:
                why = "its process is gone" if dead else f"{age / 3600:.1f} h old, over --lock-timeout"
                say(f"breaking a stale lock of {_describe(theirs)} ({why})")
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


def _this_process() -> dict:
    return {"pid": os.getpid(), "pid_started": _start_time(os.getpid())}


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid from its holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in parentheses may hold spaces


def _holder_is_gone(holder: dict) -> bool:
    """True only when the holder ran on this host and its process no longer exists."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        return False
    started = _start_time(pid)
    return started is not None and holder.get("pid_started") not in (None, started)


def _describe(holder: dict) -> str:
    when = dt.datetime.fromtimestamp(float(holder.get("time", 0)), dt.UTC).isoformat(timespec="seconds")
    return f"run {holder.get('run_id')} on host {holder.get('host')} (taken {when})"
