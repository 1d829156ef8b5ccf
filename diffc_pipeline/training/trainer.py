"""Training loop for the built-in model: VDM loss, EMA weights, time-based checkpoints, exact resume.

A checkpoint directory holds ``state.json`` (step, config, learning curve) and safetensors files for the
weights, the EMA weights and the optimizer state: no pickles. Every random draw of step ``s`` (batch, crops,
flips, ``t``, noise) is a function of ``(seed, s)`` alone, so a resumed run continues bit for bit where the
interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import DiffcError
from ..models.base import LinearSchedule
from ..models.storage import save_unet_model
from ..models.unet import UNet, UNetConfig
from .checkpointing import (
    STATE,
    StopRequest,
    load_optimizer_tensors,
    optimizer_tensors,
    refuse_changed_config,
    refuse_changed_data,
    stop_on_signals,
    write_checkpoint,
)
from .data import BatchSampler
from .vdm import diffusion_loss, nats_to_bpd, prior_loss

CHECKPOINT_FORMAT = "diffc-checkpoint"  # state.json's "format" (CDC's trainer writes "cdc-checkpoint")


@dataclass
class TrainConfig:
    batch_size: int = 64
    crop: int = 32
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    # Linear cool-down of the learning rate to zero between these steps (0, 0: constant after warm-up).
    # A cool-down at the end of a run lowers the loss well below the constant-rate plateau (the
    # "warmup-stable-decay" recipe); keeping it in steps, not minutes, keeps a resumed run exact.
    decay_start: int = 0
    decay_end: int = 0
    unet: dict = field(default_factory=lambda: UNetConfig().to_dict())
    schedule: dict = field(default_factory=lambda: LinearSchedule().to_dict())
    # Later stretches of a run may train on other crops or batch sizes (say whole 64x64 images at the end,
    # since the codec sees whole images): each phase ``{"from_step", "batch_size", "crop"}`` applies from its
    # step on. Phases live in the checkpoint, so a run with phases is as exactly resumable as one without.
    phases: list[dict] = field(default_factory=list)
    # A second image stream, mixed into every batch: ``photo_batch`` random ``photo_crop`` crops of
    # native-resolution photos (0: none). Tiny ImageNet alone is ImageNet downsampled to 64x64 (aliased,
    # JPEG-blocked detail); a model for full-size photos has to see their statistics too. Both streams
    # enter one loss, weighted by pixels: the bound of the mixed pixel population. Phases may change them.
    photo_batch: int = 0
    photo_crop: int = 128
    # The model a run started from (``{"name", "sha256"}``; ``None``: random initialisation).
    init_from: dict | None = None
    # What the run trains on: ``{"url", "image_column", "limit", "images", "photos", "photo_images"}``. The
    # batches are drawn by index from these lists, so a resume on other data would silently train another
    # model (and shuffle in another order): refused. ``None``: a checkpoint older than this field.
    data: dict | None = None

    def shape_at(self, step: int) -> dict[str, int]:
        """``{"batch_size", "crop", "photo_batch", "photo_crop"}`` in force at ``step`` (a phase names only
        what it changes)."""
        shape = {k: getattr(self, k) for k in SHAPE_FIELDS}
        for phase in self.phases:
            if step >= phase["from_step"]:
                shape |= {k: phase[k] for k in SHAPE_FIELDS if k in phase}
        return shape

    def batch_shape_at(self, step: int) -> tuple[int, int]:
        """``(batch_size, crop)`` of the main stream in force at ``step``."""
        shape = self.shape_at(step)
        return shape["batch_size"], shape["crop"]

    def with_batch_shape(self, step: int, batch_size: int | None, crop: int | None, **photo: int | None) -> TrainConfig:
        """This config, with a new phase from ``step`` on if ``batch_size``, ``crop`` or ``photo_batch`` /
        ``photo_crop`` differ from those in force there (``None``: keep)."""
        current = self.shape_at(step)
        given = {"batch_size": batch_size, "crop": crop, **photo}
        changed = {k: v for k, v in given.items() if v is not None and v != current[k]}
        if not changed:
            return self
        if any(p["from_step"] >= step for p in self.phases):
            raise DiffcError(f"a phase already starts at or after step {step}; resume past it first")
        # a phase records the main stream's shape always (older checkpoints' phases hold just that)
        phase = {"from_step": step, "batch_size": current["batch_size"], "crop": current["crop"], **changed}
        return replace(self, phases=[*self.phases, phase])


SHAPE_FIELDS = ("batch_size", "crop", "photo_batch", "photo_crop")


# Fields a resumed run may change: they steer the optimiser from here on. Every other field (data,
# batch, crops, seed, architecture, noise schedule) defines what the checkpoint's weights are, so a
# mismatch is refused instead of silently training a different model (``data`` is recorded from the first
# run that knows the field on).
ADJUSTABLE_ON_RESUME = frozenset(
    {"lr", "warmup_steps", "weight_decay", "ema_decay", "grad_clip", "decay_start", "decay_end"}
)
# ... and phases may be added (never changed): the steps already trained keep their batches.
PHASES = "phases"


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    curve: list[dict] = field(default_factory=list)


def checkpoint_config(directory: Path) -> TrainConfig:
    """The training config a checkpoint was written with (keys this version does not know are dropped)."""
    state = directory / STATE
    if not state.is_file():
        raise DiffcError(f"{directory}: not a training checkpoint (no {STATE})")
    saved = json.loads(state.read_text())["config"]
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


# The options that say which data a run trains on (named when a resume on other data is refused).
DATA_OPTIONS = "--data, --image-column, --limit and --photos"
# What to do about a checkpoint that cannot be read (:func:`~.checkpointing.checkpoint_errors`).
RESUME_ADVICE = "restore it, or start a new run with another --out (or --no-resume --overwrite to replace it)"


def checkpoint_step(directory: Path) -> int:
    """The step a checkpoint was written at."""
    return int(json.loads((directory / STATE).read_text())["step"])


class Trainer:
    def __init__(self, config: TrainConfig, images: list[bytes], photos: list[bytes] | None = None) -> None:
        self.config = config
        self._photos = photos or []
        torch.manual_seed(config.seed)
        self.net = UNet(UNetConfig.from_dict(config.unet))
        self.ema = UNet(UNetConfig.from_dict(config.unet))
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.schedule = LinearSchedule(config.schedule["gamma_min"], config.schedule["gamma_max"])
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self._images = images
        self._sampler = BatchSampler(images, config.batch_size, config.crop, config.seed)
        self._photo_sampler: BatchSampler | None = None
        self.state = TrainState()

    def init_weights(self, state_dict: dict[str, torch.Tensor], source: dict) -> None:
        """Start this (new) run from a model's weights: both the trained and the EMA copy; ``source``
        (``{"name", "sha256"}``) is recorded in the config, so the checkpoint says what it grew from."""
        self.net.load_state_dict({k: v.float() for k, v in state_dict.items()})
        self.ema.load_state_dict(self.net.state_dict())
        self.config = replace(self.config, init_from=source)

    def lr_at(self, step: int) -> float:
        """Warm-up, constant, then (if configured) a linear cool-down to zero."""
        c = self.config
        lr = c.lr * min(1.0, (step + 1) / max(1, c.warmup_steps))
        if c.decay_end > c.decay_start and step >= c.decay_start:
            lr *= max(0.0, 1.0 - (step - c.decay_start) / (c.decay_end - c.decay_start))
        return lr

    def train_step(self) -> float:
        """One optimisation step; returns the batch's loss in bits/dim (diffusion + prior)."""
        step = self.state.step
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        batches = [self._sampler_at(step).batch(step)]
        photos = self._photo_sampler_at(step)
        if photos is not None:
            batches.append(photos.batch(step))
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        # one loss over both streams, weighted by pixels: total nats over total dims
        dims = sum(x.numel() for x in batches)
        total = torch.zeros(())
        for x in batches:
            nats = diffusion_loss(self.net, x, self.schedule, gen) + prior_loss(x, self.schedule)
            (nats.sum() / dims).backward()  # one backward per stream: peak memory of the larger one only
            total += nats.detach().sum()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = self.config.ema_decay
            for pe, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        self.state.step += 1
        return float(nats_to_bpd(total, dims))

    def _sampler_at(self, step: int) -> BatchSampler:
        """The batch stream of the phase in force: a pure function of the step, like every batch."""
        batch_size, crop = self.config.batch_shape_at(step)
        if (self._sampler.batch_size, self._sampler.crop) != (batch_size, crop):
            self._sampler = BatchSampler(self._images, batch_size, crop, self.config.seed)
        return self._sampler

    def _photo_sampler_at(self, step: int) -> BatchSampler | None:
        """The photo stream of the phase in force (``None`` where it mixes in no photos)."""
        shape = self.config.shape_at(step)
        if not shape["photo_batch"]:
            return None
        if not self._photos:  # checked when a batch needs them: exporting a checkpoint needs no data
            raise DiffcError("this run mixes photo crops into its batches (photo_batch > 0): pass --photos")
        s = self._photo_sampler
        if s is None or (s.batch_size, s.crop) != (shape["photo_batch"], shape["photo_crop"]):
            self._photo_sampler = BatchSampler(
                self._photos, shape["photo_batch"], shape["photo_crop"], self.config.seed, stream=1, keep_decoded=True
            )
        return self._photo_sampler

    # ---- checkpoints -------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the checkpoint beside the old one, then swap: an interrupted save never loses the last one."""
        write_checkpoint(
            directory,
            {
                "weights.safetensors": self.net.state_dict(),
                "ema.safetensors": self.ema.state_dict(),
                "optimizer.safetensors": optimizer_tensors(self.opt),
            },
            {"format": CHECKPOINT_FORMAT, "config": asdict(self.config), **asdict(self.state)},
        )

    def load(self, directory: Path) -> None:
        meta = json.loads((directory / STATE).read_text())
        saved = meta["config"]
        saved_phases = saved.get(PHASES, [])
        if meta.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:  # checkpoints before the field are DiffC's
            raise DiffcError(f"{directory} is a {meta.get('format')}, not a DiffC training checkpoint")
        refuse_changed_config(
            directory,
            asdict(self.config),
            saved,
            asdict(TrainConfig()),
            ADJUSTABLE_ON_RESUME | {PHASES, "data"},  # the data is compared apart, field by field
            changed=[PHASES] if self.config.phases[: len(saved_phases)] != saved_phases else [],
        )
        refuse_changed_data(directory, saved.get("data"), self.config.data or {}, DATA_OPTIONS)
        self.net.load_state_dict(load_file(str(directory / "weights.safetensors")))
        self.ema.load_state_dict(load_file(str(directory / "ema.safetensors")))
        load_optimizer_tensors(self.opt, load_file(str(directory / "optimizer.safetensors")))
        self.state = TrainState(step=meta["step"], elapsed_s=meta["elapsed_s"], curve=meta["curve"])

    def export(self, directory: Path, name: str = "diffc-unet", fp16: bool = False, raw: bool = False) -> None:
        """Write a model directory from the EMA weights (or the raw ones: early in a run the EMA still holds
        much of the initialisation - 0.999**2500 = 8% - and measured 5.41 vs 4.40 bits/dim at step 2763)."""
        save_unet_model(
            directory,
            self.net if raw else self.ema,
            self.config.schedule,
            name=name,
            fp16=fp16,
            extra={
                "trained_steps": self.state.step,
                "train_batch": self.config.batch_size,
                "train_crop": self.config.crop,
                **({"train_phases": self.config.phases} if self.config.phases else {}),
                **(
                    {"train_photo_batch": self.config.photo_batch, "train_photo_crop": self.config.photo_crop}
                    if self.config.photo_batch
                    else {}
                ),
                **({"init_from": self.config.init_from} if self.config.init_from else {}),
                "weights": "raw" if raw else "ema",
            },
        )


def run_training(
    trainer: Trainer,
    out: Path,
    minutes: float,
    max_steps: int | None = None,
    checkpoint_minutes: float = 5.0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> tuple[TrainState, str | None]:
    """Train until ``minutes`` (or ``max_steps``) pass, checkpointing to ``out/checkpoint`` and ``out/model``.

    SIGTERM or SIGINT (a scheduler's stop, ``kill``, Ctrl-C) ends the run after the current step with the same
    final checkpoint, so a stopped run loses nothing. Returns the state and the name of the signal that
    stopped the run (``None``: it ran its course).
    """
    start = time.monotonic()
    last_ckpt = start
    base_elapsed = trainer.state.elapsed_s
    ema_loss = math.nan
    window_start, window_images = time.monotonic(), 0
    stop = StopRequest()
    with stop_on_signals(stop):
        while stop.signal is None:
            now = time.monotonic()
            if (now - start) >= minutes * 60 or (max_steps is not None and trainer.state.step >= max_steps):
                break
            shape = trainer.config.shape_at(trainer.state.step)  # the phase in force: its batch, not the base one
            loss = trainer.train_step()
            ema_loss = loss if math.isnan(ema_loss) else 0.98 * ema_loss + 0.02 * loss
            window_images += shape["batch_size"] + shape["photo_batch"]
            trainer.state.elapsed_s = base_elapsed + (time.monotonic() - start)
            ips = window_images / max(1e-9, time.monotonic() - window_start)
            if on_step:
                on_step(trainer.state.step, ema_loss, ips)
            if trainer.state.step % 50 == 0:
                trainer.state.curve.append(
                    {
                        "step": trainer.state.step,
                        "elapsed_s": round(trainer.state.elapsed_s, 1),
                        "loss_bpd": round(ema_loss, 4),
                    }
                )
                window_start, window_images = time.monotonic(), 0
            if time.monotonic() - last_ckpt >= checkpoint_minutes * 60:
                _checkpoint(trainer, out)
                last_ckpt = time.monotonic()
        _checkpoint(trainer, out)  # inside: a second signal during the save is recorded, not fatal
    return trainer.state, stop.signal


def _checkpoint(trainer: Trainer, out: Path) -> None:
    """The resumable checkpoint and the EMA model beside it."""
    trainer.save(out / "checkpoint")
    trainer.export(out / "model")
