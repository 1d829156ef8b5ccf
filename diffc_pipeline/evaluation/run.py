"""``run_eval``: the whole evaluation from :class:`EvalOptions`, as ``run_compress`` is the whole compress job.

Order of work: everything that can be refused (anchors this Pillow cannot write, unknown codec options, bad
metric networks, an empty selection) is checked before any image is encoded; then DiffC (the long part, and
the one that can fail on a cluster, so a failure there does not throw away minutes of other encodes), the
``--codec`` grid, and the anchors last. Every codec comes from the registry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from ..codecs import Codec, CodecSpec, SupportsSweep, resolve
from ..codecs.registry import entry
from ..errors import DiffcError
from ..pipeline.sources import public_url
from .classical import Anchor
from .data import EvalImage, ImageSource, choose_subset, load_eval_images
from .grid import CodecGrid, run_grid
from .perceptual import PerceptualMetrics, PerceptualSpec
from .progress import EvalProgress
from .report import write_outputs
from .runner import CHANNELS, EvalOutput, Showcase, default_prefixes, run_classical, run_diffc, sweep_codecs


@dataclass(frozen=True)
class EvalOptions:
    """What one evaluation runs. ``diffc_options``/``model`` configure DiffC (``channels`` empty: no DiffC);
    ``codec`` adds any other registry codec at a grid of options; ``anchors`` are classical codec names."""

    images: str  # fsspec URL: a Parquet dataset (image bytes + id) or a folder
    out: Path
    anchors: tuple[str, ...] = ("jpeg", "webp", "avif")
    channels: tuple[str, ...] = CHANNELS
    methods: tuple[str, ...] | None = None  # DiffC reconstructions (None: every method DiffC offers)
    steps: str = "auto"  # DiffC prefixes: 'auto', 'all' or '1,2,4'
    model: str | None = None  # DiffC's model (None: the registry's default, builtin)
    diffc_options: dict = field(default_factory=dict)  # DiffC stream options (strings accepted)
    diffc_limit: int = 0  # DiffC on a fixed subset of N images only (0: all)
    codec: CodecGrid | None = None
    limit: int = 0  # a fixed subset of N source images (0: all)
    batch_size: int = 16
    seed: int = 0  # run seed: each image's stream seed is image_seed(seed, image id)
    downsample: int = 1
    tile: int = 0
    image_column: str = "image"
    id_column: str | None = None  # None: a Parquet input's "id" column if it has one, else FILE:ROW ids
    storage_options: dict = field(default_factory=dict, repr=False)  # for IMAGES; never written to results
    threads: int = 0  # torch threads here (0: torch's default)
    workers: int = 0  # DiffC on N Ray actors (0: in this process)
    address: str | None = None
    lpips: str | None = None
    fid_features: str | None = None

    def to_dict(self) -> dict:
        """The options as JSON for results.json (what reproduces the run besides the code)."""
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        d["images"] = public_url(self.images)  # credentials stay out of results.json: no user:password@,
        del d["storage_options"]  # no storage options
        return d


@dataclass
class EvalResult:
    out: Path
    tables: list[Table]  # the curve and BD-rate tables, for a terminal
    records: int


@dataclass
class _DiffcPart:
    spec: CodecSpec
    codec: Codec
    codecs: dict[str, SupportsSweep]  # per channel
    prefixes: list[int]
    methods: list[str]
    images: list[EvalImage]


def run_eval(opts: EvalOptions, progress: EvalProgress, command: str | None = None) -> EvalResult:
    """Evaluate, write results.json, summary.md, the plots and index.html under ``opts.out``.

    ``command``: the command line to record (the CLI passes its own)."""
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.batch_size < 1:
        raise DiffcError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if Path(opts.out).exists() and not Path(opts.out).is_dir():  # found now, not when the results are written
        raise DiffcError(f"--out {opts.out} is a file; give a folder for the results")
    bad = [c for c in opts.channels if c not in CHANNELS]
    if bad:
        raise DiffcError(f"unknown channel {', '.join(bad)}; choose from {', '.join(CHANNELS)} (or 'none')")
    if not (opts.anchors or opts.channels or opts.codec):
        raise DiffcError("nothing to evaluate: no anchors, no DiffC channels and no --codec")
    anchors = [Anchor.build(name) for name in opts.anchors]  # fails early if this Pillow cannot write one
    grid_built: list[tuple[CodecSpec, Codec]] = []
    if opts.codec is not None:
        if opts.codec.name in opts.anchors:
            raise DiffcError(f"--codec {opts.codec.name} is also an anchor: drop it from --anchors")
        grid_built = [(spec, spec.build()) for spec in opts.codec.specs()]
        for _, codec in grid_built:
            opts.codec.prefix_lengths(codec)  # a bad --codec-prefixes fails now
        opts.codec.decode_combinations()
    spec = PerceptualSpec(opts.lpips, opts.fid_features)
    perceptual = PerceptualMetrics(spec) if spec else None  # a bad file fails before any work
    source = ImageSource(
        opts.images,
        limit=opts.limit or None,
        image_column=opts.image_column,
        id_column=opts.id_column,
        downsample=opts.downsample,
        tile=opts.tile or None,
        storage_options=opts.storage_options,
    )
    eval_images = load_eval_images(source)
    progress.console.print(f"{len(eval_images)} images from {opts.images}", highlight=False)
    diffc = _diffc_part(opts, eval_images) if opts.channels else None

    meta: dict = {
        "command": command,
        "params": opts.to_dict(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "source": {
            "url": public_url(opts.images),
            "limit": opts.limit or None,
            "downsample": opts.downsample,
            "tile": opts.tile or None,
            "images": len(eval_images),
            "ids": [im.id for im in eval_images],
        },
        "perceptual": spec.describe(),
        "anchors": {a.name: a.describe() for a in anchors},
    }
    if diffc is not None:
        described = diffc.codec.describe()
        meta["diffc"] = {
            "spec": diffc.spec.to_dict(),
            "model": {**described["model"], "arg": opts.model},
            "codec": described,
            "fingerprint": diffc.codec.fingerprint,
            "channels": list(opts.channels),
            "methods": diffc.methods,
            "prefixes": diffc.prefixes,
            "seed": opts.seed,
            "batch_size": opts.batch_size,
            "workers": opts.workers,
        }
        if diffc.images is not eval_images:
            meta["diffc"]["images"] = [im.id for im in diffc.images]
    if opts.codec is not None:
        meta["codec"] = {**opts.codec.describe(grid_built), "seed": opts.seed, "batch_size": opts.batch_size}

    showcase = Showcase((diffc.images if diffc else eval_images)[0])
    records: list[dict] = []
    lowest: list[dict] = []
    if diffc is not None:
        records += _run_diffc(opts, diffc, showcase, progress, spec, perceptual)
    if opts.codec is not None:
        units = len(eval_images) * len(grid_built)
        with progress.task(opts.codec.name, units, "image x grid point") as advance:
            records += run_grid(
                eval_images, opts.codec, grid_built, opts.seed, opts.batch_size, showcase, advance, perceptual
            )
    if anchors:
        with progress.task("anchors", len(eval_images) * len(anchors), "image x anchor") as advance:
            recs, lowest = run_classical(eval_images, anchors, opts.seed, showcase, advance, perceptual)
            records += recs
    title = f"{opts.images} ({len(eval_images)} images)"
    subset = [im.id for im in diffc.images] if diffc and diffc.images is not eval_images else None
    reference = {im.id: perceptual.features(im.pixels) for im in eval_images} if spec.fid_features else None
    tables = write_outputs(opts.out, meta, EvalOutput(records, lowest, showcase, subset, reference), title)
    return EvalResult(opts.out, tables, len(records))


def _diffc_part(opts: EvalOptions, images: list[EvalImage]) -> _DiffcPart:
    """DiffC from the registry, its prefixes, methods and image subset, all validated."""
    spec = resolve("diffc", opts.diffc_options, opts.model)
    codec_class = entry("diffc").codec_class()
    # the method names are the codec's own decode option: it validates them and names the valid ones
    if opts.methods is None:
        methods = list(next(o.choices for o in codec_class.decode_options if o.name == "method"))
    elif not opts.methods:
        raise DiffcError("--methods is empty but DiffC channels were asked for")
    else:
        methods = [codec_class.parse_decode_options({"method": m})["method"] for m in opts.methods]
    codec = spec.build()
    codecs = sweep_codecs(codec, opts.channels)
    prefixes = diffc_prefixes(opts.steps, codec.num_chunks)
    if opts.diffc_limit and opts.diffc_limit < len(images):
        chosen = set(choose_subset([im.id for im in images], opts.diffc_limit))
        images = [im for im in images if im.id in chosen]
    return _DiffcPart(spec, codec, codecs, prefixes, list(dict.fromkeys(methods)), images)


def _run_diffc(
    opts: EvalOptions,
    part: _DiffcPart,
    showcase: Showcase,
    progress: EvalProgress,
    spec: PerceptualSpec,
    perceptual: PerceptualMetrics | None,
) -> list[dict]:
    with progress.task("diffc", len(part.images) * len(opts.channels), "image x channel") as advance:
        args = (part.prefixes, part.methods, opts.seed, opts.batch_size, showcase, advance)
        if opts.workers:
            from .on_ray import run_diffc_on_ray

            return run_diffc_on_ray(
                part.images,
                part.spec,
                part.codec.fingerprint,
                opts.channels,
                *args,
                opts.workers,
                opts.threads,
                opts.address,
                spec,
            )
        return run_diffc(part.images, part.codecs, *args, perceptual)


def diffc_prefixes(value: str, num_steps: int) -> list[int]:
    """``--steps``: 'auto' (about 8, geometric), 'all', or comma-separated prefix lengths in 1..num_steps."""
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


def machine() -> dict:
    """Where the numbers were measured (times depend on it)."""
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
