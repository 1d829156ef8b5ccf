"""A run that lost its archive lock stops before its next write (a real job on the session Ray cluster).

A lock not refreshed for ``--lock-timeout`` is broken by the next run; the run that lost it must not go on
writing shards and the manifest beside the new holder. The job is held at its first commit through the
pipeline's fault-injection variable (``pipeline/faults.py``) while the test takes its lock over, so the
outcome does not depend on how fast the machine is.
"""

from __future__ import annotations

import json

import fsspec
import pytest
from pipeline_data.make import write_images

from diffc_pipeline.benchmarks.faults import in_thread, wait_until
from diffc_pipeline.pipeline.faults import HOLD_AT_COMMIT_ENV
from diffc_pipeline.pipeline.lock import LOCK_NAME, ArchiveLockedError, archive_lock, check_held

DEADLINE_S = 600  # a busy 2-core machine can take minutes to start actors


def test_check_held_names_the_new_holder(tmp_path):
    fs, root = fsspec.filesystem("file"), str(tmp_path / "arc")
    with archive_lock(fs, root, "mine"):
        check_held(fs, root, "mine", "shard x")  # still ours: nothing raised
        (tmp_path / "arc" / LOCK_NAME).write_text(json.dumps({"run_id": "nightly-2", "host": "h", "time": 0}))
        new_holder = r"no longer holds .*now held by run nightly-2 .* before writing shard x"
        with pytest.raises(ArchiveLockedError, match=new_holder):
            check_held(fs, root, "mine", "shard x")
    assert json.loads((tmp_path / "arc" / LOCK_NAME).read_text())["run_id"] == "nightly-2"  # not removed
    (tmp_path / "arc" / LOCK_NAME).unlink()
    with pytest.raises(ArchiveLockedError, match="its file is gone"):
        check_held(fs, root, "mine", "the manifest")


def test_a_run_that_lost_its_lock_writes_nothing_more(ray_cluster, tmp_path, monkeypatch):
    write_images(tmp_path / "in", 4)
    arc = tmp_path / "arc"
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_AT_COMMIT_ENV, str(release))  # the run holds at its first commit until told
    job, out = in_thread(tmp_path / "in", arc, None)
    assert wait_until(lambda: (arc / LOCK_NAME).exists(), job.is_alive, "the run's lock"), out
    manifest_before = (arc / "manifest.json").read_bytes() if (arc / "manifest.json").exists() else None
    thief = {"run_id": "next-run", "host": "elsewhere", "time": 4e9, "taken": 4e9}
    (arc / LOCK_NAME).write_text(json.dumps(thief))  # as a run that broke this one's lock as stale
    release.touch()
    job.join(DEADLINE_S)
    assert not job.is_alive() and "ArchiveLockedError" in out.get("error", ""), out
    assert "no longer holds the archive lock" in out["error"] and "next-run" in out["error"]
    assert json.loads((arc / LOCK_NAME).read_text()) == thief  # the new holder's lock is left alone
    assert not list(arc.rglob("*.parquet")), "a shard was written after the lock changed hands"
    if manifest_before is not None:  # written before the lock changed hands; never after
        assert (arc / "manifest.json").read_bytes() == manifest_before
