"""``diffc train``: train (or resume training) the built-in diffusion model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import DiffcError
from ._common import console, friendly_errors


@friendly_errors
def train(
    data: str = typer.Option(..., help="fsspec URL of training images: a Parquet dataset or an image folder."),
    out: Path = typer.Option(..., help="Output directory: checkpoint/ (resumable) and model/ (EMA weights)."),
    minutes: float = typer.Option(
        60.0, min=0, help="Stop after this many minutes (a checkpoint is written at the end)."
    ),
    max_steps: int = typer.Option(0, min=0, help="Stop at this total step count (0: no limit)."),
    resume: bool = typer.Option(
        True, help="Continue from OUT/checkpoint if it exists (--no-resume: a new run; see --overwrite)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="With --no-resume: let the new run replace OUT/checkpoint (refused otherwise)."
    ),
    batch_size: int | None = typer.Option(None, min=1, help="Images per step (default: 64, or the checkpoint's)."),
    crop: int | None = typer.Option(
        None,
        min=1,
        help="Random square crop size in pixels (default: 32, or the checkpoint's; another on resume: a phase).",
    ),
    lr: float | None = typer.Option(
        None, min=0, help="Peak learning rate (AdamW) (default: 5e-4, or the checkpoint's)."
    ),
    decay_start: int | None = typer.Option(
        None, min=0, help="Step at which a linear cool-down of the learning rate to zero begins (see --decay-end)."
    ),
    decay_end: int | None = typer.Option(
        None, min=0, help="Step at which the cool-down reaches zero (0: no cool-down)."
    ),
    seed: int | None = typer.Option(
        None, help="Seed of every random draw; with it a run is reproducible (default: 0, or the checkpoint's)."
    ),
    checkpoint_minutes: float = typer.Option(5.0, min=0.01, help="Minutes between checkpoints."),
    image_column: str = typer.Option("image", help="Image-bytes column of a Parquet dataset."),
    limit: int = typer.Option(0, min=0, help="Use only the first N images (0: all)."),
    threads: int = typer.Option(0, min=0, help="Torch CPU threads (0: torch's default)."),
    photos: str = typer.Option(
        "", help="fsspec URL of native-resolution photos whose random crops are mixed into every batch."
    ),
    photo_batch: int | None = typer.Option(
        None, min=0, help="Photo crops per step (default: 0, or the checkpoint's; another on resume: a phase)."
    ),
    photo_crop: int | None = typer.Option(
        None, min=1, help="Photo crop size in pixels (default: 128, or the checkpoint's; another on resume: a phase)."
    ),
    init_from: Path | None = typer.Option(
        None, help="Start a new run from this diffc model directory's weights (e.g. the built-in model's)."
    ),
) -> None:
    """Train the built-in U-Net with the VDM objective (the DiffC rate), resumably.

    A resumed run takes its settings from the checkpoint; options given on the command line override them
    where that is safe (learning rate and its cool-down) and are refused where the weights depend on them
    (seed). Another --crop or --batch-size on resume starts a phase from the checkpoint's step on (recorded
    in it: the run stays exactly resumable).
    """
    from ..training.checkpointing import STATE, checkpoint_errors, recover_checkpoint
    from ..training.data import load_encoded_images
    from ..training.trainer import RESUME_ADVICE, TrainConfig, Trainer, checkpoint_config, checkpoint_step, run_training

    if threads:
        import torch

        torch.set_num_threads(threads)
    ckpt = out / "checkpoint"
    recover_checkpoint(ckpt)
    resuming = resume and (ckpt / STATE).exists()
    if not resume and (ckpt / STATE).exists() and not overwrite:
        raise DiffcError(
            f"{ckpt} exists: a new run (--no-resume) would replace it at its first checkpoint; pass --overwrite "
            "to replace it, or another --out"
        )
    given = {"lr": lr, "seed": seed, "decay_start": decay_start, "decay_end": decay_end}
    shape = {"photo_batch": photo_batch, "photo_crop": photo_crop}
    if resuming:  # another crop or batch size starts a phase from the checkpoint's step
        if init_from is not None:
            raise DiffcError(
                f"--init-from starts a new run, but {ckpt} exists: pass another --out (or --no-resume --overwrite to "
                "replace it)"
            )
        with checkpoint_errors(ckpt, RESUME_ADVICE):
            config = checkpoint_config(ckpt).with_batch_shape(checkpoint_step(ckpt), batch_size, crop, **shape)
    else:
        given |= {"batch_size": batch_size, "crop": crop, **shape}
        config = TrainConfig()
        if init_from is not None:  # the architecture and schedule are the model's
            from ..models.storage import load_unet_model

            source_model = load_unet_model(init_from)  # anything but a diffc U-Net folder: one ModelLoadError
            config = replace(config, unet=source_model.config.to_dict(), schedule=source_model.schedule.to_dict())
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    for phase in config.phases:
        console.print(f"phase from step {phase['from_step']}: batch {phase['batch_size']}, crop {phase['crop']}")
    if config.decay_end and config.decay_end <= config.decay_start:
        raise DiffcError(f"--decay-end ({config.decay_end}) must be after --decay-start ({config.decay_start})")
    images = load_encoded_images(data, image_column=image_column, limit=limit or None)
    console.print(f"{len(images)} training images from {data}")
    photo_images = load_encoded_images(photos) if photos else []
    if photo_images:
        console.print(f"{len(photo_images)} photos from {photos}, {config.photo_batch} crops per step")
    config = replace(config, data=data_record(data, image_column, limit, len(images), photos, len(photo_images)))
    trainer = Trainer(config, images, photo_images)
    if init_from is not None and not resuming:
        source = source_model.identity
        trainer.init_weights(source_model.net.state_dict(), {"name": source.name, "sha256": source.sha256})
        console.print(f"new run from the weights of {source.name}@{source.sha256[:12]}")
    if resuming:
        with checkpoint_errors(ckpt, RESUME_ADVICE):
            trainer.load(ckpt)
        console.print(f"resumed from {ckpt} at step {trainer.state.step}")
        if max_steps and trainer.state.step >= max_steps:  # nothing to train: leave the checkpoint as it is
            console.print(f"the checkpoint is at step {trainer.state.step}, at or past --max-steps {max_steps}")
            return
    n_params = sum(p.numel() for p in trainer.net.parameters())
    console.print(f"U-Net with {n_params / 1e6:.2f}M parameters")
    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("step {task.fields[step]}"),
        TextColumn("loss {task.fields[loss]:.4f} bpd"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=minutes * 60, step=trainer.state.step, loss=float("nan"), ips=0.0)

        def on_step(step: int, loss: float, ips: float) -> None:
            progress.update(task, completed=trainer.state.elapsed_s, step=step, loss=loss, ips=ips)
            if not console.is_terminal and step % 50 == 0:  # a log file gets a line, not a live bar
                lr = trainer.lr_at(step)
                console.print(f"step {step} loss {loss:.4f} bpd lr {lr:.2e} {ips:.1f} img/s")

        state, stopped_by = run_training(trainer, out, minutes, max_steps or None, checkpoint_minutes, on_step)
    why = f" by {stopped_by}" if stopped_by else ""
    console.print(f"stopped{why} at step {state.step}; checkpoint in {ckpt}, EMA model in {out / 'model'}")


def data_record(data: str, image_column: str, limit: int, images: int, photos: str, photo_images: int) -> dict:
    """What a run trains on, as its checkpoint records it (``TrainConfig.data``): URLs spelled one way and
    without credentials, so a resume from another folder or with a rotated key is the same data."""
    from ..pipeline.sources import canonical_url, public_url
    from ..redaction import redact_text

    def spelled(url: str) -> str:  # no user:password, no signature query parameters
        return redact_text(public_url(canonical_url(url)))

    return {
        "url": spelled(data),
        "image_column": image_column,
        "limit": limit,
        "images": images,
        "photos": spelled(photos) if photos else "",
        "photo_images": photo_images,
    }


@friendly_errors
def train_cdc(ctx: typer.Context) -> None:
    """Train (or resume) the CDC codec's model; every option is the CDC trainer's (`diffc train-cdc --help`).

    The CDC trainer keeps its own options (photo crops mixed with Tiny ImageNet, rate sampling, the U-Net's
    share of each batch): this command hands them to it unchanged, so `diffc train-cdc ...` and
    `python -m diffc_pipeline.codecs.cdc.train ...` are the same run.
    """
    from ..codecs.cdc.train import main

    raise typer.Exit(main(list(ctx.args)) or 0)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command(
        "train-cdc",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(train_cdc)
