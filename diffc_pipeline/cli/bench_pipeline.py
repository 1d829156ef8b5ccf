"""``diffc bench pipeline``: Ray pipeline vs a bare loop, worker memory vs N, bytes read by a low-bitrate decode."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, friendly_errors, parse_pairs
from .bench import bench_app, emit, run_info
from .compress import STORAGE_HELP


@friendly_errors
def pipeline(
    data: str = typer.Option("../shared/data/tinyimagenet/val", help="fsspec URL of the images (Parquet or folder)."),
    sizes: str = typer.Option("16,48", help="Comma-separated image counts N for the pipeline runs."),
    codec: str = typer.Option("diffc", "--codec", help="Codec name (see `diffc codecs`)."),
    codec_opt: list[str] = typer.Option([], "--codec-opt", help="Codec option KEY=VALUE (repeatable)."),
    model: str = typer.Option(None, help="The codec's model: builtin, gaussian or a directory [default: builtin]."),
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

    counts = sorted({int(v) for v in sizes.split(",") if v.strip()})
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


def register(app: typer.Typer) -> None:
    bench_app.command("pipeline")(pipeline)
