"""``diffc inspect``: counts, bytes, bpp per chunk, codec and model of an archive."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from ._common import friendly_errors, report
from .compress import storage_help


@friendly_errors
def inspect(
    archive: str = typer.Argument(..., help="fsspec URL of a diffc archive."),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=storage_help("ARCHIVE")),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise an archive without decoding anything."""
    from .. import api
    from ..pipeline.sources import parse_storage_options

    info = api.inspect(archive, parse_storage_options(storage_option))
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    model, codec = info["model"], info["codec"]
    archive_line = f"format v{info['format_version']}, tool {info['tool_version']}"
    report.print(f"[bold]{escape(info['archive'])}[/bold]  {archive_line}")
    report.print(
        f"codec {codec['name']} ({codec['fingerprint'][:12]}, {codec['num_chunks']} chunk(s)"
        f"{', progressive' if codec['progressive'] else ''})  model "
        f"{model['name'] + '@' + model['sha256'][:12] if model else 'none'}  options {escape(str(codec['options']))}",
        highlight=False,
    )
    malformed = f", malformed {info['malformed']} (left out of bpp)" if info["malformed"] else ""
    older = info["rows"] - info["images"]
    versions = f" ({info['rows']} rows: {older} older versions of changed sources)" if older else ""
    if info["runs"]:  # planned_images counts the rows of every version planned so far
        left = info["planned_images"] - info["rows"]
        planned = f"images {info['images']}{versions}{f', {left} rows not coded yet' if left > 0 else ''}"
    else:
        planned = f"images {info['images']} of {info['planned_images']} planned"
    report.print(
        f"{planned}, "
        f"ok {info['ok']}, failures {info['failures']}{malformed}; "
        f"shards {info['shards']['committed']}/{info['shards']['planned']}; "
        f"{info['file_bytes']} bytes on disk, {info['payload_bytes']} payload bytes"
    )
    has_logsnr = any("logsnr" in row for row in info["bpp_per_chunk"])
    table = Table(
        "chunk",
        *(["logsnr"] if has_logsnr else []),
        "bpp",
        "p10",
        "p50",
        "p90",
        title="bits per pixel after each chunk (bpp: total bits / total pixels; pNN: per image)",
    )
    for row in info["bpp_per_chunk"]:
        table.add_row(
            str(row["chunk"]),
            *([f"{row['logsnr']:.2f}"] if has_logsnr else []),
            *(f"{row[k]:.4f}" for k in ("bpp", "p10", "p50", "p90")),
        )
    report.print(table)
    if info["runs"]:
        report.print("[bold]incremental runs[/bold] (oldest first)")
    for r in info["runs"]:
        counts = ", ".join(
            f"{k} {r.get(k, 0)}" for k in ("new", "changed", "unchanged", "retried", "deleted", "failed")
        )
        status = r["status"]
        if status == "running" and info["lock_holder"] != r["run_id"]:
            status = "running? (it holds no lock: killed; the next run marks it interrupted)"
        report.print(
            f"run {r['run_id']} {r['started_at']} -> {r.get('finished_at') or '?'} {status}: {counts}; "
            f"tool {r.get('tool_version')}, model {r.get('model')}",
            highlight=False,
        )
    for message, count in info["top_errors"]:
        ids = info["top_error_ids"][message]
        examples = f" (e.g. {', '.join(ids)}{', ...' if count > len(ids) else ''})"
        report.print(f"[yellow]{count} x[/yellow] {escape(message + examples)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
