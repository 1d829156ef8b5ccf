"""``diffc train``: train (or resume training) the built-in diffusion model."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ._common import console, friendly_errors


@friendly_errors
def train(
    data: str = typer.Option(..., help="fsspec URL of training images: a Parquet dataset or an image folder."),
    out: Path = typer.Option(..., help="Output directory: checkpoint/ (resumable) and model/ (EMA weights)."),
    minutes: float = typer.Option(60.0, help="Stop after this many minutes (a checkpoint is written at the end)."),
    max_steps: int = typer.Option(0, help="Stop at this total step count (0: no limit)."),
    resume: bool = typer.Option(True, help="Continue from OUT/checkpoint if it exists."),
    batch_size: int = typer.Option(64, help="Images per step."),
    crop: int = typer.Option(32, help="Random square crop size in pixels."),
    lr: float = typer.Option(5e-4, help="Peak learning rate (AdamW)."),
    seed: int = typer.Option(0, help="Seed of every random draw; with it a run is reproducible."),
    checkpoint_minutes: float = typer.Option(5.0, help="Minutes between checkpoints."),
    image_column: str = typer.Option("image", help="Image-bytes column of a Parquet dataset."),
    limit: int = typer.Option(0, help="Use only the first N images (0: all)."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: torch's default)."),
) -> None:
    """Train the built-in U-Net with the VDM objective (the DiffC rate), resumably."""
    from ..training.data import load_encoded_images
    from ..training.trainer import TrainConfig, Trainer, run_training

    if threads:
        torch.set_num_threads(threads)
    images = load_encoded_images(data, image_column=image_column, limit=limit or None)
    console.print(f"{len(images)} training images from {data}")
    config = TrainConfig(batch_size=batch_size, crop=crop, lr=lr, seed=seed)
    trainer = Trainer(config, images)
    ckpt = out / "checkpoint"
    if resume and (ckpt / "state.json").exists():
        trainer.load(ckpt)
        console.print(f"resumed from {ckpt} at step {trainer.state.step}")
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

        state = run_training(trainer, out, minutes, max_steps or None, checkpoint_minutes, on_step)
    console.print(f"stopped at step {state.step}; checkpoint in {ckpt}, EMA model in {out / 'model'}")


def register(app: typer.Typer) -> None:
    app.command()(train)
