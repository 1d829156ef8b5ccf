"""``diffc eval``: rate-distortion of DiffC against ideal DiffC and classical codecs on an image set."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import DiffcError
from ._common import console, friendly_errors


def _split(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip().lower() for v in value.split(",") if v.strip() and v.strip().lower() != "none"]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise DiffcError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)} (or 'none')")
    return list(dict.fromkeys(items))


def _prefixes(value: str, num_steps: int) -> list[int]:
    from ..evaluation.runner import default_prefixes

    if value == "auto":
        return default_prefixes(num_steps)
    if value == "all":
        return list(range(1, num_steps + 1))
    try:
        steps = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise DiffcError(f"--steps must be 'auto', 'all' or comma-separated integers, got {value!r}") from None
    if not steps or steps[0] < 1 or steps[-1] > num_steps:
        raise DiffcError(f"--steps must lie in 1..{num_steps} (the codec's coding steps), got {value!r}")
    return steps


def _machine() -> dict:
    import PIL
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pillow": PIL.__version__,
    }


@friendly_errors
def eval_(
    ctx: typer.Context,
    images: str = typer.Argument(
        ..., help="fsspec URL of the images: a Parquet dataset (image bytes + id) or a folder."
    ),
    out: Path = typer.Option(..., help="Output directory: results.json, rd_psnr.png, rd_msssim.png, index.html."),
    model: str = typer.Option("builtin", help="Diffusion model: 'builtin', 'gaussian' or a model directory."),
    limit: int = typer.Option(0, help="Evaluate a fixed subset of N source images (fixed-seed choice; 0: all)."),
    methods: str = typer.Option("flow,ancestral,denoise", help="DiffC reconstructions (comma-separated)."),
    codecs: str = typer.Option(
        "jpeg,webp,avif", "--anchors", help="Classical anchor codecs (comma-separated, 'none' to skip)."
    ),
    channels: str = typer.Option("rcc,ideal", help="DiffC channels: rcc (real bitstream), ideal ('none' to skip)."),
    steps: str = typer.Option("auto", help="DiffC prefixes: 'auto' (~8 spread), 'all', or e.g. '1,2,4,8,16'."),
    diffc_limit: int = typer.Option(
        0, help="Run DiffC on a fixed subset of N of the images only (it is ~1000x slower than Pillow; 0: all)."
    ),
    batch_size: int = typer.Option(16, help="Images per codec call (one image size per call)."),
    seed: int = typer.Option(0, help="Run seed; each image's stream seed derives from it and the image id."),
    downsample: int = typer.Option(1, help="Area-downsample by this integer factor first (e.g. lossless CBSD68)."),
    tile: int = typer.Option(0, help="Cut images into non-overlapping TILE x TILE squares (0: whole images)."),
    image_column: str = typer.Option("image", help="Image-bytes column of a Parquet dataset."),
    id_column: str = typer.Option("id", help="Id column of a Parquet dataset."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: torch's default; 1 per Ray worker)."),
    workers: int = typer.Option(
        0, min=0, help="Run DiffC on N Ray actors (one model each; 0: in this process, no Ray)."
    ),
    address: str = typer.Option(None, help="Ray cluster for --workers (default: RAY_ADDRESS or a local one)."),
    codec: list[str] = typer.Option(
        [], "--codec-opt", help="DiffC option KEY=VALUE, as for compress (repeatable; e.g. ancestral_steps=128)."
    ),
    lpips: str = typer.Option(
        None, help="LPIPS network, a local torch.export file (.pt2): forward(x, y) in [-1, 1] -> distance per image."
    ),
    fid_features: str = typer.Option(
        None, help="FID feature network, a local torch.export file (.pt2): forward(x) in [0, 1] -> (batch, features)."
    ),
) -> None:
    """Rate-distortion curves, BD-rates, plots and a side-by-side page for DiffC and classical codecs."""
    import torch

    from ..evaluation.classical import CODECS
    from ..evaluation.classical import codec as classical_codec
    from ..evaluation.data import ImageSource, choose_subset, load_eval_images
    from ..evaluation.perceptual import PerceptualMetrics, PerceptualSpec
    from ..evaluation.report import write_outputs
    from ..evaluation.runner import CHANNELS, METHODS, EvalOutput, Showcase, run_classical, run_diffc

    if threads:
        torch.set_num_threads(threads)
    classical = _split(codecs, tuple(CODECS), "codec")
    for name in classical:
        classical_codec(name)  # fails early if this Pillow cannot write it
    chosen_channels = _split(channels, CHANNELS, "channel")
    chosen_methods = _split(methods, METHODS, "method")
    if chosen_channels and not chosen_methods:
        raise DiffcError("--methods is empty but DiffC channels were asked for")
    if batch_size < 1:
        raise DiffcError(f"--batch-size must be >= 1, got {batch_size}")
    spec = PerceptualSpec(lpips, fid_features)
    perceptual = PerceptualMetrics(spec) if spec else None  # a bad file fails before any work
    source = ImageSource(
        images,
        limit=limit or None,
        image_column=image_column,
        id_column=id_column,
        downsample=downsample,
        tile=tile or None,
    )
    eval_images = load_eval_images(source)
    console.print(f"{len(eval_images)} images from {images}")

    meta: dict = {
        "command": shlex.join(sys.argv),  # the process's own command line, as typed
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in ctx.params.items()},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "source": {
            "url": images,
            "limit": limit or None,
            "downsample": downsample,
            "tile": tile or None,
            "images": len(eval_images),
            "ids": [im.id for im in eval_images],
        },
        "perceptual": spec.describe(),
        "classical_codecs": {
            n: {"qualities": list(CODECS[n].qualities), "options": CODECS[n].options} for n in classical
        },
    }
    diffc_codecs, prefixes = {}, []
    if chosen_channels:
        from ..codecs import resolve
        from ..codecs.diffc.codec import DiffcCodec
        from ..codecs.diffc.config import CodecConfig
        from ..models import load_model
        from ._common import parse_pairs

        config = CodecConfig(**resolve("diffc", parse_pairs(codec, "--codec-opt")).options)
        net = load_model(model)
        diffc_codecs = {ch: DiffcCodec(net, config, channel=ch) for ch in chosen_channels}
        first = next(iter(diffc_codecs.values()))
        prefixes = _prefixes(steps, first.num_steps)
        meta["diffc"] = {
            "model": {"name": net.identity.name, "sha256": net.identity.sha256, "arg": model},
            "codec_config": first.config.to_dict(),
            "fingerprint": first.fingerprint,
            "channels": chosen_channels,
            "methods": chosen_methods,
            "prefixes": prefixes,
            "seed": seed,
            "batch_size": batch_size,
            "workers": workers,
        }

    diffc_images = eval_images
    if diffc_codecs and diffc_limit and diffc_limit < len(eval_images):
        chosen = set(choose_subset([im.id for im in eval_images], diffc_limit))
        diffc_images = [im for im in eval_images if im.id in chosen]
        meta["diffc"]["images"] = sorted(chosen)
    showcase = Showcase(diffc_images[0])
    records, lowest = [], []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        # DiffC first: it is the long part and the one that can fail (Ray, a cluster), so a failure there
        # does not throw away minutes of classical encodes
        if diffc_codecs:
            task = progress.add_task("diffc", total=len(diffc_images) * len(diffc_codecs))
            args = (prefixes, chosen_methods, seed, batch_size, showcase, lambda n: progress.advance(task, n))
            if workers:
                from ..evaluation.on_ray import run_diffc_on_ray

                fingerprint = meta["diffc"]["fingerprint"]
                records += run_diffc_on_ray(
                    diffc_images, model, config, fingerprint, chosen_channels, *args, workers, threads, address, spec
                )
            else:
                records += run_diffc(diffc_images, diffc_codecs, *args, perceptual)
        if classical:
            task = progress.add_task("classical", total=len(eval_images) * len(classical))
            recs, lowest = run_classical(
                eval_images, classical, showcase, lambda n: progress.advance(task, n), perceptual
            )
            records += recs
    if not records:
        raise DiffcError("nothing to evaluate: no classical codecs and no DiffC channels chosen")
    title = f"{images} ({len(eval_images)} images)"
    subset = [im.id for im in diffc_images] if diffc_images is not eval_images else None
    reference = {im.id: perceptual.features(im.pixels) for im in eval_images} if spec.fid_features else None
    tables = write_outputs(out, meta, EvalOutput(records, lowest, showcase, subset, reference), title)
    stdout = Console() if sys.stdout.isatty() else Console(width=120)  # logs and pipes: no truncated names
    for table in tables:
        stdout.print(table)
    console.print(f"wrote {out / 'results.json'}, rd_psnr.png, rd_msssim.png, index.html")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
