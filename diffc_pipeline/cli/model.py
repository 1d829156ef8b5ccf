"""``diffc model eval|export|info``: measure a model's rate, export a training checkpoint, inspect a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import DiffcError
from ._common import console, friendly_errors, report

model_app = typer.Typer(
    help="Evaluate, export and inspect diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

MODEL_HELP = (
    "'builtin', 'photo' (for full-size photos), 'gaussian', or a PATH to a model directory (diffc or diffusers)."
)


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _model_info(model, spec: str) -> dict:
    from ..models import count_parameters

    schedule = model.schedule
    to_dict = getattr(schedule, "to_dict", None)
    info = {
        "spec": spec,
        "name": model.identity.name,
        "sha256": model.identity.sha256,
        "params": count_parameters(model),
        "channels": model.channels,
        "pad_multiple": model.pad_multiple,
        "schedule": to_dict() if to_dict else {"gamma_min": schedule.gamma_min, "gamma_max": schedule.gamma_max},
    }
    if hasattr(model, "prediction_type"):
        info["prediction_type"] = model.prediction_type
    return info


@model_app.command("eval")
@friendly_errors
def eval_(
    data: str = typer.Option(..., help="fsspec URL of held-out images: a Parquet dataset or an image folder."),
    model: str = typer.Option("builtin", help=MODEL_HELP),
    limit: int = typer.Option(1000, min=0, help="Evaluate the first N images (0: all)."),
    steps: list[int] = typer.Option([16, 64, 256], help="Discrete schedule(s) of K uniform steps; repeatable."),
    t_samples: int = typer.Option(8, help="Noise levels per image for each Monte-Carlo estimate."),
    grid: int = typer.Option(17, help="Points of the bits/dim-versus-t curve (0: skip it)."),
    codec_schedule: list[str] = typer.Option(
        [],
        help="Codec-style schedule FROM:TO:K (K steps uniform in log-SNR from FROM to TO); repeatable. "
        "Default: the codec's.",
    ),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    seed: int = typer.Option(0, help="Seed of every noise draw: same seed, same figures."),
    json_path: Path | None = typer.Option(None, "--json", help="Write every figure to this JSON file."),
    image_column: str = typer.Option("image", help="Image-bytes column of a Parquet dataset."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: torch's default)."),
    device: str = typer.Option("cpu", help="Torch device of the model."),
    allow_pickle: bool = typer.Option(False, help="Load pickled weights (tensors only, weights_only=True)."),
    network_precision: str = typer.Option(
        "float32", help="Network arithmetic: float32 or bfloat16 (autocast; the codec's network_precision)."
    ),
) -> None:
    """NELBO in bits/dim on held-out images: continuous time, discrete K-step schedules, and versus t."""
    from ..models import load_model
    from ..models.precision import at_precision
    from ..training.data import load_encoded_images
    from ..training.evaluate import EvalConfig, evaluate

    if t_samples < 1 or batch_size < 1 or grid < 0 or any(k < 1 for k in steps):
        raise DiffcError("--t-samples, --batch-size and --steps must be >= 1, --grid >= 0")
    _set_threads(threads)
    try:
        net = at_precision(load_model(model, device=device, allow_pickle=allow_pickle), network_precision)
    except ValueError as exc:
        raise DiffcError(f"--network-precision: {exc}") from None
    images = load_encoded_images(data, image_column=image_column, limit=limit or None)
    config = EvalConfig(
        t_samples=t_samples,
        steps=tuple(steps),
        grid=grid,
        codec=tuple(_parse_codec_schedule(c) for c in codec_schedule or [_default_codec_schedule()]),
        batch_size=batch_size,
        seed=seed,
    )
    console.print(f"evaluating {net.identity.short} on {len(images)} images from {data}")
    with Progress(
        TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("eval", total=len(images))
        info = {**_model_info(net, model), "network_precision": network_precision}
        result = evaluate(net, images, config, info, on_batch=lambda n: progress.advance(task, n))
    _print_result(result)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        from .bench import run_info  # the command and date every measurement JSON carries

        json_path.write_text(json.dumps({**result.to_dict(), **run_info()}, indent=2) + "\n")
        console.print(f"wrote {json_path}")


def _default_codec_schedule() -> str:
    from ..codecs.diffc.config import CodecConfig

    c = CodecConfig()
    return f"{c.logsnr_start}:{c.logsnr_end}:{c.num_steps}"


def _parse_codec_schedule(text: str) -> tuple[float, float, int]:
    try:
        start, end, k = text.split(":")
        parsed = float(start), float(end), int(k)
    except ValueError:
        raise DiffcError(f"--codec-schedule {text!r}: expected FROM:TO:K, e.g. -5:5:16") from None
    if parsed[1] <= parsed[0] or parsed[2] < 1:
        raise DiffcError(f"--codec-schedule {text!r}: need END > START (log-SNR rises) and K >= 1")
    return parsed


def _print_result(result) -> None:
    table = Table(title=f"NELBO, {result.images} images, {result.dims} dims each (bits/dim)")
    for col in ("bound", "total", "± stderr", "diffusion", "prior", "reconstruction"):
        table.add_column(col, justify="right")
    for b in [result.continuous, *result.discrete]:
        err = f"{b.stderr_bpd:.4f}" if b.stderr_bpd is not None else "-"
        table.add_row(
            "continuous" if b.steps is None else f"{b.steps} steps",
            f"{b.bpd:.4f}",
            err,
            f"{b.diffusion_bpd:.4f}",
            f"{b.prior_bpd:.5f}",
            f"{b.reconstruction_bpd:.4f}",
        )
    report.print(table)
    if result.by_t:
        curve = Table(title="rate to reach t from t = 1, and the denoised x_hat(z_t)")
        for col in ("t", "-log SNR", "bits/dim from 1", "bits/dim per unit -log SNR", "PSNR x_hat (dB)"):
            curve.add_column(col, justify="right")
        for row in result.by_t:
            psnr = f"{row['psnr_db']:.2f}" if row["psnr_db"] is not None else "inf"
            curve.add_row(
                f"{row['t']:.4f}",
                f"{row['gamma']:.2f}",
                f"{row['bpd_from_1']:.4f}",
                f"{row['bpd_per_gamma']:.4f}",
                psnr,
            )
        console.print(curve)
        console.print(f"continuous-time NELBO by quadrature over this grid: {result.quadrature_bpd:.4f} bits/dim")
    if result.codec:
        codec = Table(title="codec-style schedules: ideal rate of the steps, denoised x_hat at the end")
        for col in ("log-SNR start:end:K", "bits/dim", "bpp", "± stderr (bpd)", "PSNR x_hat (dB)"):
            codec.add_column(col, justify="right")
        for row in result.codec:
            err = f"{row['stderr_bpd']:.4f}" if row["stderr_bpd"] is not None else "-"
            psnr = f"{row['psnr_denoised_db']:.2f}" if row["psnr_denoised_db"] is not None else "inf"
            codec.add_row(
                f"{row['logsnr_start']:g}:{row['logsnr_end']:g}:{row['steps']}",
                f"{row['bpd']:.4f}",
                f"{row['bpp']:.4f}",
                err,
                psnr,
            )
        console.print(codec)
    console.print(f"{result.seconds:.1f} s")


@model_app.command("export")
@friendly_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint directory (RUN/checkpoint)."),
    out: Path = typer.Argument(..., help="Model directory to write (config.json + model.safetensors)."),
    fp16: bool = typer.Option(False, help="Store the weights as float16 (half the size; loaded as float32)."),
    name: str = typer.Option("diffc-unet", help="Model name recorded in its identity."),
    raw: bool = typer.Option(
        False, "--raw", help="Export the raw weights instead of the EMA (better early in a run, when the EMA lags)."
    ),
) -> None:
    """Write the EMA (or raw) weights of a training checkpoint as a model directory (what --model PATH loads)."""
    from ..models import load_unet_model
    from ..training.checkpointing import STATE, checkpoint_errors
    from ..training.trainer import RESUME_ADVICE, Trainer, checkpoint_config

    if not (checkpoint / STATE).is_file():
        raise DiffcError(f"{checkpoint} is not a training checkpoint (no {STATE}; a run keeps it in RUN/checkpoint)")
    if out.exists() and not out.is_dir():
        raise DiffcError(f"OUT {out} is a file; give a folder for the model")
    if out.resolve() == checkpoint.resolve() or checkpoint.resolve() in out.resolve().parents:
        raise DiffcError(f"OUT {out} lies inside the checkpoint {checkpoint}; export to another folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise DiffcError(f"OUT {out} holds other files; give a new folder or a model folder to replace")
    with checkpoint_errors(checkpoint, RESUME_ADVICE):
        trainer = Trainer(checkpoint_config(checkpoint), images=[])
        trainer.load(checkpoint)
    trainer.export(out, name=name, fp16=fp16, raw=raw)
    model = load_unet_model(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    console.print(
        f"exported step {trainer.state.step} of {checkpoint} to {out} ({size:.1f} MB): {model.identity.short}"
    )


@model_app.command("info")
@friendly_errors
def info(
    model: str = typer.Option("builtin", help=MODEL_HELP),
    allow_pickle: bool = typer.Option(False, help="Load pickled weights (tensors only, weights_only=True)."),
) -> None:
    """Name, content hash, parameters, size multiple and noise schedule of a model."""
    from ..models import load_model

    details = _model_info(load_model(model, allow_pickle=allow_pickle), model)
    table = Table(show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in details.items():
        table.add_row(
            key,
            json.dumps(value) if isinstance(value, dict) else f"{value:,}" if key == "params" else str(value),
        )
    report.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
