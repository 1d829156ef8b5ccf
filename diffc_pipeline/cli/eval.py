"""``diffc eval``: rate-distortion of DiffC, any other registry codec and classical anchors on an image set.

This module only maps command-line options to :class:`~diffc_pipeline.evaluation.run.EvalOptions` and prints;
the evaluation itself is :func:`~diffc_pipeline.evaluation.run.run_eval`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from ..errors import DiffcError
from ._common import console, friendly_errors, parse_pairs, warn
from .compress import storage_help


def _names(value: str) -> tuple[str, ...]:
    """A comma-separated list; 'none' (or nothing) is the empty list."""
    items = [v.strip().lower() for v in value.split(",") if v.strip() and v.strip().lower() != "none"]
    return tuple(dict.fromkeys(items))


def _grid(pairs: list[str], flag: str) -> dict[str, tuple[str, ...]]:
    """Repeated ``FLAG KEY=V1,V2,...`` -> ``{KEY: (V1, V2, ...)}`` (strings: the codec types them)."""
    out = {}
    for key, values in parse_pairs(pairs, flag).items():
        out[key] = tuple(v.strip() for v in values.split(",") if v.strip())
        if not out[key]:
            raise DiffcError(f"{flag} {key}=: no values")
    return out


@friendly_errors
def eval_(
    images: str = typer.Argument(
        ..., help="fsspec URL of the images: a Parquet dataset (image bytes + id) or a folder."
    ),
    out: Path = typer.Option(..., help="Output directory: results.json, summary.md, rd_*.png, index.html."),
    anchors: str = typer.Option(
        "jpeg,webp,avif",
        help="Classical anchors (registry codecs): jpeg, webp, avif, jxl; comma-separated, 'none' to skip.",
    ),
    model: str = typer.Option(
        "builtin", help="DiffC's diffusion model: 'builtin', 'photo', 'gaussian' or a model directory."
    ),
    channels: str = typer.Option("rcc,ideal", help="DiffC channels: rcc (real bitstream), ideal ('none': no DiffC)."),
    methods: str = typer.Option("all", help="DiffC reconstructions, comma-separated ('all': flow,ancestral,denoise)."),
    steps: str = typer.Option("auto", help="DiffC prefixes: 'auto' (~8 spread), 'all', or e.g. '1,2,4,8,16'."),
    codec_opt: list[str] = typer.Option(
        [],
        "--codec-opt",
        help="DiffC stream option KEY=VALUE, as for compress (repeatable; --codec takes --codec-grid).",
    ),
    diffc_limit: int = typer.Option(
        0, min=0, help="Run DiffC on a fixed subset of N of the images only (it is ~1000x slower than Pillow; 0: all)."
    ),
    codec: str = typer.Option(
        None,
        "--codec",
        help="Also evaluate this registry codec (e.g. cdc) through its compress/decompress, on every image.",
    ),
    codec_grid: list[str] = typer.Option(
        [],
        "--codec-grid",
        help="Stream option of --codec KEY=V1,V2,... (repeatable; one curve point per combination; one value: fixed).",
    ),
    decode_opt: list[str] = typer.Option(
        [],
        "--decode-opt",
        help="Decode option of --codec KEY=V1,V2,... (repeatable; one curve per combination; e.g. method=mean).",
    ),
    codec_model: str = typer.Option(None, help="Model of --codec (default: the codec's own, e.g. builtin)."),
    codec_prefixes: str = typer.Option(
        "all", help="Prefixes of a progressive --codec to decode: 'all', 'full' (whole streams only) or e.g. '1,2,4'."
    ),
    limit: int = typer.Option(0, min=0, help="Evaluate a fixed subset of N source images (fixed-seed choice; 0: all)."),
    batch_size: int = typer.Option(16, min=1, help="Images per codec call (one image size per call)."),
    seed: int = typer.Option(0, help="Run seed; each image's stream seed derives from it and the image id."),
    downsample: int = typer.Option(
        1, min=1, help="Area-downsample by this integer factor first (e.g. lossless CBSD68)."
    ),
    tile: int = typer.Option(0, min=0, help="Cut images into non-overlapping TILE x TILE squares (0: whole images)."),
    image_column: str = typer.Option("image", help="Image-bytes column of a Parquet dataset."),
    id_column: str | None = typer.Option(
        None, help="Id column of a Parquet dataset (default: 'id' where there is one, else FILE:ROW ids)."
    ),
    storage_option: list[str] = typer.Option([], "--storage-option", "-S", help=storage_help("IMAGES")),
    threads: int = typer.Option(0, min=0, help="Torch CPU threads (0: torch's default; 1 per Ray worker)."),
    workers: int = typer.Option(
        0, min=0, help="Run DiffC on N Ray actors (one model each; 0: in this process, no Ray)."
    ),
    address: str = typer.Option(None, help="Ray cluster for --workers (default: RAY_ADDRESS or a local one)."),
    lpips: str = typer.Option(
        None, help="LPIPS network, a local torch.export file (.pt2): forward(x, y) in [-1, 1] -> distance per image."
    ),
    fid_features: str = typer.Option(
        None, help="FID feature network, a local torch.export file (.pt2): forward(x) in [0, 1] -> (batch, features)."
    ),
) -> None:
    """Rate-distortion curves, BD-rates, plots and a side-by-side page for DiffC, --codec and the anchors."""
    from ..evaluation.grid import CodecGrid
    from ..evaluation.progress import EvalProgress
    from ..evaluation.run import EvalOptions, run_eval
    from ..pipeline.sources import parse_storage_options
    from ..redaction import command_line

    if codec is None and (codec_grid or decode_opt or codec_model):
        raise DiffcError("--codec-grid, --decode-opt and --codec-model need --codec NAME")
    chosen_methods = _names(methods)
    opts = EvalOptions(
        images=images,
        out=out,
        anchors=_names(anchors),
        channels=_names(channels),
        methods=None if chosen_methods == ("all",) else chosen_methods,
        steps=steps,
        model=model,
        diffc_options=parse_pairs(codec_opt, "--codec-opt"),
        diffc_limit=diffc_limit,
        codec=None
        if codec is None
        else CodecGrid(
            codec,
            _grid(codec_grid, "--codec-grid"),
            _grid(decode_opt, "--decode-opt"),
            codec_model,
            codec_prefixes,
        ),
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        downsample=downsample,
        tile=tile,
        image_column=image_column,
        id_column=id_column,
        storage_options=parse_storage_options(storage_option),
        threads=threads,
        workers=workers,
        address=address,
        lpips=lpips,
        fid_features=fid_features,
    )
    result = run_eval(opts, EvalProgress(console), command=command_line(sys.argv))
    stdout = (
        Console(emoji=False) if sys.stdout.isatty() else Console(width=120, emoji=False)
    )  # logs and pipes: no truncated names
    for table in result.tables:
        stdout.print(table)
    console.print(f"wrote {result.out / 'results.json'}, summary.md, rd_*.png, index.html", highlight=False)


@friendly_errors
def eval_compare(
    anchor: Path = typer.Argument(..., help="The eval run to compare against (its directory or results.json)."),
    test: Path = typer.Argument(..., help="The eval run to compare (same images, e.g. another --codec-model)."),
    curve: list[str] = typer.Option(
        None, help="Only this curve, or a shell-style pattern such as 'cdc-mean@*' (repeatable; default: all in both)."
    ),
    against: str = typer.Option(
        None, help="Compare TEST's curves with this one curve of ANCHOR (e.g. avif) instead of the same-named one."
    ),
    points: bool = typer.Option(
        False, "--points", help="Each point's rate against the anchor curve's at its quality, instead of BD-rates."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """BD-rate of each curve of TEST against the same curve of ANCHOR: two `diffc eval` runs on the same images.

    Rates and qualities are deterministic, so a new model can be compared with the shipped one without running
    the anchors again (e.g. `--anchors none --codec-model NEW` against an earlier run, `--against avif` for its
    BD-rate against that run's AVIF curve). Negative: TEST needs fewer bits for the same quality. `--points`
    measures each point on its own, e.g. every prefix of a progressive codec against its direct curve: `diffc
    eval-compare RUN RUN --curve 'cdc-mean@*' --against cdc-mean --points`.
    """
    import json

    from rich.table import Table

    from ..evaluation.compare import compare_points, compare_runs, load_run

    a, t = load_run(anchor), load_run(test)
    rows = (compare_points if points else compare_runs)(a, t, curve or None, against)
    urls = [(doc.get("source") or {}).get("url") for doc in (a, t)]
    if None not in urls and urls[0] != urls[1]:  # ids were matched; that they name the same pixels is assumed
        warn(f"the runs read other sources ({urls[0]} and {urls[1]}): images are matched by id only")
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=1))
        return
    # Curve names are long (``cdc-diffusion@temperature=0.8``): cells fold instead of ending in an ellipsis,
    # and the ``against`` column is shown only where some row compares with another curve than its own.
    show_against = any(r.against != r.curve for r in rows)
    if points:
        title = f"Points of {test} against the curves of {anchor} (positive: more bits than the curve)"
        cols = ("curve", "against", "metric", "setting", "bpp", "dB", "curve's bpp", "excess")
        cells = [
            (
                p.curve,
                p.against,
                p.metric,
                str(p.setting),
                f"{p.bpp:.4f}",
                f"{p.quality:.2f}",
                "outside" if p.anchor_bpp is None else f"{p.anchor_bpp:.4f}",
                "-" if p.excess_percent is None else f"{p.excess_percent:+.1f}%",
            )
            for p in rows
        ]
    else:
        title = f"BD-rate of {test} against {anchor} (negative: fewer bits)"
        cols = ("curve", "against", "metric", "BD-rate", "overlap (dB)", "points (anchor / test)")
        cells = [
            (
                r.curve,
                r.against,
                r.metric,
                r.note if r.bd_rate_percent is None else f"{r.bd_rate_percent:+.1f}%",
                "-" if r.overlap is None else f"{r.overlap[0]:.2f}-{r.overlap[1]:.2f}",
                f"{r.points[0]} / {r.points[1]}",
            )
            for r in rows
        ]
    keep = [i for i, col in enumerate(cols) if col != "against" or show_against]
    numbers = {"bpp", "dB", "curve's bpp", "excess", "BD-rate", "overlap (dB)"}
    table = Table(title=title)
    for i in keep:
        table.add_column(cols[i], overflow="fold", no_wrap=cols[i] in numbers)
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    Console(emoji=False).print(table)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
    app.command("eval-compare")(eval_compare)
