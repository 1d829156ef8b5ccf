"""``diffc compress``: a whole image dataset into a resumable Parquet archive, on Ray."""

from __future__ import annotations

import dataclasses
import json
import math

import typer
from rich.table import Table

from ..errors import DiffcError
from ..images import DEFAULT_MAX_PIXELS
from ._common import EXIT_FAILED, EXIT_PARTIAL, console, friendly_errors

INCREMENTAL_FIELDS = ("run_id", "new", "changed", "unchanged", "deleted", "deleted_examples")
STORAGE_HELP = "fsspec storage option KEY=VALUE for INPUT and OUTPUT (repeatable; a.b=c nests). Never printed."


def codec_overrides(pairs: list[str], steps: int | None) -> dict:
    """``--codec KEY=VALUE`` (and ``--steps``) -> CodecConfig fields, typed like the defaults."""
    from ..codec import CodecConfig

    defaults = CodecConfig()
    defaults_by_name = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(CodecConfig)}
    # a field whose default is None (pool_rows_log2) takes an int
    types = {name: int if value is None else type(value) for name, value in defaults_by_name.items()}
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise DiffcError(f"--codec {pair!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        try:
            out[key] = types[key](value)
        except ValueError:
            raise DiffcError(f"--codec {key}: {value!r} is not a valid {types[key].__name__}") from None
    if steps is not None:
        out["num_steps"] = steps
    return out


@friendly_errors
def compress(
    input: str = typer.Argument(..., help="fsspec URL: image folder/glob (recursive) or Parquet dataset."),
    output: str = typer.Argument(..., help="fsspec URL of the archive folder (created; resumed if it exists)."),
    image_column: str = typer.Option("image", help="Image-bytes column of a Parquet input."),
    id_column: str = typer.Option("id", help="Id column of a Parquet input (default ids: FILE:ROW)."),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=STORAGE_HELP),
    shard_size: int = typer.Option(1000, min=1, help="Images per shard (part of the plan: keep it to resume)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (inputs, shards, done) and exit."),
    resume: bool = typer.Option(True, "--resume/--overwrite", help="Skip committed shards, or redo everything."),
    model: str = typer.Option("builtin", help="'builtin', 'gaussian' or a model directory."),
    address: str = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)."),
    seed: int = typer.Option(0, help="Dataset seed; each image's seed derives from it and the image id."),
    steps: int = typer.Option(None, min=1, help="Coding steps (codec num_steps)."),
    codec: list[str] = typer.Option([], "--codec", help="Other codec parameter KEY=VALUE (repeatable)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Reject larger images (decompression bombs)."),
    batch_size: int = typer.Option(16, min=1, help="Images per codec call."),
    threads: int = typer.Option(0, min=0, help="Torch threads per model actor (0: sized to the machine)."),
    actors: int = typer.Option(0, min=0, help="Model actors (0: one per GPU, or sized to the CPUs)."),
    limit: int = typer.Option(0, min=0, help="Only the first N images in plan order (0: all)."),
    incremental: bool = typer.Option(
        False,
        "--incremental",
        help="Compress only new or changed sources into new shards (a changed one gets a new version); "
        "deletions are reported; the run is recorded in the manifest.",
    ),
    wait_lock: float = typer.Option(
        0.0, min=0, help="Wait up to SECONDS for another run's archive lock (every run holds one while it writes)."
    ),
    lock_timeout: float = typer.Option(
        6 * 3600.0, min=0, help="Break an archive lock older than SECONDS (a run that died holding it)."
    ),
) -> None:
    """Compress a dataset into Parquet shards plus a manifest; rerun to resume.

    Exit codes: 0 ok, 3 some images failed (error rows), 1 the run failed (e.g. the archive is locked),
    2 bad arguments or input.
    """
    from ..pipeline.compress_job import CompressOptions, build_codec, prepare, run_compress
    from ..pipeline.lock import ArchiveLockedError
    from ..pipeline.progress import JobProgress
    from ..pipeline.sources import parse_storage_options

    opts = CompressOptions(
        input=input,
        output=output,
        storage_options=parse_storage_options(storage_option),
        image_column=image_column,
        id_column=id_column,
        shard_size=shard_size,
        seed=seed,
        model=model,
        codec_config=codec_overrides(codec, steps),
        overwrite=not resume,
        address=address,
        max_pixels=max_pixels,
        batch_size=batch_size,
        threads=threads,
        actors=actors,
        limit=limit,
        incremental=incremental,
        wait_lock=wait_lock,
        lock_timeout=lock_timeout,
    )
    built = build_codec(opts.model, opts.codec_config)
    if dry_run:
        report = prepare(opts, built).describe()
        todo = report.pop("to_do")
        report["to_do"] = todo[:10] + ([f"... {len(todo) - 10} more"] if len(todo) > 10 else [])
        typer.echo(json.dumps(report, indent=1))
        return
    try:
        summary = run_compress(opts, JobProgress("compress", console), codec=built, say=_warn)
    except ArchiveLockedError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    fields = dataclasses.asdict(summary)
    if not incremental:
        for key in INCREMENTAL_FIELDS:
            fields.pop(key)
    table = Table(title="compress summary", show_header=False)
    for key, value in fields.items():
        table.add_row(key.replace("_", " "), format_value(value))
    console.print(table)
    if summary.deleted:
        console.print(
            f"[yellow]{summary.deleted} archived source(s) are no longer listed (kept in the archive), e.g. "
            f"{', '.join(summary.deleted_examples)}[/yellow]",
            highlight=False,
        )
    if summary.failures:
        console.print(f"[yellow]{summary.failures} image(s) failed; see the error column (diffc inspect)[/yellow]")
        raise typer.Exit(EXIT_PARTIAL)


def _warn(message: str) -> None:
    console.print(f"[yellow]{message}[/yellow]", highlight=False)


def format_value(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)
