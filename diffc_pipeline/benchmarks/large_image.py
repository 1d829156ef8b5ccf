"""``diffc bench large-image``: one large photo through ``diffc compress`` and ``diffc decode``, end to end.

What a user with a 12 MP camera JPEG meets: the pipeline's defaults (pixel-sized batches, tiled networks),
one model actor, and the peak resident memory of that actor (the issue's bound is per actor) sampled
while each job runs, with wall time, bits per pixel and the PSNR of the decoded image against the input.
The photo is the user's file, or a shipped sample scaled up to the size asked for (an upscaled photo is
smoother than a native one, so it costs fewer bits: time and memory scale with pixels, rate does not).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from PIL import Image

from ..codecs import CodecSpec
from ..evaluation.metrics import psnr
from ..images import decode_image
from ..pipeline.compress_job import CompressOptions, run_compress
from ..pipeline.decode_job import DecodeOptions, run_decode
from ..pipeline.progress import JobProgress
from ..pipeline.runtime import ray_session
from .pipeline import peak_rss


def prepare_image(image: Path, size: tuple[int, int] | None, folder: Path) -> Path:
    """Write the benchmark's input into ``folder`` (as PNG when scaled, else a copy of the file's bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
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
) -> dict:
    """Compress then decode the one image with one actor of ``threads`` torch threads; peaks per phase."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="diffc-bench-large-"))
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
        with peak_rss(interval_s=1.0) as peaks:
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
        if s.failures:
            raise RuntimeError(f"the compress job wrote an error row for {source.name}: see {archive}")
        result["compress"] = {"wall_s": wall, "bpp": s.bpp, "peak_actor_rss_mb": peaks["largest"] / 2**20}
        on_result("compress", result["compress"])
        with peak_rss(interval_s=1.0) as peaks:
            t0 = time.perf_counter()
            d = run_decode(
                DecodeOptions(archive, str(out), decode_options=decode_options, threads=threads, actors=1),
                JobProgress("bench", enabled=False),
            )
            wall = time.perf_counter() - t0
        if d.failures:
            raise RuntimeError(f"the decode job wrote an error row for {source.name}")
        decoded = decode_image(next(out.glob("*.png")).read_bytes())
        result["decode"] = {
            "wall_s": wall,
            "bpp": d.bpp,
            "psnr_db": psnr(original, decoded),
            "peak_actor_rss_mb": peaks["largest"] / 2**20,
        }
        on_result("decode", result["decode"])
    result["work_dir"] = str(work)
    return result
