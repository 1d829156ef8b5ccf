"""``diffc bench pipeline``: the Ray pipeline against a bare in-process loop over the same codec.

Reports, for each N: images/s of both (the pipeline's in steady state, after its first batch, and
overall, with actor start-up), their ratio, the peak RSS of the Ray worker processes (flat in N when the
pipeline streams), and for the largest archive the bytes a low-bitrate decode reads against the bytes
of the chunks it needs. Ray's own start-up is measured apart.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..codecs import CodecSpec
from ..images import decode_image
from ..pipeline.compress_job import CompressOptions, run_compress
from ..pipeline.decode_job import DecodeOptions, run_decode
from ..pipeline.progress import JobProgress
from ..pipeline.runtime import ray_session
from ..pipeline.sources import list_source, read_bytes
from ..seeds import image_seed


class _BatchClock(JobProgress):
    """A silent progress that notes when each encoded batch arrives (the first one ends start-up)."""

    def __init__(self) -> None:
        super().__init__("bench", enabled=False)
        self.arrivals: list[tuple[float, int]] = []

    def add(self, images: int, failures: int, bits: int, pixels: int) -> None:
        self.arrivals.append((time.perf_counter(), images))
        super().add(images, failures, bits, pixels)

    def steady_rate(self) -> float | None:
        """Images/s from the first batch to the last (None with under 4 batches: too few to tell)."""
        if len(self.arrivals) < 4:
            return None
        (t_first, _), (t_last, _) = self.arrivals[0], self.arrivals[-1]
        return sum(n for _, n in self.arrivals[1:]) / (t_last - t_first)


def ray_worker_rss(title: bytes = b"ray::", field: str = "VmRSS") -> tuple[int, int]:
    """``(total, largest)`` resident bytes of the Ray worker processes this process started whose title starts
    with ``title`` (``ray::``: all of them; ``ray::MapWorker(MapBatches(Encoder))``: the compress job's model
    actors). ``field``: ``VmRSS`` (now) or ``VmHWM`` (the process's peak so far, kept by the kernel).

    Read from /proc (Linux) rather than psutil, to keep a benchmark-only dependency out of the package;
    only descendants of this process count, so other Ray clusters on the machine are left out.
    """
    parent, name, rss = {}, {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name[int(pid)] = f.read(len(title))
        except OSError:
            continue
        parent[int(pid)] = int(fields["PPid"])
        rss[int(pid)] = int(fields.get(field, "0 kB").split()[0]) * 1024

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    workers = [rss[p] for p in rss if name.get(p, b"") == title and ours(p)]
    return sum(workers), max(workers, default=0)


@contextmanager
def peak_rss(interval_s: float = 0.25, title: bytes = b"ray::", field: str = "VmRSS") -> Iterator[dict]:
    """Sample the RSS of the matching workers (:func:`ray_worker_rss`) in a thread while the block runs;
    yields a dict filled with the peaks."""
    peaks = {"total": 0, "largest": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total, largest = ray_worker_rss(title, field)
            peaks["total"], peaks["largest"] = max(peaks["total"], total), max(peaks["largest"], largest)
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def bare_loop(
    threads: int,
    data: str,
    n: int,
    spec: CodecSpec,
    batch_size: int,
    seed: int,
    storage_options: Mapping[str, object],
) -> dict:
    """Read, decode and compress the first ``n`` images in this process (model loaded before the clock).

    ``threads``: torch threads (0: torch's default, which is what a plain script gets).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        codec = spec.build()
        items = list_source(data, storage_options, limit=n).items
        t0 = time.perf_counter()
        for start in range(0, items.num_rows, batch_size):
            part = items.slice(start, batch_size)
            pixels = [decode_image(b) for b in read_bytes(part, storage_options, "image")]
            codec.compress(np.stack(pixels), [image_seed(seed, i) for i in part.column("id").to_pylist()])
        wall = time.perf_counter() - t0
        return {
            "threads": torch.get_num_threads(),
            "images": items.num_rows,
            "wall_s": wall,
            "images_per_s": items.num_rows / wall,
        }
    finally:
        torch.set_num_threads(previous)


def pipeline_run(
    data: str,
    n: int,
    out: str,
    spec: CodecSpec,
    batch_size: int,
    shard_size: int,
    seed: int,
    storage_options: Mapping[str, object],
) -> dict:
    clock = _BatchClock()
    opts = CompressOptions(
        input=data,
        output=out,
        storage_options=dict(storage_options),
        codec=spec.name,
        codec_options=spec.options,
        model=spec.model,
        batch_size=batch_size,
        shard_size=shard_size,
        seed=seed,
        limit=n,
    )
    with peak_rss() as peaks:
        t0 = time.perf_counter()
        summary = run_compress(opts, clock)
        t1 = time.perf_counter()
    return {
        "images": summary.images,
        "failures": summary.failures,
        "wall_s": t1 - t0,
        "images_per_s": summary.images / (t1 - t0),
        "startup_s": clock.arrivals[0][0] - t0 if clock.arrivals else None,
        "batches": len(clock.arrivals),
        "steady_images_per_s": clock.steady_rate(),
        "bpp": summary.bpp,
        "peak_worker_rss_mb": peaks["total"] / 2**20,
        "peak_largest_worker_rss_mb": peaks["largest"] / 2**20,
        "actors": summary.actors,
    }


def decode_bytes(archive: str, out: str, spec: CodecSpec, step: int, storage_options: Mapping[str, object]) -> dict:
    s = run_decode(
        DecodeOptions(
            archive, out, step=step, model=spec.model, format="parquet", storage_options=dict(storage_options)
        ),
        JobProgress("bench", enabled=False),
    )
    return {
        "step": step,
        "images": s.images,
        "index_bytes_read": s.index_bytes_read,
        "bytes_read": s.bytes_read,
        "bytes_needed": s.bytes_needed,
        "read_over_needed": s.bytes_read / max(1, s.bytes_needed),
        "bpp": s.bpp,
    }


def bench_pipeline(
    data: str,
    sizes: list[int],
    spec: CodecSpec,
    batch_size: int = 16,
    shard_size: int = 1000,
    seed: int = 0,
    address: str | None = None,
    storage_options: Mapping[str, object] | None = None,
    work_dir: str | None = None,
    on_result=lambda key, value: None,
) -> dict:
    """Run the whole benchmark; ``on_result(key, value)`` is called as each part finishes.

    The bare loop runs twice, with torch's default threads and with one thread, over the first
    ``min(sizes)`` images; pipeline ratios are against the faster of the two.
    """
    storage_options = storage_options or {}
    work = Path(work_dir or tempfile.mkdtemp(prefix="diffc-bench-"))
    result: dict = {
        "data": data,
        "codec": spec.to_dict(),
        "batch_size": batch_size,
        "cpus": os.cpu_count(),
        "bare": [],
    }
    for threads in (0, 1):
        run = bare_loop(threads, data, min(sizes), spec, batch_size, seed, storage_options)
        result["bare"].append(run)
        on_result(f"bare threads={run['threads']}", run)
    best = max(r["images_per_s"] for r in result["bare"])
    t0 = time.perf_counter()
    with ray_session(address):
        result["ray_start_s"] = time.perf_counter() - t0
        result["pipeline"] = []
        for n in sizes:
            run = pipeline_run(data, n, str(work / f"arc-{n}"), spec, batch_size, shard_size, seed, storage_options)
            run["ratio_overall"] = run["images_per_s"] / best
            run["ratio_steady"] = run["steady_images_per_s"] / best if run["steady_images_per_s"] else None
            result["pipeline"].append({"n": n, **run})
            on_result(f"pipeline n={n}", run)
        largest = str(work / f"arc-{max(sizes)}")
        codec = spec.build()
        chunks = codec.num_chunks
        result["decode"] = []
        for step in sorted({1, max(1, chunks // 2)}) if codec.progressive else [chunks]:
            d = decode_bytes(largest, str(work / f"dec-{step}"), spec, step, storage_options)
            result["decode"].append(d)
            on_result(f"decode step={step}", d)
    result["work_dir"] = str(work)
    return result
