"""``diffc demo``: the whole tool on the bundled samples - compress on an embedded Ray cluster, decode at two
bitrates, print (image, bpp, PSNR) and write PNGs. What ``make demo`` runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import console, friendly_errors


@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the archive and the decoded PNGs."),
    model: str = typer.Option("builtin", help="'builtin', 'gaussian' or a model directory."),
    steps: str = typer.Option("", help="Two coding-step prefixes to decode at, e.g. '10,40' (default: K/4, K)."),
) -> None:
    """Compress the bundled sample images, decode them at two bitrates, print bpp and PSNR.

    The demo's archive under ``OUT/archive`` is rebuilt on every run (an archive of the bundled samples only,
    so nothing of the user's is replaced): after an upgrade ships new weights, ``make demo`` must show them.
    """
    import pyarrow.parquet as pq

    from ..codecs.diffc.config import CodecConfig
    from ..evaluation.metrics import psnr
    from ..images import decode_image
    from ..pipeline.compress_job import CompressOptions, run_compress
    from ..pipeline.decode_job import DecodeOptions, output_name, run_decode
    from ..pipeline.progress import JobProgress
    from ..samples import SAMPLES_DIR, sample_paths

    archive = out / "archive"
    console.print(f"compressing {len(sample_paths())} bundled images from {SAMPLES_DIR} -> {archive}")
    summary = run_compress(
        CompressOptions(
            input=str(SAMPLES_DIR), output=str(archive), model=model, shard_size=4, batch_size=4, overwrite=True
        ),
        JobProgress("compress", console),
    )
    console.print(f"{summary.images} images, {summary.failures} failed, {summary.bpp:.3f} bpp, {summary.wall_s:.1f} s")
    k = CodecConfig().num_steps
    prefixes = [int(s) for s in steps.split(",")] if steps else [max(1, k // 4), k]
    rows = pq.read_table(str(archive / "shards"), columns=["id", "status", "height", "width", "cum_bits"])
    table = Table(title="DiffC-F reconstructions (bpp includes the 26-byte per-image stream header)")
    table.add_column("image")
    for p in prefixes:
        table.add_column(f"step {p}: bpp", justify="right")
        table.add_column("PSNR dB", justify="right")
    results: dict[int, dict[str, float]] = {}
    for p in prefixes:
        target = out / f"decoded-step{p:02d}"
        run_decode(
            DecodeOptions(archive=str(archive), output=str(target), step=p, model=model),
            JobProgress(f"decode step {p}", console),
        )
        results[p] = {
            row["id"]: psnr(
                decode_image((SAMPLES_DIR / row["id"]).read_bytes()),
                decode_image((target / output_name(row["id"])).read_bytes()),
            )
            for row in rows.to_pylist()
            if row["status"] == "ok"
        }
    for row in rows.to_pylist():
        if row["status"] != "ok":
            table.add_row(row["id"], *["error"] * (2 * len(prefixes)))
            continue
        cells = []
        for p in prefixes:
            cells += [f"{row['cum_bits'][p - 1] / (row['height'] * row['width']):.3f}", f"{results[p][row['id']]:.2f}"]
        table.add_row(row["id"], *cells)
    console.print(table)
    console.print(f"PNGs in {out}/decoded-step*/; inspect the archive with `diffc inspect {archive}`")


def register(app: typer.Typer) -> None:
    app.command()(demo)
