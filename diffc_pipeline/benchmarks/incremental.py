"""``diffc bench incremental``: what a nightly run's comparison with a large archive costs, without the archive.

A synthetic listing of N images is compared with a synthetic index of the same N images held (half of them
in a second version, as changed sources leave them), through the two functions every incremental run calls:
``latest_rows`` (the latest version of each id) and ``compare`` (new / changed / unchanged / retried). Run in
a fresh process, so its peak RSS is the comparison's, not what an earlier benchmark left. Reading the index
from storage is not included (it fetches only the compared columns: ``held_sources``).
"""

from __future__ import annotations

import json
import subprocess
import sys

_MEASURE = """
import json, sys
from diffc_pipeline.benchmarks.incremental import measure
print(json.dumps(measure(int(sys.argv[1]))))
"""


def measure(images: int) -> dict:
    """Time ``latest_rows`` and ``compare`` on ``images`` synthetic ids; peak RSS of this process."""
    import resource
    import time

    import numpy as np
    import pyarrow as pa

    from ..pipeline.incremental import compare, latest_rows

    ids = pa.array([f"train/n{i // 500:05d}/img{i:08d}.JPEG" for i in range(images)])
    when = pa.array(np.full(images, 1_764_000_000_000_000), pa.timestamp("us", tz="UTC"))
    items = pa.table(
        {
            "id": ids,
            "source_uri": pa.array([f"s3://bucket/{i}" for i in ids.to_pylist()]),
            "source_size": pa.array(np.full(images, 110_000), pa.int64()),
            "source_mtime": when,
            "source_etag": pa.nulls(images, pa.string()),
        }
    )
    held = items.append_column("status", pa.array(["ok"] * images)).append_column(
        "error", pa.nulls(images, pa.string())
    )
    first = pa.array([f"shard-{i // 1000:06d}" for i in range(images)])
    second = pa.array([f"shard-{1_000_000 + i // 1000:07d}" for i in range(images // 2)])
    index = pa.concat_tables(
        [held.append_column("shard", first), held.slice(0, images // 2).append_column("shard", second)]
    )
    t = time.perf_counter()
    latest = latest_rows(index)
    latest_s = time.perf_counter() - t
    t = time.perf_counter()
    delta = compare(items, latest.drop_columns(["shard"]))
    compare_s = time.perf_counter() - t
    return {
        "images": images,
        "index_rows": index.num_rows,
        "latest_rows_s": latest_s,
        "compare_s": compare_s,
        "unchanged": delta.unchanged,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_incremental(images: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(images)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
