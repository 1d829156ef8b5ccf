"""``diffc bench faults``: fault injection on a real multi-node Ray cluster (one machine).

How many kills a compress job survives, with what left in the archive:

    diffc bench faults [--trials 3] [--images 24] [--json bench/faults.json]

A ``ray.cluster_utils.Cluster`` with a head and two worker nodes (separate raylets and worker processes)
runs ``diffc compress`` jobs (Gaussian model, 2 steps, 16x16 tiles of the bundled samples, one image per
shard) while this script injects faults:

- ``actor``: SIGKILL one encoder actor process after each of the first three commits;
- ``node``: kill a worker node (raylet and all its workers, no graceful shutdown) after the first commit and
  add a fresh node, as an autoscaler would;
- ``driver``: SIGKILL the driver process after the first commits, then rerun the same command (resume).

After each trial the archive is checked: every input id exactly once, all rows ``ok``, one commit marker
per shard file, no temporary file, no lock left. Results go to a JSON file for docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from ..pipeline.commit import MARKER_SUFFIX, MARKERS_DIR, SHARDS_DIR, TMP_PREFIX
from ..pipeline.compress_job import CompressOptions, run_compress
from ..pipeline.lock import LOCK_NAME
from ..pipeline.progress import JobProgress
from ..samples import load_images

ENCODER_TITLE = b"ray::MapWorker(MapBatches(Encoder))"
STEPS = 2
TIMEOUT_S = 900


def write_tiles(folder: Path, n: int) -> list[str]:
    """``n`` distinct 16x16 PNG tiles cut from the bundled sample images."""
    folder.mkdir(parents=True)
    tiles = []
    for arr in load_images():  # (64, 64, 3) uint8 each: 16 tiles per image
        tiles += [arr[y : y + 16, x : x + 16] for y in range(0, 64, 16) for x in range(0, 64, 16)]
    ids = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(tiles[i]).save(buf, format="PNG")
        (folder / f"tile{i:03d}.png").write_bytes(buf.getvalue())
        ids.append(f"tile{i:03d}.png")
    return ids


def commits(arc: Path) -> int:
    return len(list((arc / MARKERS_DIR).glob(f"*{MARKER_SUFFIX}")))


def encoder_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(ENCODER_TITLE):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def check_archive(arc: Path, ids: list[str]) -> dict:
    """Counts of what a reader of the archive sees; ``consistent`` is the verdict."""
    rows = pq.read_table(arc / SHARDS_DIR).select(["id", "status"]).to_pylist()
    seen = [r["id"] for r in rows]
    files = [p.name for p in (arc / SHARDS_DIR).iterdir()]
    report = {
        "records_checked": len(seen),
        "missing": len(set(ids) - set(seen)),
        "duplicates": len(seen) - len(set(seen)),
        "not_ok": sum(r["status"] != "ok" for r in rows),
        "tmp_files": sum(f.startswith(TMP_PREFIX) for f in files),
        "files_without_marker": len(files) - commits(arc),
        "lock_left": (arc / LOCK_NAME).exists(),
    }
    report["consistent"] = not any(v for k, v in report.items() if k != "records_checked")
    return report


def wait_until(condition, alive, what: str) -> bool:
    deadline = time.time() + TIMEOUT_S
    while not condition():
        if not alive():
            return False
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)
    return True


def in_thread(inp: Path, arc: Path, address: str | None, incremental: bool = False) -> tuple[threading.Thread, dict]:
    """Start a compress job in a thread of this driver; the dict gets its ``summary`` or ``error``."""
    out: dict = {}
    opts = CompressOptions(
        input=str(inp), output=str(arc), model="gaussian", codec_options={"num_steps": STEPS},
        shard_size=1, batch_size=1, address=address, incremental=incremental,
    )  # fmt: skip

    def run() -> None:
        try:
            out["summary"] = run_compress(opts, JobProgress("bench", enabled=False), say=lambda _: None)
        except BaseException as exc:  # reported in the trial's record
            out["error"] = repr(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def actor_trial(root: Path, ids: list[str], address: str) -> dict:
    arc = root / "arc"
    thread, out = in_thread(root / "in", arc, address)
    kills = 0
    for wave in range(3):
        if not wait_until(lambda w=wave: commits(arc) > w and encoder_pids(), thread.is_alive, "actor"):
            break
        os.kill(encoder_pids()[0], signal.SIGKILL)
        kills += 1
    thread.join(TIMEOUT_S)
    return {"kills": kills, "error": out.get("error"), **check_archive(arc, ids)}


def node_trial(root: Path, ids: list[str], address: str, cluster) -> dict:
    arc = root / "arc"
    thread, out = in_thread(root / "in", arc, address)
    kills = 0
    if wait_until(lambda: commits(arc) > 0, thread.is_alive, "node"):
        cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=False)
        cluster.add_node(num_cpus=1)
        kills = 1
    thread.join(TIMEOUT_S)
    return {"kills": kills, "error": out.get("error"), **check_archive(arc, ids)}


def driver_trial(root: Path, ids: list[str], address: str) -> dict:
    arc = root / "arc"
    cmd = [sys.executable, "-m", "diffc_pipeline", "compress", str(root / "in"), str(arc), "--model", "gaussian",
           "--steps", str(STEPS), "--shard-size", "1", "--batch-size", "1", "--address", address]  # fmt: skip
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    kills = 0
    if wait_until(lambda: commits(arc) > 1, lambda: proc.poll() is None, "driver"):
        os.killpg(proc.pid, signal.SIGKILL)
        kills = 1
    proc.wait()
    done = commits(arc)
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    error = None if rerun.returncode == 0 else rerun.stderr[-500:]
    return {"kills": kills, "committed_before_rerun": done, "error": error, **check_archive(arc, ids)}


def run_faults(trials: int, images: int, say=print) -> dict:
    """Run ``trials`` trials of each fault kind on a fresh 3-node local cluster; return the report."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    results: dict[str, list[dict]] = {"actor": [], "node": [], "driver": []}
    work = Path(tempfile.mkdtemp(prefix="diffc-faults-"))
    started = time.time()
    try:
        for trial in range(trials):
            for kind in results:
                root = work / f"{kind}-{trial}"
                ids = write_tiles(root / "in", images)
                t = time.time()
                if kind == "actor":
                    record = actor_trial(root, ids, cluster.address)
                elif kind == "node":
                    record = node_trial(root, ids, cluster.address, cluster)
                else:
                    record = driver_trial(root, ids, cluster.address)
                record["wall_s"] = round(time.time() - t, 1)
                results[kind].append(record)
                say(f"{kind} trial {trial}: {json.dumps(record)}")
                shutil.rmtree(root)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        kind: {
            "trials": len(recs),
            "kills": sum(r["kills"] for r in recs),
            "records_checked": sum(r["records_checked"] for r in recs),
            "consistent_trials": sum(r["consistent"] and not r["error"] for r in recs),
        }
        for kind, recs in results.items()
    }
    return {
        "cluster": "ray.cluster_utils.Cluster: head (1 CPU) + 2 worker nodes (1 CPU each), one machine",
        "images_per_trial": images,
        "wall_s": round(time.time() - started, 1),
        "summary": summary,
        "trials": results,
    }
