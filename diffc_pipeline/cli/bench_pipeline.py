"""``diffc bench pipeline``: Ray pipeline vs a bare loop, worker memory vs N, bytes read by a low-bitrate decode."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import console, friendly_errors
from .bench import bench_app, emit, run_info
from .compress import STORAGE_HELP, codec_overrides


@friendly_errors
def pipeline(
    data: str = typer.Option("../shared/data/tinyimagenet/val", help="fsspec URL of the images (Parquet or folder)."),
    sizes: str = typer.Option("16,48", help="Comma-separated image counts N for the pipeline runs."),
    model: str = typer.Option("builtin", help="builtin, gaussian or a model directory."),
    steps: int = typer.Option(None, min=1, help="Coding steps (codec num_steps; default: the codec's)."),
    codec: list[str] = typer.Option([], "--codec", help="Other codec parameter KEY=VALUE (repeatable)."),
    batch_size: int = typer.Option(16, min=1, help="Images per codec call (both sides)."),
    shard_size: int = typer.Option(1000, min=1, help="Images per shard."),
    address: str = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)."),
    work_dir: str = typer.Option(None, help="Where the archives go (default: a new temporary folder)."),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=STORAGE_HELP),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Benchmark the compress pipeline against a bare in-process loop over the same codec (prints JSON)."""
    from ..pipeline.bench import bench_pipeline
    from ..pipeline.sources import parse_storage_options

    counts = sorted({int(v) for v in sizes.split(",") if v.strip()})
    result = bench_pipeline(
        data,
        counts,
        model,
        codec_overrides(codec, steps),
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
