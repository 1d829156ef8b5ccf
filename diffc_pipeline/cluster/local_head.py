"""A throwaway single-node Ray head with the Jobs API, for tests and local trials of ``diffc submit``.

It is a real ``ray start --head`` in its own process group and temporary directory, so it can be stopped
without touching any other Ray cluster on the machine: ``ray stop`` would kill every Ray process of the
user, including clusters of other programs, which is why it is never used here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ..errors import DiffcError


class LocalHeadError(DiffcError):
    """The local Ray head did not come up."""


def free_port() -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick; the race is accepted in tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalHead:
    """``ray start --head --block`` on 127.0.0.1 with the dashboard (Jobs API) on a free port.

    ``--block`` keeps the ``ray start`` process alive as the parent of the node's daemons, which Ray makes
    share its fate: terminating it (by its pid) takes the whole node down. Fixed default ports (dashboard
    8265, agent 52365) are replaced by free ones so that two heads, or a head and another program, coexist.
    """

    def __init__(
        self, num_cpus: int = 1, object_store_bytes: int = 150 * 1024**2, auth_token: str | None = None
    ) -> None:
        """``auth_token``: run with Ray's token authentication and this token (default: no authentication)."""
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        self.auth_token = auth_token
        self.address = ""
        self.start_seconds = 0.0
        self._proc: subprocess.Popen | None = None
        self._temp_dir: Path | None = None
        self._log = None

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the head and wait until the Jobs API answers; return its ``http://`` address."""
        # Unix socket paths are limited to ~107 bytes, so the session lives under a short /tmp name.
        self._temp_dir = Path(tempfile.mkdtemp(prefix="dcr-", dir="/tmp"))
        dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{dashboard_port}"
        ray_exe = Path(sys.executable).with_name("ray")
        cmd = [
            str(ray_exe) if ray_exe.exists() else "ray",
            "start",
            "--head",
            "--block",
            "--port=0",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={self._temp_dir}",
            "--disable-usage-stats",
        ]
        dropped = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env["RAY_AUTH_MODE"] = "token" if self.auth_token else "disabled"
        if self.auth_token:
            env["RAY_AUTH_TOKEN"] = self.auth_token
        # Jobs run `python -m diffc_pipeline`: put this interpreter's bin directory first on their PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self._log = open(self._temp_dir / "ray-start.log", "wb")  # noqa: SIM115 (closed in stop())
        started = time.monotonic()
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self.address

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalHeadError(f"ray start exited with {self._proc.returncode}:\n{self.log_tail()}")
            request = urllib.request.Request(f"{self.address}/api/version")
            if self.auth_token:
                request.add_header("Authorization", f"Bearer {self.auth_token}")
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise LocalHeadError(f"the dashboard at {self.address} did not answer in time:\n{self.log_tail()}")

    def log_tail(self, n_bytes: int = 4000) -> str:
        """The end of the ``ray start`` output, for error messages."""
        if self._temp_dir is None or not (self._temp_dir / "ray-start.log").exists():
            return ""
        return (self._temp_dir / "ray-start.log").read_bytes()[-n_bytes:].decode(errors="replace")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop this head only: SIGTERM to its ``ray start``, then SIGKILL to whatever of its tree is left."""
        if self._proc is not None:
            # Workers put themselves in process groups of their own, so the tree is noted before it is cut.
            tree = _process_tree(self._proc.pid)
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
            for pid, start_time in tree.items():
                if _start_time(pid) == start_time:  # same process, not a reused pid
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> LocalHead:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None  # field 22 of proc(5), counted from the state field (3)


def _process_tree(root: int) -> dict[int, str]:
    """``{pid: start time}`` of ``root`` and all its descendants, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if (start := _start_time(pid)) is not None:
            tree[pid] = start
        todo.extend(children.get(pid, []))
    return tree
