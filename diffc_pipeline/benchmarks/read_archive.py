"""``diffc bench read-archive``: the Ray Data reader against ``diffc decode --format parquet`` on the same rows.

Both decode the same archive (a classical codec by default, so the codec's own time stays small and the
reader's overhead shows) in fresh processes, one after the other in one run; each reports its wall time and
the peak RSS of its driver process (what a training job that consumes ``read_archive`` holds).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_DECODE = """
import json, resource, sys, time
import diffc_pipeline as dp
t = time.perf_counter()
s = dp.decode(sys.argv[1], sys.argv[2], format="parquet")
print(json.dumps({"images": s.images, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
_READ = """
import json, resource, sys, time
import diffc_pipeline as dp
t = time.perf_counter()
n = 0
for batch in dp.read_archive(sys.argv[1], columns=("id", "image", "bpp")).iter_batches(batch_size=256):
    n += len(batch["id"])
print(json.dumps({"images": n, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_read_archive(data: str, images: int, codec: str, quality: int, work_dir: str | None) -> dict:
    import diffc_pipeline as dp

    work = Path(work_dir or tempfile.mkdtemp(prefix="diffc-bench-read-"))
    archive = str(work / "archive")
    t0 = time.perf_counter()
    dp.compress(data, archive, codec=codec, codec_options={"quality": quality}, limit=images, overwrite=True)
    compress_s = time.perf_counter() - t0
    decode = _run(_DECODE, archive, str(work / "decoded"))
    read = _run(_READ, archive)
    for r in (decode, read):
        r["images_per_s"] = r["images"] / r["wall_s"]
    return {
        "data": data,
        "codec": {"name": codec, "quality": quality},
        "images": images,
        "compress_s": compress_s,
        "decode_parquet": decode,
        "read_archive": read,
        "read_over_decode": read["images_per_s"] / decode["images_per_s"],
        "work_dir": str(work),
    }
