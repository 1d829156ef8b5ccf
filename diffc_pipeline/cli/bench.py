"""``diffc bench ...``: every measurement that is too long for tests, one command each; the measuring code is
in :mod:`diffc_pipeline.benchmarks`, the results in ``bench/*.json``."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import typer

from ..redaction import command_line
from ._common import EXIT_FAILED, console, friendly_errors, parse_pairs
from .compress import STORAGE_HELP

bench_app = typer.Typer(help="Benchmarks (long measurements; results as JSON).", no_args_is_help=True)


def numbers(text: str, flag: str, kind: type = int, low: float | None = None) -> list:
    """A comma-separated option as numbers of ``kind`` (each at least ``low``), or a usage error naming the
    option: benchmarks parse these before any work."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None
    if not values or (low is not None and min(values) < low):
        raise typer.BadParameter(f"{flag} {text!r}: expected {kind.__name__} values >= {low}")
    return values


def stream_versions(text: str) -> list[int]:
    """``--versions`` as DiffC stream versions (1 or 2), or a usage error."""
    versions = numbers(text, "--versions", int, 1)
    if max(versions) > 2:
        raise typer.BadParameter(f"--versions {text!r}: DiffC's stream versions are 1 and 2")
    return versions


def run_info() -> dict:
    """Who ran what, where and when: every benchmark JSON carries it."""
    import torch

    return {
        "command": command_line(sys.argv),  # -S values and secret-named options masked
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={torch.get_num_threads()}".strip(),
        "torch": torch.__version__,
    }


def emit(result: dict, json_path: Path | None) -> None:
    """Print a benchmark's JSON to stdout (for pipes) and write it to ``json_path`` when given."""
    text = json.dumps(result, indent=1)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")


@bench_app.command("rcc")
@friendly_errors
def rcc(
    model: str = typer.Option("builtin", help="Model for the speed part: builtin, photo, gaussian or PATH."),
    configs: str = typer.Option(
        "12:12:1.2,12:13:1.2,8:12:1.25,8:12:1.0",
        help="Comma-separated chunk_bits:candidate_log2:target_gain channel settings to compare (first: the default).",
    ),
    repeats: int = typer.Option(2, min=1, help="Seeds per profile step."),
    images: int = typer.Option(8, help="64x64 images in the speed measurement (one batch)."),
    data: str = typer.Option("", help="Parquet/image URL for the speed images (default: bundled samples)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Rate overhead, sample fidelity and speed of the reverse-channel coder (prints one JSON object)."""
    from ..benchmarks.diffc_channel import channel_config
    from ..benchmarks.rcc import PROFILE_KL_BITS, measure_channel, measure_codec_speed
    from ..codecs.diffc.config import CodecConfig
    from ..models import load_model
    from ..samples import load_images

    default = CodecConfig()
    settings = [channel_config(default, spec) for spec in filter(None, configs.split(","))]  # all checked first
    curve = []
    for cfg in settings:
        console.print(f"channel: chunk_bits={cfg.chunk_bits} candidate_log2={cfg.candidate_log2} "
                      f"target_gain={cfg.target_gain}")  # fmt: skip
        curve.append({"target_gain": cfg.target_gain, **measure_channel(cfg, repeats)})
    m = load_model(model)
    x = load_images(data, images, size=64)
    speed = measure_codec_speed(m, default, x)
    result = {
        **run_info(),
        "profile": {"dims": 12288, "step_kl_bits": list(PROFILE_KL_BITS), "d": "N(0,1) x lognormal(0,0.5) scales"},
        "default_config": default.to_dict(),
        **curve[0],
        "tradeoff": curve,
        "model": m.identity.short,
        **speed,
    }
    emit(result, json_path)


@bench_app.command("speed")
@friendly_errors
def speed(
    codec: str = typer.Option("diffc", "--codec", help="Codec name (see `diffc codecs`)."),
    codec_opt: list[str] = typer.Option([], "--codec-opt", help="Codec option KEY=VALUE (repeatable)."),
    model: str = typer.Option(None, help="The codec's model: builtin, photo, gaussian or PATH (default: builtin)."),
    data: str = typer.Option("", help="Parquet/image URL of the 64x64 images (default: bundled samples)."),
    images: int = typer.Option(16, min=1, help="64x64 images to encode and decode."),
    batch_size: int = typer.Option(16, min=1, help="Images per codec call."),
    large: str = typer.Option("", help="Image folder/Parquet URL of full-size photos (e.g. CBSD68, 481x321)."),
    large_count: int = typer.Option(1, min=0, help="Full-size photos to measure (one per codec call)."),
    threads: int = typer.Option(0, min=0, help="Torch threads (0: torch's default)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Encode/decode images per second at 64x64 and full size (DiffC: and the network vs channel-coder share)."""
    import torch

    from ..benchmarks.speed import measure_speed
    from ..codecs import resolve
    from ..images import decode_image
    from ..samples import load_images
    from ..training.data import load_encoded_images

    if threads:
        torch.set_num_threads(threads)
    built = resolve(codec, parse_pairs(codec_opt, "--codec-opt"), model).build()
    runs = [measure_speed(built, load_images(data, images, size=64), batch_size)]
    console.print(runs[-1])
    for blob in load_encoded_images(large, limit=large_count) if large and large_count else []:
        runs.append(measure_speed(built, decode_image(blob)[None], 1))
        console.print(runs[-1])
    result = {**run_info(), "codec": built.describe(), "threads": torch.get_num_threads()}
    emit({**result, "runs": runs}, json_path)


@bench_app.command("pipeline")
@friendly_errors
def pipeline(
    data: str = typer.Option("../shared/data/tinyimagenet/val", help="fsspec URL of the images (Parquet or folder)."),
    sizes: str = typer.Option("16,48", help="Comma-separated image counts N for the pipeline runs."),
    codec: str = typer.Option("diffc", "--codec", help="Codec name (see `diffc codecs`)."),
    codec_opt: list[str] = typer.Option([], "--codec-opt", help="Codec option KEY=VALUE (repeatable)."),
    model: str = typer.Option(
        None, help="The codec's model: builtin, photo, gaussian or a directory (default: builtin)."
    ),
    batch_size: int = typer.Option(16, min=1, help="Images per codec call (both sides)."),
    shard_size: int = typer.Option(1000, min=1, help="Images per shard."),
    address: str = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)."),
    work_dir: str = typer.Option(None, help="Where the archives go (default: a new temporary folder)."),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=STORAGE_HELP),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Benchmark the compress pipeline against a bare in-process loop over the same codec (prints JSON)."""
    from ..benchmarks.pipeline import bench_pipeline
    from ..codecs import resolve
    from ..pipeline.sources import parse_storage_options

    counts = sorted(set(numbers(sizes, "--sizes", int, 1)))
    result = bench_pipeline(
        data,
        counts,
        resolve(codec, parse_pairs(codec_opt, "--codec-opt"), model),
        batch_size=batch_size,
        shard_size=shard_size,
        address=address,
        storage_options=parse_storage_options(storage_option),
        work_dir=work_dir,
        on_result=lambda key, value: console.print(f"{key}: {value}", highlight=False),
    )
    emit({**run_info(), **result}, json_path)


@bench_app.command("read-archive")
@friendly_errors
def read_archive(
    data: str = typer.Option("../shared/data/tinyimagenet/val", help="fsspec URL of the images."),
    images: int = typer.Option(10000, min=1, help="Images to compress and read back."),
    codec: str = typer.Option("webp", "--codec", help="A classical codec (one fast chunk per image)."),
    quality: int = typer.Option(50, help="Its quality."),
    work_dir: str = typer.Option(None, help="Where the archive goes (default: a new temporary folder)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """`read_archive` (Ray Data) against `diffc decode --format parquet` on the same rows: images/s, peak RSS."""
    from ..benchmarks.read_archive import bench_read_archive

    emit({**run_info(), **bench_read_archive(data, images, codec, quality, work_dir)}, json_path)


@bench_app.command("incremental")
@friendly_errors
def incremental(
    images: int = typer.Option(1_000_000, min=1, help="Images listed and held (half in a second version)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """A nightly run's comparison of its listing with a large archive: seconds and peak RSS (synthetic ids)."""
    from ..benchmarks.incremental import bench_incremental

    emit({**run_info(), **bench_incremental(images)}, json_path)


@bench_app.command("gaussian-theory")
@friendly_errors
def gaussian_theory(
    steps: int = typer.Option(48, min=1, help="Coding steps."),
    chunk_bits: int = typer.Option(8, min=1, help="KL budget per chunk (bits)."),
    candidate_log2: int = typer.Option(14, min=1, help="log2 of the candidates per chunk."),
    target_gain: float = typer.Option(1.15, help="Target gain of the channel coder."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """DiffC on unit-variance Gaussian data with the real channel against the paper's closed forms."""
    from ..benchmarks.diffc_channel import gaussian_theory as measure

    emit({**run_info(), **measure(steps, chunk_bits, candidate_log2, target_gain)}, json_path)


VAL_IMAGES = typer.Option(50, min=1, help="Tiny ImageNet val images (rows 100..).")
VAL_DATA = typer.Option("../shared/data/tinyimagenet/val", help="Tiny ImageNet val (Parquet).")


@bench_app.command("channel-rd")
@friendly_errors
def channel_rd(
    settings: list[str] = typer.Argument(
        ...,
        help="Channel settings CHUNK:LOG2N:GAIN[:POOL:WIDTH] (chunk bits, log2 candidates, gain, log2 pool rows, "
        "pool width).",
    ),
    images: int = VAL_IMAGES,
    data: str = VAL_DATA,
    model: str = typer.Option("builtin", help="DiffC's model."),
    stream_version: int | None = typer.Option(
        None, min=1, max=2, help="Code every setting in this stream version (default: 2 where it can, else 1)."
    ),
    ancestral: bool = typer.Option(False, help="DiffC-A too (every prefix) and DiffC-F minus DiffC-A at k=40."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """DiffC's real channel against the ideal one (BD-rate, PSNR and rate at k=40) per channel setting."""
    from ..benchmarks.diffc_channel import channel_rd as measure

    _on_val_images(
        lambda codec, x: measure(codec.model, x, list(settings), stream_version, ancestral), model, data, images,
        json_path,
    )  # fmt: skip


@bench_app.command("exact-tail")
@friendly_errors
def exact_tail(
    tails: list[str] = typer.Argument(
        ..., help="M@ideal or M@CHUNK:LOG2N:GAIN[:POOL:WIDTH]: the last M steps through that channel."
    ),
    images: int = VAL_IMAGES,
    data: str = VAL_DATA,
    model: str = typer.Option("builtin", help="DiffC's model."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Where DiffC's real channel loses fidelity: exact samples (or another channel) in the last M steps."""
    from ..benchmarks.diffc_channel import exact_tail as measure

    _on_val_images(lambda codec, x: measure(codec, x, list(tails)), model, data, images, json_path)


@bench_app.command("rate-breakdown")
@friendly_errors
def rate_breakdown(
    images: int = typer.Option(16, min=1, help="Tiny ImageNet val images (rows 100..)."),
    data: str = VAL_DATA,
    tiles: str = typer.Option("", help="Also these photos (CBSD68) as 64x64 tiles of the 3x box-downsampled image."),
    tile_count: int = typer.Option(8, min=1, help="Tiles (a fixed-seed subset) from --tiles."),
    versions: str = typer.Option("1,2", help="Stream versions to encode side by side."),
    rd: bool = typer.Option(False, "--rd", help="Also decode every 4th prefix: BD-rate of each version against ideal."),
    prior_variance: str = typer.Option(
        "", help="Also each version against this prior variance (count), side by side ('': the default only)."
    ),
    ancestral: int = typer.Option(0, min=0, help="With --rd: DiffC-F minus DiffC-A at the last step, first N images."),
    model: str = typer.Option("builtin", help="DiffC's model."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Where DiffC's bits go per prefix (header, shape, counts, indices, padding) against the KL, per version."""
    import torch

    from ..benchmarks.diffc_channel import image_sets
    from ..benchmarks.rate_breakdown import breakdown, real_vs_ideal
    from ..codecs.diffc.codec import DiffcCodec
    from ..codecs.diffc.config import CodecConfig
    from ..models import load_model

    torch.set_num_threads(1)
    widened = CodecConfig(prior_variance=prior_variance) if prior_variance else None  # checked before the work
    version_list = stream_versions(versions)
    m = load_model(model)
    sets = image_sets(data, images, tiles, tile_count)
    result: dict = {**run_info(), "model": m.identity.short, "sets": {}}
    for name, x in sets.items():
        out: dict = {"images": len(x), "versions": {}}
        for v in version_list:
            for key, config in [(f"v{v}", None)] + ([(f"v{v}+{prior_variance}", widened)] if widened else []):
                out["versions"][key] = breakdown(DiffcCodec(m, config, stream_version=v), x)
                console.print(name, key, out["versions"][key]["rows"], highlight=False)
        if rd:
            out["rd"] = real_vs_ideal(
                m, x, version_list, prior_variance=prior_variance or None,
                ancestral_images=ancestral,
            )  # fmt: skip
            console.print(name, out["rd"]["bd_rate"], highlight=False)
        result["sets"][name] = out
    emit(result, json_path)


@bench_app.command("prior-variance")
@friendly_errors
def prior_variance(
    images: int = typer.Option(16, min=1, help="Tiny ImageNet val images (rows 100..)."),
    data: str = VAL_DATA,
    tiles: str = typer.Option("", help="Also these photos (CBSD68) as 64x64 tiles of the 3x box-downsampled image."),
    tile_count: int = typer.Option(8, min=1, help="Tiles (a fixed-seed subset) from --tiles."),
    step_kl: str = typer.Option("150,454,1024,3000", help="Step KLs (bits) of the fidelity profile steps."),
    seeds: int = typer.Option(40, min=1, help="Seeds per profile step."),
    norm_gains: str = typer.Option("1.0,1.5,2.0", help="Weights of the widened prior's norm term to compare."),
    model: str = typer.Option("builtin", help="DiffC's model."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """The prior's variance (issue 20, item 4): ideal-rate savings on real chains and the channel's fidelity."""
    import torch

    from ..benchmarks.diffc_channel import image_sets
    from ..benchmarks.prior_variance import chain_rates, widened_fidelity
    from ..benchmarks.rate_breakdown import PREFIXES
    from ..codecs.diffc.codec import DiffcCodec
    from ..codecs.diffc.config import CodecConfig
    from ..models import load_model

    torch.set_num_threads(1)
    kls, gains = numbers(step_kl, "--step-kl", float, 0.0), numbers(norm_gains, "--norm-gains", float, 0.0)
    m = load_model(model)
    sets = image_sets(data, images, tiles, tile_count)
    result: dict = {**run_info(), "model": m.identity.short, "rates": {}}
    for name, x in sets.items():
        result["rates"][name] = chain_rates(DiffcCodec(m, channel="ideal"), x, PREFIXES)
        console.print(name, result["rates"][name]["rows"], highlight=False)
    result["fidelity"] = widened_fidelity(CodecConfig(), kls, seeds, gains)
    for row in result["fidelity"]:
        console.print(row, highlight=False)
    emit(result, json_path)


@bench_app.command("channel-fidelity")
@friendly_errors
def channel_fidelity(
    settings: list[str] = typer.Argument(
        None, help="Channel settings CHUNK:LOG2N:GAIN[:POOL:WIDTH] (default: the codec's)."
    ),
    versions: str = typer.Option("1,2", help="Stream versions (1: fixed gain; 2: the gain ramp)."),
    step_kl: str = typer.Option("2,4,6,8,1024", help="Step KLs (bits) of the 12,288-dimension profile steps."),
    seeds: int = typer.Option(600, min=1, help="Seeds per profile step."),
    expected: str = typer.Option("", help="Also compute (1-D simulation) full chunks with 2**L candidates: L,L,..."),
    expected_gains: str = typer.Option("1.0,1.2", help="Target gains of the --expected chunks."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """How far the channel's samples are from exact: shift and variance along d, variance across, TV."""
    import torch

    from ..benchmarks.diffc_channel import channel_config
    from ..benchmarks.fidelity import expected_chunk, fidelity
    from ..codecs.diffc.config import CodecConfig

    torch.set_num_threads(1)
    configs = [channel_config(CodecConfig(), spec) for spec in settings or ["12:12:1.2"]]  # all checked first
    version_list, kls = stream_versions(versions), numbers(step_kl, "--step-kl", float, 0.0)
    gains = numbers(expected_gains, "--expected-gains", float, 1.0)
    computed = [
        expected_chunk(11.9, log2n, g, trials=max(200, (1 << 26) >> log2n))
        for log2n in (numbers(expected, "--expected", int, 1) if expected else [])
        for g in gains
    ]
    for row in computed:
        console.print(row, highlight=False)
    rows = []
    for spec, config in zip(settings or ["12:12:1.2"], configs, strict=True):
        for v in version_list:
            rows.append({"setting": spec, **fidelity(config, v, kls, seeds)})
            console.print(rows[-1], highlight=False)
    emit({**run_info(), "rows": rows, "expected": computed}, json_path)


def _on_val_images(measure, model: str, data: str, images: int, json_path: Path | None) -> None:
    """Run ``measure(codec, images)`` with the default DiffC codec on one torch thread; print and emit its rows."""
    import torch

    from ..benchmarks.diffc_channel import val_images
    from ..codecs import resolve

    torch.set_num_threads(1)
    codec = resolve("diffc", {}, model).build()
    rows = measure(codec, val_images(data, images))
    for row in rows:
        console.print(row, highlight=False)
    emit({**run_info(), "model": codec.describe()["model"], "rows": rows}, json_path)


@bench_app.command("network")
@friendly_errors
def network(
    model: str = typer.Option("builtin", help="Model: builtin or a diffc model directory."),
    threads: str = typer.Option("1,2", help="Comma-separated torch thread counts to time."),
    repeats: int = typer.Option(4, min=1, help="Timed rounds per case (minimum reported)."),
    tiling_image: str = typer.Option(
        "", help="An image file larger than 1 MP: the denoiser's MSE tiled vs untiled on it ('': skip)."
    ),
    memory_sides: str = typer.Option(
        "1024,3456", help="Square input sides for the peak-memory runs, tiled and untiled up to 1024 ('': skip)."
    ),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """The network's ms per megapixel per call (float32 vs bfloat16 autocast, contiguous vs channels-last, side
    by side), peak memory of one call tiled and untiled (fresh process each), and what tiling changes in the
    denoiser's output."""
    from ..benchmarks.network import peak_memory, tiling_fidelity, time_variants

    thread_counts = numbers(threads, "--threads", int, 1)
    sides = numbers(memory_sides, "--memory-sides", int, 8) if memory_sides else []
    result: dict = {**run_info(), "model": model}
    cases = [(16, 64, 64), (1, 256, 256), (1, 320, 480)]
    result["timing"] = time_variants(model, cases, thread_counts, repeats)
    for row in result["timing"]:
        console.print(row, highlight=False)
    if tiling_image:
        import numpy as np

        from ..images import decode_image
        from ..models.tiling import Tiling

        img = decode_image(Path(tiling_image).read_bytes())
        img = img[: img.shape[0] // 8 * 8, : img.shape[1] // 8 * 8]
        result["tiling"] = {"image": tiling_image, "shape": list(img.shape)}
        result["tiling"]["rows"] = tiling_fidelity(model, np.ascontiguousarray(img), Tiling(), [-4.0, 0.0, 4.0])
        console.print(result["tiling"], highlight=False)
    result["memory"] = []
    for side in sides:
        for tiled in (True, False) if side <= 1024 else (True,):
            result["memory"].append(peak_memory(model, side, tiled))
            console.print(result["memory"][-1], highlight=False)
    emit(result, json_path)


@bench_app.command("large-image")
@friendly_errors
def large_image(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="The photo (any image file)."),
    size: str = typer.Option("", help="Scale it to WxH first, e.g. 4000x3000 (default: as it is)."),
    codec: str = typer.Option("diffc", "--codec", help="Codec name (see `diffc codecs`)."),
    codec_opt: list[str] = typer.Option([], "--codec-opt", help="Codec option KEY=VALUE (repeatable)."),
    decode_opt: list[str] = typer.Option([], "--decode-opt", help="Decode option KEY=VALUE (repeatable)."),
    model: str = typer.Option(None, help="The codec's model (default: the codec's own)."),
    threads: int = typer.Option(1, min=1, help="Torch threads of the one model actor."),
    work_dir: str = typer.Option(
        None, help="A new folder for the input, archive and output, kept (default: a temporary one, removed)."
    ),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
    decode: bool = typer.Option(True, help="Also decode it (--no-decode: the compress job only)."),
) -> None:
    """One large photo through `diffc compress` and `diffc decode` with one actor: peak actor RSS, time, bpp, PSNR."""
    from ..benchmarks.large_image import bench_large_image
    from ..codecs import resolve

    scaled = None
    if size:
        try:
            w, h = (int(v) for v in size.lower().split("x"))
        except ValueError:
            w = h = 0
        if w <= 0 or h <= 0:
            raise typer.BadParameter(f"--size must be WxH of positive integers, e.g. 4000x3000 (got {size!r})")
        scaled = (w, h)
    result = bench_large_image(
        image,
        scaled,
        resolve(codec, parse_pairs(codec_opt, "--codec-opt"), model),
        parse_pairs(decode_opt, "--decode-opt"),
        threads,
        work_dir,
        on_result=lambda key, value: console.print(f"{key}: {value}", highlight=False),
        decode=decode,
    )
    emit({**run_info(), **result}, json_path)


@bench_app.command("faults")
@friendly_errors
def faults(
    trials: int = typer.Option(1, min=1, help="Trials of each fault kind (actor, node, driver)."),
    images: int = typer.Option(16, min=4, max=128, help="Images per trial (16x16 tiles, one per shard)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Kill encoder actors, a worker node and the driver mid-job on a local 3-node Ray cluster; check archives."""
    from ..benchmarks.faults import run_faults

    result = {**run_info(), **run_faults(trials, images, say=console.print)}
    emit(result, json_path)
    if any(s["consistent_trials"] < s["trials"] for s in result["summary"].values()):
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
