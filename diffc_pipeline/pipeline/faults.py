"""Fault-injection points, for the resume and fault tests and ``diffc bench faults``: never set in normal use.

Each is an environment variable read by the driver, so a test places a fault at an exact point of a job
instead of racing it with a poll (a poll that looks for the first commit can find a fast job already done):

- ``DIFFC_FAULT_KILL_AT_COMMIT=N``: the driver SIGKILLs itself (no cleanup, as a crashed machine) when it
  starts committing its N-th shard, so exactly N-1 shards are committed.
- ``DIFFC_FAULT_HOLD_AT_COMMIT=PATH``: before each commit the driver waits until PATH exists, so a test
  knows the job is running and holding its lock for as long as it needs.
- ``DIFFC_FAULT_KILL_ENCODERS=DIR:N``: an encoder actor SIGKILLs itself before coding a batch while DIR
  holds fewer than N kill markers (it adds one first; markers are created exclusively, so exactly N actor
  deaths happen, whatever the timing). The driver passes the value to its actors.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_AT_COMMIT_ENV = "DIFFC_FAULT_KILL_AT_COMMIT"
HOLD_AT_COMMIT_ENV = "DIFFC_FAULT_HOLD_AT_COMMIT"
KILL_ENCODERS_ENV = "DIFFC_FAULT_KILL_ENCODERS"


def at_commit(n: int) -> None:
    """Called by the driver's commit thread as it starts its ``n``-th commit of the run."""
    hold = os.environ.get(HOLD_AT_COMMIT_ENV)
    while hold and not Path(hold).exists():
        time.sleep(0.05)
    if os.environ.get(KILL_AT_COMMIT_ENV) == str(n):
        os.kill(os.getpid(), signal.SIGKILL)


def encoder_setting() -> str | None:
    """The driver's ``DIFFC_FAULT_KILL_ENCODERS`` value, handed to its encoder actors."""
    return os.environ.get(KILL_ENCODERS_ENV) or None


def before_encode(setting: str | None) -> None:
    """Called by an encoder actor before each batch: die once per missing kill marker."""
    if not setting:
        return
    folder, _, count = setting.rpartition(":")
    for k in range(int(count)):
        try:
            fd = os.open(Path(folder) / f"kill-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
