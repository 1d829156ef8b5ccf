"""``diffc bench large-image``: one large photo through ``diffc compress`` and ``diffc decode``, end to end.

What a user with a 12 MP camera JPEG meets: the pipeline's defaults (pixel-sized batches, tiled networks),
one model actor, and that actor's peak resident memory (the issue's bound is per actor: the kernel's
``VmHWM`` of the compress job's encoder actor and of the decode job's decoder actor), with wall time, bits
per pixel and the PSNR of the decoded image against the input. The photo is the user's file as it is, or
scaled to a size asked for (a photo scaled up is smoother than a native one, so it costs fewer bits: time and
memory scale with pixels, rate does not).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from ..codecs import CodecSpec
from ..errors import DiffcError
from ..evaluation.metrics import psnr
from ..images import decode_image
from ..pipeline.compress_job import CompressOptions, run_compress
from ..pipeline.decode_job import DecodeOptions, run_decode
from ..pipeline.progress import JobProgress
from ..pipeline.runtime import ray_session
from .pipeline import peak_rss

# Ray's process titles of the model actors of the two jobs (pipeline/compress_job.py, pipeline/decode_job.py).
ENCODER_ACTOR = b"ray::MapWorker(MapBatches(Encoder))"
DECODER_ACTOR = b"ray::MapWorker(MapBatches(Decoder))"


def prepare_image(image: Path, size: tuple[int, int] | None, folder: Path) -> Path:
    """Write the benchmark's input into ``folder`` (as PNG when scaled, else a copy of the file's bytes)."""
    folder.mkdir(parents=True)
    if size is None:
        target = folder / image.name
        target.write_bytes(image.read_bytes())
        return target
    with Image.open(image) as img:
        scaled = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    target = folder / f"{image.stem}_{size[0]}x{size[1]}.png"
    scaled.save(target)
    return target


def bench_large_image(
    image: Path,
    size: tuple[int, int] | None,
    spec: CodecSpec,
    decode_options: dict,
    threads: int,
    work_dir: str | None = None,
    on_result=lambda key, value: None,
    decode: bool = True,
) -> dict:
    """Compress then decode the one image with one actor of ``threads`` torch threads; peaks per job.
    ``decode=False`` measures the compress job only (DiffC's 12 MP decode with DiffC-F is 28 network calls:
    over an hour on 2 cores).

    ``work_dir`` must be new or empty (a second run there would resume the first one's archive and measure
    nothing); without it a temporary folder is used and removed afterwards.
    """
    if work_dir and Path(work_dir).exists() and any(Path(work_dir).iterdir()):
        raise DiffcError(f"--work-dir {work_dir} is not empty: give a new folder (a run there would resume)")
    work = Path(work_dir or tempfile.mkdtemp(prefix="diffc-bench-large-"))
    try:
        result = _run(image, size, spec, decode_options, threads, work, on_result, decode)
        return {**result, "work_dir": work_dir} if work_dir else result
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)


def _run(image, size, spec, decode_options, threads, work, on_result, decode: bool) -> dict:
    source = prepare_image(image, size, work / "src")
    original = decode_image(source.read_bytes())
    result: dict = {
        "image": str(image),
        "height": original.shape[0],
        "width": original.shape[1],
        "megapixels": original.shape[0] * original.shape[1] / 1e6,
        "codec": spec.to_dict(),
        "decode_options": decode_options,
        "threads": threads,
    }
    archive, out = str(work / "archive"), work / "decoded"
    with ray_session(None):
        with peak_rss(interval_s=1.0, title=ENCODER_ACTOR, field="VmHWM") as peaks:
            t0 = time.perf_counter()
            s = run_compress(
                CompressOptions(
                    input=str(source.parent),
                    output=archive,
                    codec=spec.name,
                    codec_options=spec.options,
                    model=spec.model,
                    threads=threads,
                    actors=1,
                ),
                JobProgress("bench", enabled=False),
            )
            wall = time.perf_counter() - t0
        if s.failures or s.images != 1:
            errors = [
                e
                for f in Path(archive).rglob("*.parquet")
                for e in pq.read_table(f, columns=["error"])[0].to_pylist()
                if e
            ]
            raise DiffcError(f"the compress job coded {s.images} of 1 image: {'; '.join(errors) or 'no row written'}")
        result["compress"] = {"wall_s": wall, "bpp": s.bpp, "peak_actor_rss_mb": _actor_peak(peaks, "encoder")}
        on_result("compress", result["compress"])
        if not decode:
            return result
        with peak_rss(interval_s=1.0, title=DECODER_ACTOR, field="VmHWM") as peaks:
            t0 = time.perf_counter()
            d = run_decode(
                DecodeOptions(archive, str(out), decode_options=decode_options, threads=threads, actors=1),
                JobProgress("bench", enabled=False),
            )
            wall = time.perf_counter() - t0
        decoded_files = list(out.glob("*.png"))
        if d.failures or len(decoded_files) != 1:
            raise DiffcError(f"the decode job wrote {len(decoded_files)} of 1 image ({d.failures} failed)")
        result["decode"] = {
            "wall_s": wall,
            "bpp": d.bpp,
            "psnr_db": psnr(original, decode_image(decoded_files[0].read_bytes())),
            "peak_actor_rss_mb": _actor_peak(peaks, "decoder"),
        }
        on_result("decode", result["decode"])
    return result


def _actor_peak(peaks: dict, role: str) -> float:
    """The actor's peak RSS in MiB; an error when no actor of this process was seen (e.g. ``RAY_ADDRESS`` named
    another cluster, whose workers are not this process's children)."""
    if not peaks["largest"]:
        raise DiffcError(f"no {role} actor of this process was seen: run without RAY_ADDRESS (a local cluster)")
    return peaks["largest"] / 2**20
