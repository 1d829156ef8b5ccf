"""The archive lock every compress run holds while it writes: ``OUTPUT/_lock.json`` created with exclusive create.

Exclusive create (``open(path, "xb")``) is put-if-absent on local disk and on S3 (s3fs sends
``If-None-Match``; see the field notes), so two runs cannot both hold it. A scheduler without an overlap
policy (RayCronJob) can therefore start runs freely: the second fails with the holder's name, or waits.
The name starts with an underscore so Parquet readers of the archive skip it.

A run that died holding the lock (SIGKILL, a lost node) leaves it behind. The lock names its holder's
host, pid and process start time, so a run on the same host breaks it at once when that process is gone
(the usual case: a resumed laptop run, a cron job on one head node). From another host it cannot tell, so
a lock not refreshed for the stale timeout is broken: the holder rewrites the lock's time every
``refresh_s`` (a heartbeat thread), so a live run keeps its lock however long it runs, and a dead one's lock
goes stale a timeout after its last beat.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

from ..errors import ArchiveError
from .commit import replace_file

LOCK_NAME = "_lock.json"
POLL_S = 1.0
DEFAULT_STALE_S = 3600.0  # a lock not refreshed for this long is broken (--lock-timeout)
REFRESH_S = 60.0  # the holder's heartbeat, at most (a tenth of the stale timeout when that is shorter)


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
    stale_s: float = DEFAULT_STALE_S,
    say: Callable[[str], None] = print,
) -> Iterator[dict]:
    """Hold the lock for the block, refreshing it (:func:`_heartbeat`); waits up to ``wait_s``, breaks a lock
    not refreshed for ``stale_s`` (saying so)."""
    if not stale_s > 0:
        raise ArchiveError(f"--lock-timeout must be > 0 seconds (lock_timeout=), got {stale_s}")
    now = time.time()  # "time": the last heartbeat; "taken": when the run took the lock
    holder = {"run_id": run_id, "host": socket.gethostname(), "time": now, "taken": now, **_this_process()}
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
                why = "its process is gone" if dead else f"not refreshed for {age:.0f} s, over --lock-timeout"
                say(f"breaking a stale lock of {_describe(theirs)} ({why})")
                fs.rm_file(path)
            continue
        if time.monotonic() >= deadline:
            raise ArchiveLockedError(
                f"{path} is held by {_describe(theirs)}, refreshed {age:.0f} s ago; another run is writing this "
                "archive (wait with --wait-lock SECONDS; a lock not refreshed for --lock-timeout is broken)"
            )
        time.sleep(POLL_S)
    stop = threading.Event()
    every_s = min(REFRESH_S, stale_s / 10)
    beat = threading.Thread(target=_heartbeat, args=(fs, path, holder, stop, every_s, say), daemon=True)
    beat.start()
    try:
        yield holder
    finally:
        stop.set()
        beat.join(timeout=every_s + 60)  # a write hung on a dead connection must not hold the run's end
        if (_read(fs, path) or {}).get("run_id") == run_id:  # never remove a lock another run took after a break
            fs.rm_file(path)


def _heartbeat(
    fs: fsspec.AbstractFileSystem,
    path: str,
    holder: dict,
    stop: threading.Event,
    every_s: float,
    say: Callable[[str], None],
) -> None:
    """Rewrite the lock's ``time`` every ``every_s`` until ``stop``, while it is still ours.

    A write that fails (a network blip) is retried at the next beat, and the run is told after three in a row
    (its lock goes stale a timeout after the last beat that landed). A lock that is no longer ours was broken
    as stale by another run, which owns it now: the run is told, and the beat stops rather than overwrite it.
    The lock is replaced whole (:func:`~.commit.replace_file`), so a reader never sees it half-written."""
    failures = 0
    while not stop.wait(every_s):
        try:
            current = _read(fs, path) or {}
            if current.get("run_id") != holder["run_id"]:
                say(
                    f"the archive lock {path} was broken by {_describe(current) if current else 'another run'}; "
                    "this run no longer holds it (stop it: two runs now write this archive)"
                )
                return
            holder["time"] = time.time()
            replace_file(fs, path, json.dumps(holder).encode())
            failures = 0
        except Exception as exc:  # the next beat retries: the run must not die of its lock's refresh
            failures += 1
            if failures == 3:
                cause = f"{type(exc).__name__}: {exc}"
                say(f"cannot refresh the archive lock {path} ({cause}); retrying every {every_s:.0f} s")


def check_held(fs: fsspec.AbstractFileSystem, root: str, run_id: str, before: str) -> None:
    """Raise :class:`ArchiveLockedError` unless the archive's lock still names ``run_id``; called before each
    write of a run (a shard, the manifest).

    A run whose heartbeat could not land for ``--lock-timeout`` (a storage outage, a suspended laptop) loses
    its lock to the next run, which then clears this run's uncommitted files and writes the manifest: the
    heartbeat tells the user, and this check stops the run before its next write instead of letting two runs
    interleave. One small read per write; a read that fails lets the write go on (the lock itself is the
    guard, this check narrows what a lost one can cost)."""
    path = lock_path(root)
    try:
        current = _read(fs, path)
    except Exception:  # a storage hiccup: the write that follows succeeds or fails on its own
        return
    if (current or {}).get("run_id") != run_id:
        holder = f"now held by {_describe(current)}" if current else "its file is gone"
        raise ArchiveLockedError(
            f"this run no longer holds the archive lock {path} ({holder}); stopped before writing {before}. "
            "A lock not refreshed for --lock-timeout is broken by the next run, which writes this archive now"
        )


def _try_create(fs: fsspec.AbstractFileSystem, path: str, holder: dict) -> bool:
    try:
        with fs.open(path, "xb") as f:
            f.write(json.dumps(holder).encode())
    except FileExistsError:
        return False
    return True


def holder_run(fs: fsspec.AbstractFileSystem, root: str) -> str | None:
    """The run id of the run holding the archive's lock now, or None when no run holds it (what tells a
    running run from a killed one whose record still says "running")."""
    held = _read(fs, lock_path(root))
    return None if held is None else str(held.get("run_id"))


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
    taken = holder.get("taken", holder.get("time", 0))  # locks of older versions: their "time" is when taken
    when = dt.datetime.fromtimestamp(float(taken), dt.UTC).isoformat(timespec="seconds")
    return f"run {holder.get('run_id')} on host {holder.get('host')} (taken {when})"
