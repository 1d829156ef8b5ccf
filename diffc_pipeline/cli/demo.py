"""``diffc demo``: the whole tool on the bundled samples - compress with DiffC and with CDC on one embedded Ray
cluster, decode DiffC at two bitrates and CDC with both its decoders, print (image, bpp, PSNR), write PNGs.
What ``make demo`` runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..errors import InvalidInputError
from ._common import console, friendly_errors, report, warn


@friendly_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the archives and the decoded PNGs."),
    model: str = typer.Option("builtin", help="DiffC's model: 'builtin', 'photo', 'gaussian' or a model directory."),
    steps: str = typer.Option("", help="Two DiffC prefixes to decode at, e.g. '10,40' (default: K/4, K)."),
    cdc: bool = typer.Option(True, help="Also run CDC (skipped with a note if its weights are not shipped)."),
) -> None:
    """Compress the bundled sample images with DiffC and CDC, decode them, print bpp and PSNR per image.

    The demo's archives under OUT are rebuilt on every run (archives of the bundled samples only, so nothing
    of the user's is replaced): after an upgrade ships new weights, `make demo` shows them.
    """
    from ..codecs.diffc.config import CodecConfig
    from ..pipeline.runtime import ray_session
    from ..samples import sample_paths

    k = CodecConfig().num_steps
    prefixes = parse_prefixes(steps, k) if steps else [max(1, k // 4), k]
    console.print(f"{len(sample_paths())} bundled images; one embedded Ray cluster for every job below")
    with ray_session(None):
        diffc_table = _diffc(out, model, prefixes)
        cdc_table = _cdc(out) if cdc else None
    report.print(diffc_table)
    if cdc_table is not None:
        report.print(cdc_table)
    console.print(f"PNGs in {out}/*/; inspect an archive with `diffc inspect {out / 'archive'}`")


def parse_prefixes(text: str, most: int) -> list[int]:
    """``--steps`` as a list of prefixes in ``1..most``, or :class:`InvalidInputError` naming the bad one (a
    ``0`` decoded the whole stream while its row showed the whole stream's bpp: the table lied)."""
    prefixes = []
    for part in text.split(","):
        try:
            p = int(part)
        except ValueError:
            raise InvalidInputError(f"--steps {text!r}: {part.strip()!r} is not a whole number") from None
        if not 1 <= p <= most:
            raise InvalidInputError(f"--steps {text!r}: {p} is outside 1..{most} (the codec's steps)")
        prefixes.append(p)
    return prefixes


def _diffc(out: Path, model: str, prefixes: list[int]) -> Table:
    """DiffC: compress, decode at each prefix through the pipeline, PSNR per image."""
    from .. import api

    archive = out / "archive"
    summary = _compress(archive, codec="diffc", model=model)
    console.print(f"DiffC: {summary.images} images, {summary.failures} failed, {summary.bpp:.3f} bpp")
    table = Table(title="DiffC-F reconstructions (bpp includes each stream header: 22 bytes + 1-2 of image shape)")
    table.add_column("image")
    psnrs = {}
    for p in prefixes:
        table.add_column(f"step {p}: bpp", justify="right")
        table.add_column("PSNR dB", justify="right")
        target = out / f"decoded-step{p:02d}"
        api.decode(str(archive), str(target), step=p, model=model, progress=True, overwrite=True)  # its own folder
        psnrs[p] = _psnr_of_pngs(target)
    for row in api.open_archive(str(archive)).rows().to_pylist():
        if row["status"] != "ok":
            table.add_row(row["id"], *["error"] * (2 * len(prefixes)))
            continue
        cells = []
        for p in prefixes:
            cells += [f"{row['cum_bits'][p - 1] / (row['height'] * row['width']):.3f}", f"{psnrs[p][row['id']]:.2f}"]
        table.add_row(row["id"], *cells)
    return table


def _cdc(out: Path) -> Table | None:
    """CDC with its built-in model: compress, decode with the mean and the diffusion decoder."""
    from .. import api
    from ..codecs import resolve
    from ..errors import ModelLoadError

    try:
        codec = resolve("cdc").build()
    except (ModelLoadError, ImportError) as exc:  # no shipped weights (or a build without CDC)
        warn(f"CDC skipped: {exc}")
        return None
    archive = out / "archive-cdc"
    summary = _compress(archive, codec="cdc")
    console.print(f"CDC: {summary.images} images, {summary.failures} failed, {summary.bpp:.3f} bpp")
    methods = ("mean", "diffusion")
    psnrs = {}
    for method in methods:
        target = out / f"decoded-cdc-{method}"
        api.decode(str(archive), str(target), decode_options={"method": method}, progress=True, overwrite=True)
        psnrs[method] = _psnr_of_pngs(target)
    details = codec.describe()
    table = Table(
        title=f"CDC, rate {details['options']['rate']} (lambda {details['details']['lambda']:g}), whole streams "
        f"({details['num_chunks']} chunks, header included)"
    )
    for column in ("image", "bpp", "PSNR mean dB", "PSNR diffusion dB"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for row in api.open_archive(str(archive)).rows().to_pylist():
        if row["status"] != "ok":
            table.add_row(row["id"], "error", "error", "error")
            continue
        bpp = row["cum_bits"][-1] / (row["height"] * row["width"])
        table.add_row(row["id"], f"{bpp:.3f}", *(f"{psnrs[m][row['id']]:.2f}" for m in methods))
    return table


def _compress(archive: Path, **codec):
    from .. import api
    from ..samples import SAMPLES_DIR

    console.print(f"compressing {SAMPLES_DIR} -> {archive} ({codec['codec']})")
    return api.compress(str(SAMPLES_DIR), str(archive), shard_size=4, batch_size=4, overwrite=True, progress=True,
                        **codec)  # fmt: skip


def _psnr_of_pngs(folder: Path) -> dict[str, float]:
    """PSNR of each decoded PNG under ``folder`` against its bundled original, by image id."""
    from ..evaluation.metrics import psnr
    from ..images import decode_image
    from ..pipeline.png_output import output_name
    from ..samples import sample_paths

    return {
        p.name: psnr(decode_image(p.read_bytes()), decode_image((folder / output_name(p.name)).read_bytes()))
        for p in sample_paths()
        if (folder / output_name(p.name)).is_file()
    }


def register(app: typer.Typer) -> None:
    app.command()(demo)
