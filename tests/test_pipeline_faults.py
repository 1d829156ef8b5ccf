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
from pathlib import Path

from pipeline_data.make import write_images
from typer.testing import CliRunner

from diffc_pipeline.benchmarks.faults import check_archive, commits, encoder_pids, in_thread, wait_until
from diffc_pipeline.cli import app
from diffc_pipeline.pipeline.lock import LOCK_NAME

DEADLINE_S = 600  # a busy 2-core machine can take minutes to start actors


def _assert_consistent(arc: Path, ids: list[str]) -> None:
    """Every input exactly once, all coded, one committed marker per shard file, no temporary file or lock left."""
    report = check_archive(arc, ids)
    assert report["consistent"] and report["records_checked"] == len(ids), report


def test_killed_encoder_actors_are_replaced_and_nothing_is_lost_or_doubled(ray_cluster, tmp_path):
    ids = write_images(tmp_path / "in", 24)
    arc = tmp_path / "arc"
    job, out = in_thread(tmp_path / "in", arc, None)
    kills = 0
    for wave in range(2):  # kill one encoder actor after the 1st and after the 2nd commit
        if not wait_until(lambda w=wave: commits(arc) > w and encoder_pids(), job.is_alive, "kill"):
            break
        os.kill(encoder_pids()[0], signal.SIGKILL)
        kills += 1
    committed_at_last_kill = commits(arc)
    job.join(DEADLINE_S)
    assert "error" not in out, out
    assert kills >= 2 and committed_at_last_kill < len(ids), (kills, committed_at_last_kill)
    assert out["summary"].images == len(ids) and out["summary"].failures == 0
    _assert_consistent(arc, ids)


def test_an_overlapping_nightly_run_fails_or_waits_and_leaves_the_first_intact(ray_cluster, tmp_path):
    ids = write_images(tmp_path / "in", 48)  # ~9 s of work on an idle 2-core machine: room for an overlap
    arc = tmp_path / "arc"
    job, out = in_thread(tmp_path / "in", arc, None, incremental=True)
    # start the second driver as soon as the first holds the lock (it then plans, starts Ray, codes)
    first_running = wait_until(lambda: (arc / LOCK_NAME).exists(), job.is_alive, "overlap")
    assert first_running, "the first run ended before the second could overlap it"
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
    third = CliRunner().invoke(app, [*args, "--wait-lock", str(DEADLINE_S)])  # waits for the first, then resumes
    job.join(DEADLINE_S)
    assert second.returncode == 1, second.stdout + second.stderr  # 0 would mean: no overlap, the test is void
    assert "another run is writing this archive" in " ".join((second.stdout + second.stderr).split())
    assert "error" not in out and out["summary"].images == len(ids)
    assert third.exit_code == 0, third.output
    assert re.search(r"unchanged\W+48\b", third.output) and re.search(r"images\W+0\b", third.output), third.output
    _assert_consistent(arc, ids)
    runs = json.loads((arc / "manifest.json").read_text())["runs"]  # the refused run left no record
    assert [(r["status"], r["new"]) for r in runs] == [("ok", 48), ("ok", 0)]
