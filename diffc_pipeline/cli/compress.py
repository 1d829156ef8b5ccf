"""``diffc compress``: a whole image dataset into a resumable Parquet archive, on Ray."""

from __future__ import annotations

import dataclasses
import json
import math

import typer
from rich.table import Table

from ..images import DEFAULT_BATCH_PIXELS, DEFAULT_MAX_PIXELS
from ._common import EXIT_FAILED, EXIT_PARTIAL, friendly_errors, parse_pairs, print_error, report, warn

INCREMENTAL_FIELDS = ("run_id", "new", "changed", "unchanged", "retried", "deleted", "deleted_examples")


def storage_help(targets: str) -> str:
    """``-S``'s help, naming the ``targets`` (arguments) it applies to in each command."""
    return (
        f"fsspec storage option KEY=VALUE for {targets} (repeatable; a.b=c nests; true/false and numbers are "
        'typed, except credentials; "..." keeps a string). Never printed.'
    )


STORAGE_HELP = storage_help("INPUT and OUTPUT")


@friendly_errors
def compress(
    input: str = typer.Argument(..., help="fsspec URL: image folder/glob (recursive) or Parquet dataset."),
    output: str = typer.Argument(..., help="fsspec URL of the archive folder (created; resumed if it exists)."),
    image_column: str = typer.Option(
        "image", help="Image-bytes column of a Parquet input (binary, or a Hugging Face {bytes, path} struct)."
    ),
    id_column: str | None = typer.Option(
        None, help="Id column of a Parquet input (default: 'id' where there is one, else FILE:ROW ids)."
    ),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=STORAGE_HELP),
    shard_size: int = typer.Option(1000, min=1, help="Images per shard (part of the plan: keep it to resume)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (inputs, shards, done) and exit."),
    resume: bool = typer.Option(True, "--resume/--overwrite", help="Skip committed shards, or redo everything."),
    codec: str = typer.Option(
        "diffc", "--codec", help="Codec name (diffc, jpeg, webp, avif, ...; see `diffc codecs`)."
    ),
    codec_opt: list[str] = typer.Option(
        [], "--codec-opt", help="Codec option KEY=VALUE (repeatable; `diffc codecs` lists each codec's)."
    ),
    model: str = typer.Option(
        None,
        help="The codec's model: a directory, or a built-in name - DiffC: 'builtin' (default), 'photo', "
        "'gaussian'; CDC: 'builtin'.",
    ),
    address: str = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)."),
    seed: int = typer.Option(0, help="Dataset seed; each image's seed derives from it and the image id."),
    steps: int = typer.Option(None, min=1, help="DiffC's coding steps (same as --codec-opt num_steps=N)."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, min=1, help="Reject larger images (decompression bombs; counted as the codec pads them)."
    ),
    batch_size: int = typer.Option(16, min=1, help="Images per codec call."),
    batch_pixels: int = typer.Option(
        DEFAULT_BATCH_PIXELS,
        min=1,
        help="At most this many (padded) pixels per codec call (bounds memory on large photos).",
    ),
    threads: int = typer.Option(0, min=0, help="Torch threads per model actor (0: sized to the machine)."),
    actors: int = typer.Option(0, min=0, help="Model actors (0: one per GPU, or sized to the CPUs)."),
    limit: int = typer.Option(0, min=0, help="Only the first N images in plan order (0: all)."),
    incremental: bool = typer.Option(
        False,
        "--incremental",
        help="Compress only new or changed sources into new shards (a changed one gets a new version); "
        "deletions are reported; the run is recorded in the manifest. Images whose source could not be read "
        "are tried again.",
    ),
    retry_errors: bool = typer.Option(
        False,
        "--retry-errors",
        help="With --incremental: code every error row of an unchanged source again (e.g. after raising "
        "--max-pixels), not only those whose source could not be read.",
    ),
    wait_lock: float = typer.Option(
        0.0, min=0, help="Wait up to SECONDS for another run's archive lock (every run holds one while it writes)."
    ),
    lock_timeout: float = typer.Option(
        3600.0,
        min=1,
        help="Break an archive lock not refreshed for SECONDS (its run died; a live run refreshes it every minute, "
        "or every tenth of a shorter timeout).",
    ),
) -> None:
    """Compress a dataset into Parquet shards plus a manifest; rerun to resume.

    Exit codes: 0 ok, 3 some images failed (error rows), 1 the run failed (e.g. the archive is locked),
    2 bad arguments or input.
    """
    from .. import api
    from ..pipeline.lock import ArchiveLockedError
    from ..pipeline.sources import parse_storage_options

    options = {**parse_pairs(codec_opt, "--codec-opt"), **({"num_steps": str(steps)} if steps else {})}
    kwargs = dict(
        storage_options=parse_storage_options(storage_option),
        image_column=image_column,
        id_column=id_column,
        shard_size=shard_size,
        seed=seed,
        codec=codec,
        codec_options=options,
        model=model,
        overwrite=not resume,
        address=address,
        max_pixels=max_pixels,
        batch_size=batch_size,
        batch_pixels=batch_pixels,
        threads=threads,
        actors=actors,
        limit=limit,
        incremental=incremental,
        retry_errors=retry_errors,
        wait_lock=wait_lock,
        lock_timeout=lock_timeout,
    )
    if dry_run:
        plan = api.compress(input, output, dry_run=True, **kwargs)
        todo = plan.pop("to_do")
        plan["to_do"] = todo[:10] + ([f"... {len(todo) - 10} more"] if len(todo) > 10 else [])
        typer.echo(json.dumps(plan, indent=1))
        return
    try:
        summary = api.compress(input, output, progress=True, log=warn, **kwargs)
    except ArchiveLockedError as exc:
        print_error(exc)
        raise typer.Exit(EXIT_FAILED) from None
    fields = dataclasses.asdict(summary)
    if not incremental:
        for key in INCREMENTAL_FIELDS:
            fields.pop(key)
    table = Table(title="compress summary", show_header=False)
    for key, value in fields.items():
        table.add_row(key.replace("_", " "), format_value(value))
    report.print(table)
    if summary.deleted:
        warn(
            f"{summary.deleted} archived source(s) are no longer listed (kept in the archive), e.g. "
            f"{', '.join(summary.deleted_examples)}"
        )
    if summary.failures:
        warn(f"{summary.failures} image(s) failed; see the error column (diffc inspect)")
        raise typer.Exit(EXIT_PARTIAL)


def format_value(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command("compress")(compress)
