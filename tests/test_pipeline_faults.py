"""Fault injection with real processes on the session Ray cluster: killed model actors, overlapping runs.

Each job runs in a thread of this process (the test is its Ray driver) while the main thread injects the
fault, so the timing is observed, not assumed. The figures these tests reach are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
from pipeline_data.make import write_images
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.pipeline.commit import MARKER_SUFFIX, MARKERS_DIR, SHARDS_DIR, TMP_PREFIX
from diffc_pipeline.pipeline.compress_job import CompressOptions, run_compress
from diffc_pipeline.pipeline.lock import LOCK_NAME
from diffc_pipeline.pipeline.progress import JobProgress

ENCODER_TITLE = b"ray::MapWorker(MapBatches(Encoder))"  # Ray's process title of a compress model actor
DEADLINE_S = 600  # a busy 2-core machine can take minutes to start actors


class Job(threading.Thread):
    """``run_compress`` in a thread; keeps its summary or exception for the test to check."""

    def __init__(self, inp: Path, arc: Path, incremental: bool = False) -> None:
        super().__init__(daemon=True)
        self.opts = CompressOptions(
            input=str(inp),
            output=str(arc),
            model="gaussian",
            codec_config={"num_steps": 2},
            shard_size=1,
            batch_size=1,
            incremental=incremental,
        )
        self.summary = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = run_compress(self.opts, JobProgress("test", enabled=False), say=lambda _: None)
        except BaseException as exc:  # handed to the test
            self.error = exc


def _commits(arc: Path) -> int:
    return len(list((arc / MARKERS_DIR).glob(f"*{MARKER_SUFFIX}")))


def _wait_for(condition, job: Job) -> bool:
    """Wait until ``condition()``; False if the job ended first."""
    deadline = time.time() + DEADLINE_S
    while not condition():
        if not job.is_alive():
            return False
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)
    return True


def _encoder_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(ENCODER_TITLE):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _check_archive(arc: Path, ids: list[str]) -> None:
    """Every input exactly once, all coded, one committed marker per shard file, no temporary file left."""
    table = pq.read_table(arc / SHARDS_DIR)
    assert sorted(table.column("id").to_pylist()) == sorted(ids)
    assert set(table.column("status").to_pylist()) == {"ok"}
    files = sorted(p.name for p in (arc / SHARDS_DIR).iterdir())
    assert not [f for f in files if f.startswith(TMP_PREFIX)]
    assert len(files) == _commits(arc) == len(ids)
    assert not (arc / LOCK_NAME).exists()


def test_killed_encoder_actors_are_replaced_and_nothing_is_lost_or_doubled(ray_cluster, tmp_path):
    ids = write_images(tmp_path / "in", 12)
    arc = tmp_path / "arc"
    job = Job(tmp_path / "in", arc)
    job.start()
    kills = 0
    for wave in range(2):  # kill one encoder actor after the 1st and after the 2nd commit
        if not _wait_for(lambda w=wave: _commits(arc) > w and _encoder_pids(), job):
            break
        os.kill(_encoder_pids()[0], signal.SIGKILL)
        kills += 1
    committed_at_last_kill = _commits(arc)
    job.join(DEADLINE_S)
    assert job.error is None, job.error
    assert kills >= 2 and committed_at_last_kill < len(ids), (kills, committed_at_last_kill)
    assert job.summary.images == len(ids) and job.summary.failures == 0
    _check_archive(arc, ids)


def test_an_overlapping_nightly_run_fails_or_waits_and_leaves_the_first_intact(ray_cluster, tmp_path):
    ids = write_images(tmp_path / "in", 8)
    arc = tmp_path / "arc"
    job = Job(tmp_path / "in", arc, incremental=True)
    job.start()
    assert _wait_for(lambda: _commits(arc) >= 1, job), "the first run ended before the second could overlap it"
    args = ["compress", str(tmp_path / "in"), str(arc), "--incremental", "--model", "gaussian", "--steps", "2"]
    args += ["--shard-size", "1"]
    # a second driver process, as a scheduler would start it, while the first still writes
    second = subprocess.run(
        [sys.executable, "-m", "diffc_pipeline", *args],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "300"},
        timeout=DEADLINE_S,
    )
    overlapped = job.is_alive()
    third = CliRunner().invoke(app, [*args, "--wait-lock", str(DEADLINE_S)])  # waits for the first, then resumes
    job.join(DEADLINE_S)
    assert overlapped, "the first run ended before the second one checked the lock"
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another run is writing this archive" in " ".join((second.stdout + second.stderr).split())
    assert job.error is None and job.summary.images == len(ids)
    assert third.exit_code == 0, third.output
    assert re.search(r"unchanged\W+8\b", third.output) and re.search(r"images\W+0\b", third.output), third.output
    _check_archive(arc, ids)
    runs = json.loads((arc / "manifest.json").read_text())["runs"]  # the refused run left no record
    assert [(r["status"], r["new"]) for r in runs] == [("ok", 8), ("ok", 0)]
