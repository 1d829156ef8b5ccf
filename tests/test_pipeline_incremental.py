"""Incremental archive runs through the CLI: only new/changed sources are coded, versions, runs, the lock.

Like test_pipeline_e2e: the analytic Gaussian model, 2 coding steps, 16x16 images, the session Ray cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from pipeline_data.make import png_bytes, rgb, write_images
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.errors import ArchiveError
from diffc_pipeline.pipeline import lock
from diffc_pipeline.pipeline.decode_job import DecodeOptions, select
from diffc_pipeline.pipeline.inspect_archive import inspect_archive
from diffc_pipeline.pipeline.lock import LOCK_NAME, ArchiveLockedError, archive_lock
from diffc_pipeline.pipeline.reader import open_archive
from diffc_pipeline.pipeline.sources import open_fs

FAST = ["--model", "gaussian", "--steps", "2", "--shard-size", "3", "--batch-size", "4"]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _compress(inp: Path, arc: Path, *extra: str):
    return CliRunner().invoke(app, ["compress", str(inp), str(arc), "--incremental", *FAST, *extra])


def _state(arc: Path) -> dict[str, bytes]:
    """Every file of the archive with its bytes: what 'unchanged' means."""
    return {str(p.relative_to(arc)): p.read_bytes() for p in sorted(arc.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory) -> dict:
    """Run 1 over 4 images; then modify one, add two plus a bad file, delete one; run 2; run 3 (no change)."""
    root = tmp_path_factory.mktemp("incr")
    inp, arc = root / "in", root / "arc"
    write_images(inp, 4)
    first = _compress(inp, arc)
    (inp / "img001.png").write_bytes(png_bytes(rgb(101)))
    future = time.time() + 60
    os.utime(inp / "img001.png", (future, future))
    (inp / "new0.png").write_bytes(png_bytes(rgb(200)))
    (inp / "new1.png").write_bytes(png_bytes(rgb(201)))
    (inp / "bad.png").write_bytes(b"not an image")
    (inp / "img003.png").unlink()
    second = _compress(inp, arc)
    third = _compress(inp, arc)
    return {"inp": inp, "arc": arc, "results": [first, second, third]}


def test_runs_code_only_new_and_changed_sources(runs):
    first, second, third = runs["results"]
    assert first.exit_code == 0, first.output
    assert second.exit_code == 3, second.output  # bad.png: an error row, a partial failure
    assert third.exit_code == 0, third.output
    manifest = json.loads((runs["arc"] / "manifest.json").read_text())
    counts = [
        {k: r[k] for k in ("new", "changed", "unchanged", "deleted", "failed", "status")} for r in manifest["runs"]
    ]
    assert counts == [
        {"new": 4, "changed": 0, "unchanged": 0, "deleted": 0, "failed": 0, "status": "ok"},
        {"new": 3, "changed": 1, "unchanged": 2, "deleted": 1, "failed": 1, "status": "partial"},
        {"new": 0, "changed": 0, "unchanged": 6, "deleted": 1, "failed": 0, "status": "ok"},  # still gone
    ]
    assert [r["shards"] for r in manifest["runs"]] == [
        ["shard-000000", "shard-000001"],
        ["shard-000002", "shard-000003"],
        [],
    ]
    assert all(r["finished_at"] and r["tool_version"] and r["model"].startswith("gaussian") for r in manifest["runs"])
    assert len({r["run_id"] for r in manifest["runs"]}) == 3
    assert not (runs["arc"] / LOCK_NAME).exists()  # released after each run


def test_changed_source_gets_a_new_version_and_old_rows_stay(runs):
    table = pq.read_table(runs["arc"] / "shards")
    ids = table.column("id").to_pylist()
    assert len(ids) == 4 + 4  # run 1: 4 rows; run 2: 3 new + 1 changed; run 3: none
    assert ids.count("img001.png") == 2 and ids.count("img000.png") == 1
    assert "img003.png" in ids  # a deletion at the source is reported, not propagated
    mtimes = [r["source_mtime"] for r in table.select(["id", "source_mtime"]).to_pylist() if r["id"] == "img001.png"]
    assert mtimes[0] < mtimes[1]  # shards in commit order: the older version first


def test_decode_and_inspect_see_the_latest_version(runs):
    archive = open_archive(str(runs["arc"]), {})
    picked, _, _ = select(archive, DecodeOptions(archive=str(runs["arc"]), output="unused", step=2, ids=["img001.png"]))
    assert picked.column("shard").to_pylist() == ["shard-000002"]  # the run-2 row, not shard-000000's
    everything, errors, _ = select(archive, DecodeOptions(archive=str(runs["arc"]), output="unused", step=1))
    assert sorted(everything.column("id").to_pylist()) == [
        "img000.png",
        "img001.png",
        "img002.png",
        "img003.png",
        "new0.png",
        "new1.png",
    ]
    assert errors == 1
    info = inspect_archive(str(runs["arc"]), {})
    assert (info["images"], info["rows"], info["failures"]) == (7, 8, 1)
    assert info["shards"] == {"committed": 4, "planned": 4}
    out = CliRunner().invoke(app, ["inspect", str(runs["arc"])])
    assert out.exit_code == 0 and "incremental runs" in out.output
    assert info["runs"][1]["run_id"][:10] in _flat(out.output)


def test_deletion_is_reported(runs):
    assert "img003.png" in _flat(runs["results"][1].output) and "no longer listed" in _flat(runs["results"][1].output)


def test_plain_rerun_of_an_incremental_archive_is_refused(runs):
    result = CliRunner().invoke(app, ["compress", str(runs["inp"]), str(runs["arc"]), *FAST])
    assert result.exit_code == 2 and "--incremental" in _flat(result.output)


def test_held_lock_fails_the_second_run_and_leaves_the_archive_alone(runs):
    (runs["inp"] / "new2.png").write_bytes(png_bytes(rgb(202)))
    before = _state(runs["arc"])
    fs, root = open_fs(str(runs["arc"]), {})
    with archive_lock(fs, root, "run-holding-it"):
        result = _compress(runs["inp"], runs["arc"], "--wait-lock", "1")
        held = _state(runs["arc"])
    assert result.exit_code == 1, result.output
    text = _flat(result.output)
    assert "run-holding-it" in text and socket.gethostname() in text
    assert {k: v for k, v in held.items() if k != LOCK_NAME} == before
    assert _state(runs["arc"]) == before  # released by its holder
    (runs["inp"] / "new2.png").unlink()


def test_stale_lock_is_broken(runs):
    stale = {"run_id": "crashed-run", "host": "gone", "time": time.time() - 1800}
    (runs["arc"] / LOCK_NAME).write_text(json.dumps(stale))
    refused = _compress(runs["inp"], runs["arc"])  # 30 min without a beat is not stale under the 1 h default
    assert refused.exit_code == 1 and "crashed-run" in _flat(refused.output)
    result = _compress(runs["inp"], runs["arc"], "--lock-timeout", "60")
    assert result.exit_code == 0, result.output
    assert "stale lock" in _flat(result.output) and "crashed-run" in _flat(result.output)
    assert not (runs["arc"] / LOCK_NAME).exists()
    assert json.loads((runs["arc"] / "manifest.json").read_text())["runs"][-1]["unchanged"] == 6


def test_a_live_holder_keeps_its_lock_past_the_timeout_by_refreshing_it(tmp_path, monkeypatch):
    """The heartbeat: a run longer than --lock-timeout is not taken for dead (the old lock had no heartbeat,
    so any run longer than the timeout lost its lock to the next one)."""
    # The lock's wall clock is the test's, moved past the timeout at once; the test then waits for the beat
    # that carries the new time (a sleep raced the heartbeat thread: a beat late by the timeout on a loaded
    # machine let the second run break a live lock).
    clock = [time.time()]
    monkeypatch.setattr(
        lock, "time", SimpleNamespace(time=lambda: clock[0], monotonic=time.monotonic, sleep=time.sleep)
    )
    later = clock[0] + 4.5  # past the timeout since the lock was taken
    refreshed = threading.Event()

    def replace_file(fs, path: str, data: bytes) -> None:  # the heartbeat's write
        real_replace_file(fs, path, data)
        if json.loads(data)["time"] >= later:
            refreshed.set()

    real_replace_file = lock.replace_file
    monkeypatch.setattr(lock, "replace_file", replace_file)
    fs, root = open_fs(str(tmp_path / "arc"), {})
    with archive_lock(fs, root, "long-run", stale_s=3.0) as holder:  # beats every 0.3 s
        taken = holder["time"]
        clock[0] = later
        assert refreshed.wait(30), "the heartbeat never refreshed the lock"
        with pytest.raises(ArchiveLockedError, match="long-run"), archive_lock(fs, root, "nightly", stale_s=3.0):
            pass
        assert json.loads((tmp_path / "arc" / LOCK_NAME).read_text())["time"] == taken + 4.5
    assert not (tmp_path / "arc" / LOCK_NAME).exists()
    with pytest.raises(ArchiveError, match="lock-timeout must be > 0"), archive_lock(fs, root, "careless", stale_s=0):
        pass


def test_a_holder_whose_lock_was_broken_says_so_and_leaves_the_new_lock_alone(tmp_path, monkeypatch):
    fs, root = open_fs(str(tmp_path / "arc"), {})
    told = threading.Event()
    said: list[str] = []

    def say(message: str) -> None:
        said.append(message)
        told.set()

    theirs = {"run_id": "breaker", "host": "elsewhere", "time": time.time(), "taken": time.time()}

    # What a run that broke the lock leaves, written right after a beat of ours: written from the test's
    # thread it could land between a beat's read and its write, which overwrites it (the lock's known race).
    def beat_then_broken(fs, path: str, data: bytes) -> None:
        real_replace_file(fs, path, data)
        (tmp_path / "arc" / LOCK_NAME).write_text(json.dumps(theirs))

    real_replace_file = lock.replace_file
    monkeypatch.setattr(lock, "replace_file", beat_then_broken)
    with archive_lock(fs, root, "stalled-run", stale_s=1.0, say=say):  # beats every 0.1 s
        assert told.wait(30), "the heartbeat never noticed"
        assert json.loads((tmp_path / "arc" / LOCK_NAME).read_text())["run_id"] == "breaker"
    assert "was broken by run breaker" in said[0] and "no longer holds it" in said[0]
    assert json.loads((tmp_path / "arc" / LOCK_NAME).read_text())["run_id"] == "breaker"  # not removed either


def test_lock_of_a_dead_process_on_this_host_is_broken_at_once(runs):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"run_id": "killed-run", "host": socket.gethostname(), "pid": int(dead.stdout), "time": time.time()}
    (runs["arc"] / LOCK_NAME).write_text(json.dumps(holder))
    result = _compress(runs["inp"], runs["arc"])  # seconds old, far under --lock-timeout
    assert result.exit_code == 0, result.output
    assert "its process is gone" in _flat(result.output) and "killed-run" in _flat(result.output)
    alive = {**holder, "run_id": "live-run", "pid": os.getpid()}  # this very process: alive
    (runs["arc"] / LOCK_NAME).write_text(json.dumps(alive))
    refused = _compress(runs["inp"], runs["arc"])
    assert refused.exit_code == 1 and "live-run" in _flat(refused.output)
    (runs["arc"] / LOCK_NAME).unlink()


def test_a_killed_run_is_marked_interrupted(runs):
    path = runs["arc"] / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["runs"][-1]["status"] = "running"  # as a run killed before its end leaves it
    path.write_text(json.dumps(manifest))
    shown = _flat(CliRunner().invoke(app, ["inspect", str(runs["arc"])]).output)
    assert "running? (it holds no lock: killed; the next run marks it interrupted)" in shown, shown
    assert "planned" not in shown.split("ok ")[0]  # incremental: no "images N of M planned" (M counts versions)
    assert _compress(runs["inp"], runs["arc"]).exit_code == 0
    statuses = [r["status"] for r in json.loads(path.read_text())["runs"]]
    assert statuses[-2:] == ["interrupted", "ok"]


def test_dry_run_reports_the_delta_without_writing(runs):
    (runs["inp"] / "new3.png").write_bytes(png_bytes(rgb(203)))
    before = _state(runs["arc"])
    result = CliRunner().invoke(
        app, ["compress", str(runs["inp"]), str(runs["arc"]), "--incremental", "--dry-run", *FAST]
    )
    (runs["inp"] / "new3.png").unlink()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["new"], report["changed"], report["unchanged"], report["deleted"]) == (1, 0, 6, 1)
    assert report["to_do"] == ["shard-000004"] and report["deleted_examples"] == ["img003.png"]
    assert _state(runs["arc"]) == before


@pytest.fixture(scope="module")
def s3_fs():
    """A moto S3 server on 127.0.0.1 (as in test_pipeline_s3): exclusive create must hold there too."""
    s3fs = pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds).create_bucket(Bucket="bucket")
    yield s3fs.S3FileSystem(key="k", secret="s", client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})
    server.stop()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_lock_excludes_concurrent_holders(where, tmp_path, request):
    """Threads racing for one archive's lock: never two holders at once, every one gets it in turn."""
    if where == "s3":
        fs, root = request.getfixturevalue("s3_fs"), f"bucket/{tmp_path.name}"
    else:
        fs, root = open_fs(str(tmp_path / "arc"), {})
    inside, turns, overlaps = [], [], []

    def worker(name: str) -> None:
        for i in range(2):
            with archive_lock(fs, root, f"{name}-{i}", wait_s=60):
                inside.append(name)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                time.sleep(0.05)
                turns.append(name)
                inside.remove(name)

    threads = [threading.Thread(target=worker, args=(f"t{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and sorted(turns) == ["t0", "t0", "t1", "t1", "t2", "t2"]
    with archive_lock(fs, root, "holder", wait_s=60):
        second = archive_lock(fs, root, "second")
        with pytest.raises(ArchiveLockedError, match="run holder on host"):
            second.__enter__()
    assert not fs.exists(f"{root}/{LOCK_NAME}")


def test_a_parquet_input_is_unchanged_on_the_next_run_and_its_path_may_be_spelled_otherwise(ray_cluster, tmp_path):
    """Nightly runs over a Parquet dataset re-coded every row (the listing knows no per-row size) and the same
    folder named './in/' instead of 'in' was 'another input'."""
    from pipeline_data.make import write_parquet

    write_parquet(tmp_path / "in" / "part-0.parquet", 5, row_group_size=2)
    arc = tmp_path / "arc"
    first = _compress(tmp_path / "in", arc)
    assert first.exit_code == 0, first.output
    before = _state(arc)
    second = CliRunner().invoke(app, ["compress", f"{tmp_path}/./in/", str(arc), "--incremental", *FAST])
    assert second.exit_code == 0, second.output
    run = json.loads((arc / "manifest.json").read_text())["runs"][-1]
    assert (run["new"], run["changed"], run["unchanged"]) == (0, 0, 5)
    assert {k: v for k, v in _state(arc).items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    assert json.loads((arc / "manifest.json").read_text())["source"]["url"] == str(tmp_path / "in")


def test_retry_errors_codes_the_refused_images_of_unchanged_sources_again(ray_cluster, tmp_path):
    """Images refused by a limit stay error rows on later nights (their sources did not change, and each such
    night exits 0) until --retry-errors, e.g. with the limit raised; it needs --incremental."""
    write_images(tmp_path / "in", 3)  # 16x16: 256 pixels
    arc = tmp_path / "arc"
    first = _compress(tmp_path / "in", arc, "--max-pixels", "200")
    assert first.exit_code == 3, first.output  # every image refused: error rows
    again = _compress(tmp_path / "in", arc)
    assert again.exit_code == 0, again.output
    run = json.loads((arc / "manifest.json").read_text())["runs"][-1]
    assert (run["unchanged"], run["retried"]) == (3, 0)
    retried = _compress(tmp_path / "in", arc, "--retry-errors")
    assert retried.exit_code == 0, retried.output
    run = json.loads((arc / "manifest.json").read_text())["runs"][-1]
    assert (run["new"], run["changed"], run["unchanged"], run["retried"]) == (0, 0, 0, 3)
    report = inspect_archive(str(arc), {})
    assert (report["ok"], report["failures"]) == (3, 0), report
    plain = CliRunner().invoke(app, ["compress", str(tmp_path / "in"), str(tmp_path / "b"), *FAST, "--retry-errors"])
    assert plain.exit_code == 2 and "add --incremental" in plain.output, plain.output
