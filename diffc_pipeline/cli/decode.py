"""``diffc decode``: reconstruct chosen images of an archive at a chosen bitrate or step."""

from __future__ import annotations

import dataclasses

import typer
from rich.table import Table

from ..errors import InvalidInputError
from ..images import DEFAULT_MAX_PIXELS
from ._common import EXIT_PARTIAL, friendly_errors, parse_pairs, report, warn
from .compress import format_value, storage_help


@friendly_errors
def decode(
    archive: str = typer.Argument(..., help="fsspec URL of a diffc archive."),
    output: str = typer.Argument(..., help="fsspec URL of the output folder."),
    bpp: float = typer.Option(
        None,
        help="Per image, the longest prefix within this many bits per pixel (header included); an error if it "
        "is below some selected image's first chunk.",
    ),
    step: int = typer.Option(
        None, help="Decode the first STEP chunks of every image (DiffC: coding steps). Neither: the whole stream."
    ),
    ids: list[str] = typer.Option([], "--ids", help="Only these image ids (repeatable)."),
    where: str = typer.Option(None, help="Filter, e.g. \"width >= 64 AND id LIKE 'val_1%'\"."),
    limit: int = typer.Option(
        0, min=0, help="The first N decodable images (after --ids/--where; error rows do not count; 0: all)."
    ),
    method: str = typer.Option(
        None,
        help="Decode option 'method': DiffC flow (DiffC-F, default), ancestral (DiffC-A) or denoise; CDC diffusion "
        "(default) or mean.",
    ),
    decode_opt: list[str] = typer.Option(
        [], "--decode-opt", help="Codec decode option KEY=VALUE (repeatable; `diffc codecs` lists them)."
    ),
    format: str = typer.Option("png", "--format", help="png (one file per image) or parquet (PNG bytes)."),
    model: str = typer.Option(
        None, help="The model the archive was made with (default: the built-in model its manifest names)."
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS,
        min=1,
        help="Refuse (as an error row) a stream claiming more pixels (as the codec pads them), or another size "
        "than its row: an archive from elsewhere may be edited.",
    ),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=storage_help("ARCHIVE and OUTPUT")),
    address: str = typer.Option(None, help="Ray cluster address (default: an embedded local cluster)."),
    batch_size: int = typer.Option(8, min=1, help="Images per codec call."),
    threads: int = typer.Option(0, min=0, help="Torch threads per model actor (0: sized to the machine)."),
    actors: int = typer.Option(0, min=0, help="Model actors (0: one per GPU, or sized to the CPUs)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace PNG files of the same names already in OUTPUT (refused otherwise)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Finish an interrupted PNG decode: give the same options; images whose PNG is there are not decoded "
        "again.",
    ),
) -> None:
    """Decode images of an archive (a subset, at a bitrate or step) to PNG files or a Parquet dataset."""
    from .. import api
    from ..pipeline.sources import parse_storage_options

    decode_options = parse_pairs(decode_opt, "--decode-opt")
    if method and decode_options.get("method", method) != method:
        raise InvalidInputError(f"--method {method} and --decode-opt method={decode_options['method']} disagree")
    summary = api.decode(
        archive,
        output,
        bpp=bpp,
        step=step,
        ids=list(ids),
        where=where,
        limit=limit,
        decode_options={**decode_options, **({"method": method} if method else {})},
        format=format,
        model=model,
        max_pixels=max_pixels,
        storage_options=parse_storage_options(storage_option),
        address=address,
        batch_size=batch_size,
        threads=threads,
        actors=actors,
        overwrite=overwrite,
        resume=resume,
        progress=True,
    )
    table = Table(title="decode summary", show_header=False)
    for key, value in dataclasses.asdict(summary).items():
        if key != "error_examples":
            table.add_row(key.replace("_", " "), format_value(value))
    report.print(table)
    if summary.failures:
        shown = len(summary.error_examples)
        warn(
            f"{summary.failures} image(s) could not be decoded"
            + (f"; the first {shown}:" if shown < summary.failures else ":")
        )
        for example in summary.error_examples:
            warn(f"  {example}")
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    app.command("decode")(decode)
