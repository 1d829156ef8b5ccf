"""Fault injection with real processes on the session Ray cluster: killed model actors, overlapping runs.

Each job runs in a thread of this process (the test is its Ray driver). Faults are placed at exact points
of the job through the pipeline's fault-injection variables (``pipeline/faults.py``), never by racing a
running job with a poll: a test whose outcome depends on how fast the machine is fails at random. The
figures these tests reach are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline_data.make import write_images
from typer.testing import CliRunner

from diffc_pipeline.benchmarks.faults import check_archive, in_thread, wait_until
from diffc_pipeline.cli import app
from diffc_pipeline.pipeline.faults import HOLD_AT_COMMIT_ENV, KILL_ENCODERS_ENV
from diffc_pipeline.pipeline.lock import LOCK_NAME

DEADLINE_S = 600  # a busy 2-core machine can take minutes to start actors


def _assert_consistent(arc: Path, ids: list[str]) -> None:
    """Every input exactly once, all coded, one committed marker per shard file, no temporary file or lock left."""
    report = check_archive(arc, ids)
    assert report["consistent"] and report["records_checked"] == len(ids), report


def test_killed_encoder_actors_are_replaced_and_nothing_is_lost_or_doubled(ray_cluster, tmp_path, monkeypatch):
    ids = write_images(tmp_path / "in", 12)
    arc = tmp_path / "arc"
    (tmp_path / "kills").mkdir()
    # encoder actors SIGKILL themselves before a batch until three have died: three deaths, whatever the timing
    monkeypatch.setenv(KILL_ENCODERS_ENV, f"{tmp_path / 'kills'}:3")
    job, out = in_thread(tmp_path / "in", arc, None)
    job.join(DEADLINE_S)
    assert not job.is_alive() and "error" not in out, out
    assert len(list((tmp_path / "kills").iterdir())) == 3
    assert out["summary"].images == len(ids) and out["summary"].failures == 0
    _assert_consistent(arc, ids)


def test_an_overlapping_nightly_run_fails_or_waits_and_leaves_the_first_intact(ray_cluster, tmp_path, monkeypatch):
    ids = write_images(tmp_path / "in", 12)
    arc = tmp_path / "arc"
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_AT_COMMIT_ENV, str(release))  # the first run holds at its first commit until told
    job, out = in_thread(tmp_path / "in", arc, None, incremental=True)
    assert wait_until(lambda: (arc / LOCK_NAME).exists(), job.is_alive, "first run's lock"), out
    args = ["compress", str(tmp_path / "in"), str(arc), "--incremental", "--model", "gaussian", "--steps", "2"]
    args += ["--shard-size", "1"]
    # a second driver process, as a scheduler would start it, while the first still writes
    second = subprocess.run(
        [sys.executable, "-m", "diffc_pipeline", *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != HOLD_AT_COMMIT_ENV} | {"COLUMNS": "300"},
        timeout=DEADLINE_S,
    )
    release.touch()  # the first run goes on; the third waits for its lock, then finds everything done
    third = CliRunner().invoke(app, [*args, "--wait-lock", str(DEADLINE_S)])
    job.join(DEADLINE_S)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "another run is writing this archive" in " ".join((second.stdout + second.stderr).split())
    assert "error" not in out and out["summary"].images == len(ids)
    assert third.exit_code == 0, third.output
    assert re.search(r"unchanged\W+12\b", third.output) and re.search(r"images\W+0\b", third.output), third.output
    _assert_consistent(arc, ids)
    runs = json.loads((arc / "manifest.json").read_text())["runs"]  # the refused run left no record
    assert [(r["status"], r["new"]) for r in runs] == [("ok", 12), ("ok", 0)]
