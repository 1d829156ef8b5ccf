"""Training of the CDC model on CPU: resumable, safetensors checkpoints, exact resume.

``python -m diffc_pipeline.codecs.cdc.train --out /work/runs/cdc --minutes 150``

A checkpoint directory (``OUT/checkpoint``) holds ``state.json`` (step, training config, model config, the
data trained on, curve) and safetensors files for the weights, the EMA weights and the optimizer state: no
pickles. Every random draw of step ``s`` (which images, crops, flips, rate indices, ``t``, noise) is a function of
``(seed, s)``, so a resumed run continues bit for bit; a resume on other data, or with another seed, batch size,
rho or model, is refused by name. Loss per image, rate index ``r``::

    bpp + lambda_r * 255^2 * (MSE(mean, x) + (1 - rho) * min(SNR_t, 5) / 5 * MSE(x0_hat(x_t), x)
                              + rho * LPIPS_SCALE * LPIPS(x0_hat(x_t), x))

(MSE on ``[0, 1]`` pixels.) The perceptual term (rho > 0, CDC's realism knob) needs an LPIPS network, which
this project cannot download or ship: the user passes one as a torch.export archive (``--lpips``, the same
file ``diffc eval --lpips`` takes); its weights are frozen and its SHA-256 is recorded in the checkpoint.
Data: Tiny ImageNet train (whole 64x64 images) mixed with random crops of native-resolution photos, which
are decoded a few dozen at a time into a pool of crops refreshed every ``pool_refresh`` steps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ...errors import DiffcError, InvalidImageError, InvalidInputError
from ...images import decode_image
from ...training.checkpointing import (
    STATE,
    StopRequest,
    checkpoint_errors,
    load_optimizer_tensors,
    optimizer_tensors,
    recover_checkpoint,
    refuse_changed_config,
    refuse_changed_data,
    stop_on_signals,
    write_checkpoint,
)
from ..tensors import to_float
from .config import ModelConfig
from .model import CdcModel, alpha_bar, count_parameters

# LPIPS distances (~0.1-0.7) are put on the scale of the MSE term (~1e-3 on [0, 1] pixels at these rates), so
# that rho trades one for the other as in CDC's loss ((1 - rho) L2 + rho LPIPS on comparable magnitudes).
LPIPS_SCALE = 0.01
DEFAULT_TINY = "../shared/data/tinyimagenet/train"
DEFAULT_PHOTOS = "../shared/data/photos"
# Random draws in a row whose Tiny ImageNet image does not decode before a batch gives up: a few broken images
# are skipped, a column of garbage is an error instead of a loop that never ends (and defers SIGTERM with it).
MAX_FAILED_DRAWS = 64
# What to do about a checkpoint that cannot be read, and the options that say which data a run trains on.
RESUME_ADVICE = "restore it from a copy, or start a new run in another --out (or replace it: --fresh --overwrite)"
DATA_OPTIONS = "--tiny, --tiny-limit and --photos"


@dataclass
class TrainConfig:
    batch_size: int = 16
    crop: int = 64
    photo_fraction: float = 0.5  # share of each batch's pixels drawn from the photo crop pool
    # Side of the photo crops (0: ``crop``). A 64x64 crop gives the hyperprior a 1x1 z and a 4x4 y, so its
    # convolutions only ever see zero padding around them; full-size photos have z grids of 8x5 and more.
    # Larger crops keep the batch's pixels: photo_fraction * batch_size * crop^2 / photo_crop^2 of them.
    photo_crop: int = 0
    pool_photos: int = 48  # photos decoded per pool refresh
    pool_crops: int = 12  # crops kept per decoded photo
    pool_refresh: int = 300  # steps between pool refreshes
    lr: float = 4e-4
    warmup_steps: int = 200
    decay_start: int = 0  # linear cool-down of the lr to lr * final_lr_frac between these steps
    decay_end: int = 0
    final_lr_frac: float = 0.05
    ema_decay: float = 0.998
    grad_clip: float = 2.0
    rho: float = 0.0
    lpips_sha256: str = ""  # the LPIPS network of the rho term (a run with rho > 0 must keep the same one)
    prefix_drop: float = 0.2  # share of images whose decoder sees only a random prefix of the slices
    diffusion_fraction: float = 1.0  # share of each batch that also trains the U-Net (its term is rescaled)
    # Rate indices the images are drawn from (empty: all, uniformly). One index trains a fixed-rate model of
    # the same architecture (its gain vector a free per-channel scale): the variable-rate model's yardstick.
    # Adjustable on resume, like the other data settings: a variable-rate checkpoint can branch to one rate.
    train_rates: tuple[int, ...] = ()
    seed: int = 0
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())
    # The model a run started from (``--init-from``; name and SHA-256), empty for a run from scratch.
    init_from: dict = field(default_factory=dict)
    # What the run trains on (:func:`data_record`: the --tiny and --photos folders, --tiny-limit, the image
    # counts): a resume on other data is refused. Empty: not recorded (checkpoints written before it was).
    data: dict = field(default_factory=dict)


ADJUSTABLE_ON_RESUME = frozenset(
    {
        "lr",
        "warmup_steps",
        "decay_start",
        "decay_end",
        "final_lr_frac",
        "ema_decay",
        "grad_clip",
        "diffusion_fraction",
        "photo_crop",
        "train_rates",
    }
)


@dataclass
class TrainState:
    step: int = 0
    elapsed_s: float = 0.0
    curve: list[dict] = field(default_factory=list)


# ---- data ----------------------------------------------------------------------------------------------
def load_tiny(root: str | Path, limit: int | None = None) -> list[bytes]:
    """The encoded images of the Parquet files under ``root`` (column ``image``, bytes), the first ``limit``.
    A file that is no Parquet or lacks the column is refused by name before any training step."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(root).glob("*.parquet"))
    if not files:
        raise InvalidInputError(f"no Parquet files under {root} (--tiny)")
    out: list[bytes] = []
    for p in files:
        try:
            schema = pq.read_schema(p)
            if "image" not in schema.names:
                raise InvalidInputError(f"{p} has no 'image' column (columns: {', '.join(schema.names)}) (--tiny)")
            kind = schema.field("image").type
            if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
                raise InvalidInputError(f"{p}: column 'image' holds {kind}, not encoded image bytes (--tiny)")
            out.extend(v.as_py() for v in pq.read_table(p, columns=["image"]).column("image"))
        except (OSError, pa.ArrowException) as exc:
            raise InvalidInputError(f"{p}: cannot be read as Parquet ({exc}) (--tiny)") from None
        if limit is not None and len(out) >= limit:
            return out[:limit]
    if not out:
        raise InvalidInputError(f"the Parquet files under {root} hold no images (--tiny)")
    return out


def data_record(tiny: str, tiny_limit: int | None, tiny_images: int, photos: str, photo_files: int) -> dict:
    """What a run trains on, as its checkpoint records it (:attr:`TrainConfig.data`). Absolute paths, not
    resolved ones: a resume from another working directory names the same data, and a symlink left where moved
    data was keeps its run resumable."""
    return {
        "tiny": os.path.abspath(tiny),
        "tiny_limit": tiny_limit,
        "tiny_images": tiny_images,
        "photos": os.path.abspath(photos) if photos else "",
        "photo_files": photo_files,
    }


def list_photos(root: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise DiffcError(f"no photos under {root}")
    return paths


def _decode(data: bytes) -> np.ndarray | None:
    try:
        return decode_image(data)
    except InvalidImageError:
        return None


def _random_crop(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    h, w, _ = img.shape
    if h < crop or w < crop:
        img = np.pad(img, ((0, max(0, crop - h)), (0, max(0, crop - w)), (0, 0)), mode="reflect")
        h, w, _ = img.shape
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    img = img[top : top + crop, left : left + crop]
    return img[:, ::-1] if rng.random() < 0.5 else img


class CdcBatches:
    """Batch ``s`` is a pure function of ``(seed, s)``: Tiny ImageNet images and photo-pool crops, rate indices.

    A batch is one or two groups of equal-size images (the photo crops may be larger than the Tiny ImageNet
    ones), each ``(x, rate)``; the loss weighs them by pixels.
    """

    def __init__(self, cfg: TrainConfig, tiny: list[bytes], photos: list[Path], rates: int) -> None:
        self.cfg, self.tiny, self.photos, self.rates = cfg, tiny, photos, rates
        self._pool_gen = -1
        self._pool: np.ndarray | None = None
        self.photo_crop = cfg.photo_crop or cfg.crop
        if any(not 0 <= r < rates for r in cfg.train_rates):
            raise DiffcError(f"train_rates {list(cfg.train_rates)} outside the model's rate indices 0..{rates - 1}")
        if self.photo_crop % 64:
            raise DiffcError(f"photo_crop must be a multiple of 64 (the transform's stride), got {self.photo_crop}")

    def _pool_at(self, step: int) -> np.ndarray:
        gen = step // self.cfg.pool_refresh
        if gen != self._pool_gen:
            rng = np.random.default_rng([self.cfg.seed, 7, gen])
            chosen = rng.choice(len(self.photos), size=min(self.cfg.pool_photos, len(self.photos)), replace=False)
            crops = []
            for idx in chosen:
                img = _decode(self.photos[int(idx)].read_bytes())
                if img is None:
                    continue
                crops.extend(_random_crop(img, self.photo_crop, rng) for _ in range(self.cfg.pool_crops))
            if not crops:
                raise InvalidInputError(
                    f"none of the {len(chosen)} photos drawn for the crop pool decodes as an image (one of them: "
                    f"{self.photos[int(chosen[0])]}); remove the files that are no images from --photos"
                )
            self._pool = np.stack(crops)
            self._pool_gen = gen
        assert self._pool is not None
        return self._pool

    def batch(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 1_000_003, step])
        n_photo = round(cfg.batch_size * cfg.photo_fraction) if self.photos else 0
        n_tiny = cfg.batch_size - n_photo
        groups: list[np.ndarray] = []
        if n_photo:
            n_crops = max(1, round(n_photo * cfg.crop**2 / self.photo_crop**2))
            pool = self._pool_at(step)
            out = np.empty((n_crops, self.photo_crop, self.photo_crop, 3), dtype=np.uint8)
            for i, idx in enumerate(rng.integers(0, len(pool), size=n_crops)):
                img = pool[int(idx)]
                out[i] = img[:, ::-1] if rng.random() < 0.5 else img
            groups.append(out)
        if n_tiny:
            out = np.empty((n_tiny, cfg.crop, cfg.crop, 3), dtype=np.uint8)
            for i in range(n_tiny):
                out[i] = _random_crop(self._draw_tiny(rng), cfg.crop, rng)
            groups.append(out)
        if len(groups) == 2 and groups[0].shape[1] == groups[1].shape[1]:
            groups = [np.concatenate(groups)]  # one forward pass when the sizes agree
        n_images = sum(len(g) for g in groups)
        if cfg.train_rates:
            rate = np.asarray(cfg.train_rates, dtype=np.int64)[rng.integers(0, len(cfg.train_rates), size=n_images)]
        else:
            rate = rng.integers(0, self.rates, size=n_images)
        batches, at = [], 0
        for g in groups:
            batches.append((to_float(g), torch.from_numpy(rate[at : at + len(g)]).long()))
            at += len(g)
        return batches

    def _draw_tiny(self, rng: np.random.Generator) -> np.ndarray:
        """A random Tiny ImageNet image that decodes, skipping broken ones (the draws stay a function of the
        step); :data:`MAX_FAILED_DRAWS` failures in a row mean the data is no images at all."""
        for _ in range(MAX_FAILED_DRAWS):
            img = _decode(self.tiny[int(rng.integers(0, len(self.tiny)))])
            if img is not None:
                return img
        raise InvalidInputError(
            f"the Tiny ImageNet training images do not decode: {MAX_FAILED_DRAWS} random draws in a row from "
            f"{len(self.tiny)} images found no JPEG or PNG (check that --tiny's 'image' column holds encoded images)"
        )


# ---- loss ----------------------------------------------------------------------------------------------
def cdc_loss(
    model: CdcModel,
    x: torch.Tensor,
    rate: torch.Tensor,
    gen: torch.Generator,
    rho: float = 0.0,
    prefix_drop: float = 0.0,
    diffusion_fraction: float = 1.0,
    lpips: torch.nn.Module | None = None,
) -> dict:
    """Per-image loss terms (see the module docstring); ``loss`` is the batch mean to minimise. A share
    ``prefix_drop`` of the images is decoded from a random prefix of 1..S-1 slices (bits still count all)."""
    b, _, h, w = x.shape
    keep = None
    slices = model.cfg.slices
    if prefix_drop > 0 and slices > 1:
        drop = torch.rand(b, generator=gen) < prefix_drop
        k = torch.randint(1, slices, (b,), generator=gen)
        keep = torch.where(drop, k, torch.full_like(k, slices))
    out = model.forward_train(x, rate, gen, keep)
    bpp = (out["z_bits"] + out["y_bits"]) / (h * w)
    cond = out["cond"]
    mse_mean = ((cond["mean"] - x) ** 2).mean((1, 2, 3)) / 4.0
    t = torch.rand(b, generator=gen)
    a = alpha_bar(t)[:, None, None, None]
    eps = torch.randn(x.shape, generator=gen)
    xt = a.sqrt() * x + (1 - a).sqrt() * eps
    weight = (a / (1 - a)).clamp(max=5.0).flatten() / 5.0
    perceptual = torch.zeros(b)
    if rho > 0 and lpips is None:
        raise DiffcError("rho > 0 needs an LPIPS network (--lpips)")
    if diffusion_fraction >= 1.0:
        x0 = model.unet(xt, t, rate, cond)
        mse_diff = ((x0 - x) ** 2).mean((1, 2, 3)) / 4.0
        diff_term = weight * mse_diff
        if rho > 0:
            perceptual = lpips(x0.clamp(-1, 1), x).reshape(b)
    else:  # the U-Net trains on a random subset of the batch (its term rescaled to stay unbiased)
        n = max(1, round(b * diffusion_fraction))
        idx = torch.randperm(b, generator=gen)[:n]
        sub = {k: v[idx] for k, v in cond.items()}
        x0 = model.unet(xt[idx], t[idx], rate[idx], sub)
        mse_sub = ((x0 - x[idx]) ** 2).mean((1, 2, 3)) / 4.0
        mse_diff = torch.full((b,), float("nan"))
        mse_diff[idx] = mse_sub.detach()
        diff_term = torch.zeros(b).index_put((idx,), weight[idx] * mse_sub * (b / n))
        if rho > 0:
            perceptual = torch.zeros(b).index_put((idx,), lpips(x0.clamp(-1, 1), x[idx]).reshape(n) * (b / n))
    lam = torch.tensor(model.cfg.lambdas, dtype=x.dtype)[rate]
    loss = bpp + lam * 255.0**2 * (mse_mean + (1.0 - rho) * diff_term + rho * LPIPS_SCALE * perceptual)
    return {
        "lpips": perceptual.detach(),
        "loss": loss.mean(),
        "bpp": bpp.detach(),
        "mse_mean": mse_mean.detach(),
        "mse_diff": mse_diff.detach(),
        "t": t,
    }


def psnr(mse01: torch.Tensor) -> torch.Tensor:
    return -10.0 * torch.log10(mse01.clamp_min(1e-10))


# ---- starting from a trained model ---------------------------------------------------------------------
def remap_rates(
    weights: dict[str, torch.Tensor], src: ModelConfig, lambdas: tuple[float, ...]
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """``src``'s weights and config for a model serving ``lambdas`` (ascending; rate 0 = the lowest). The gains
    ``log_gain`` and the U-Net's rate embedding are the only weights with a row per rate: a rate
    whose lambda ``src`` has keeps its gains and rate embedding, a new one starts from the nearest lambda's
    (in log) with its gains scaled by ``(lambda / lambda_nearest)^(1/2)``, the rule the gains start from in a
    new model. The default rate keeps its lambda (or the nearest one)."""
    fields_for_rates = rates_config(lambdas, src.lambdas[src.default_rate])  # refuses bad lambdas first
    logs = np.log(np.asarray(src.lambdas))

    def nearest(lam: float) -> int:
        return int(np.argmin(np.abs(logs - np.log(lam))))

    rows = [nearest(lam) for lam in lambdas]
    out = dict(weights)
    gains = weights["log_gain"].float()
    out["log_gain"] = torch.stack(
        [gains[j] + 0.5 * float(np.log(lam / src.lambdas[j])) for lam, j in zip(lambdas, rows, strict=True)]
    )
    out["unet.temb.rate.weight"] = weights["unet.temb.rate.weight"].float()[rows]
    return out, ModelConfig.from_dict({**src.to_dict(), **fields_for_rates})


def rates_config(lambdas: tuple[float, ...], default_lambda: float | None = None) -> dict:
    """The model-config fields for ``lambdas``: the lambdas and a default rate at the one nearest
    ``default_lambda`` (in log; the default config's default lambda if None). Refuses lambdas that are not
    positive and strictly ascending."""
    if not lambdas or any(lam <= 0 for lam in lambdas) or list(lambdas) != sorted(set(lambdas)):
        raise DiffcError(f"--lambdas must be positive and strictly ascending (rate 0 = lowest), got {lambdas}")
    if default_lambda is None:
        default_lambda = ModelConfig().lambdas[ModelConfig().default_rate]
    default = min(range(len(lambdas)), key=lambda i: abs(np.log(lambdas[i] / default_lambda)))
    return {"lambdas": list(lambdas), "default_rate": default}


# ---- trainer -------------------------------------------------------------------------------------------
class CdcTrainer:
    def __init__(
        self, cfg: TrainConfig, tiny: list[bytes], photos: list[Path], lpips: torch.nn.Module | None = None
    ) -> None:
        if cfg.rho > 0 and lpips is None:
            raise DiffcError(f"rho = {cfg.rho} needs the LPIPS network it was trained with (--lpips)")
        if lpips is not None:
            lpips.requires_grad_(False)  # a fixed metric: gradients flow through it, never into it
        self.lpips = lpips
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.model_cfg = ModelConfig.from_dict(cfg.model)
        self.net = CdcModel(self.model_cfg)
        self.ema = CdcModel(self.model_cfg)
        self.ema.load_state_dict(self.net.state_dict())
        self.ema.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.data = CdcBatches(cfg, tiny, photos, self.model_cfg.rates)
        self.state = TrainState()

    def start_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Start the weights and their EMA at a trained model's (a released fp16 model or a checkpoint's EMA),
        with a fresh optimizer: the warm-up then ramps the lr while Adam's moments build up again."""
        state = {k: v.float() for k, v in weights.items()}
        self.net.load_state_dict(state)
        self.ema.load_state_dict(state)

    def lr_at(self, step: int) -> float:
        c = self.cfg
        lr = c.lr * min(1.0, (step + 1) / max(1, c.warmup_steps))
        if c.decay_end > c.decay_start and step >= c.decay_start:
            frac = min(1.0, (step - c.decay_start) / (c.decay_end - c.decay_start))
            lr *= 1.0 - (1.0 - c.final_lr_frac) * frac
        return lr

    def train_step(self) -> dict:
        step = self.state.step
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        batches = self.data.batch(step)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        self.net.train()
        parts = [
            cdc_loss(self.net, x, r, gen, self.cfg.rho, self.cfg.prefix_drop, self.cfg.diffusion_fraction, self.lpips)
            for x, r in batches
        ]
        pixels = [x.numel() for x, _ in batches]
        # each group's mean loss weighted by its pixels: as if the batch were cut into tiles of one size
        loss = sum(p["loss"] * n for p, n in zip(parts, pixels, strict=True)) / sum(pixels)
        terms = {k: torch.cat([p[k] for p in parts]) for k in ("lpips", "bpp", "mse_mean", "mse_diff", "t")}
        rate = torch.cat([r for _, r in batches])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = self.cfg.ema_decay
            for pe, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        self.state.step += 1
        return {**terms, "rate": rate, "loss": float(loss.detach())}

    def save(self, directory: Path) -> None:
        """Write the checkpoint beside the old one, then swap: an interrupted save never loses the last one."""
        write_checkpoint(
            directory,
            {
                "weights.safetensors": self.net.state_dict(),
                "ema.safetensors": self.ema.state_dict(),
                "optimizer.safetensors": optimizer_tensors(self.opt),
            },
            {"format": "cdc-checkpoint", "config": asdict(self.cfg), "model": self.cfg.model, **asdict(self.state)},
        )

    def load(self, directory: Path) -> None:
        def as_saved(cfg: TrainConfig) -> dict:  # tuples are lists once in state.json
            return json.loads(json.dumps(asdict(cfg)))

        with checkpoint_errors(directory, RESUME_ADVICE):
            meta = json.loads((directory / STATE).read_text())
            refuse_changed_config(  # the data is compared apart: a checkpoint without its record still resumes
                directory,
                as_saved(self.cfg),
                meta["config"],
                as_saved(TrainConfig()),
                ADJUSTABLE_ON_RESUME | {"data"},
            )
            refuse_changed_data(directory, meta["config"].get("data"), self.cfg.data, DATA_OPTIONS)
            self.net.load_state_dict(load_file(str(directory / "weights.safetensors")))
            self.ema.load_state_dict(load_file(str(directory / "ema.safetensors")))
            load_optimizer_tensors(self.opt, load_file(str(directory / "optimizer.safetensors")))
            self.state = TrainState(step=meta["step"], elapsed_s=meta["elapsed_s"], curve=meta["curve"])


def checkpoint_config(directory: Path) -> TrainConfig:
    state = Path(directory) / STATE
    if not state.is_file():
        raise DiffcError(f"{directory}: not a CDC training checkpoint (no {STATE})")
    with checkpoint_errors(directory, RESUME_ADVICE):
        saved = json.loads(state.read_text())["config"]
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def model_config_option(text: str, base: dict) -> ModelConfig:
    """``base`` with the fields of ``--model-config`` (a JSON object) over it; a value that is no JSON object
    of ModelConfig fields is one error naming the option."""
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--model-config is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(given, dict):
        raise InvalidInputError(f"--model-config takes a JSON object of model fields, got {text!r}")
    try:
        return ModelConfig.from_dict({**base, **given})
    except (TypeError, ValueError) as exc:
        valid = ", ".join(f.name for f in fields(ModelConfig))
        raise InvalidInputError(f"--model-config: {exc} (model fields: {valid})") from None


# Lowest value of each numeric option (``not value >= low`` also refuses NaN): below it a run would divide by
# zero, loop without end, or fail deep inside torch.
OPTION_MINIMUM = {
    "minutes": 0,
    "max_steps": 0,
    "checkpoint_minutes": 0,
    "tiny_limit": 1,
    "threads": 1,
    "batch_size": 1,
    "lr": 0,
    "warmup_steps": 0,
    "decay_start": 0,
    "decay_end": 0,
    "photo_crop": 0,
}


# ---- the loop ------------------------------------------------------------------------------------------
def run_training(
    trainer: CdcTrainer,
    out: Path,
    minutes: float,
    max_steps: int | None = None,
    checkpoint_minutes: float = 4.0,
    log_every: int = 25,
    log=print,
) -> tuple[TrainState, str | None]:
    """Train until ``minutes`` or ``max_steps``; checkpoint to ``out/checkpoint`` every ``checkpoint_minutes``
    and at the end (also on SIGTERM/SIGINT, after the current step)."""
    start = last_ckpt = time.monotonic()
    base = trainer.state.elapsed_s
    rates = trainer.model_cfg.rates
    acc = _Window(rates)
    stop = StopRequest()
    with stop_on_signals(stop):
        while stop.signal is None:
            if time.monotonic() - start >= minutes * 60 or (max_steps is not None and trainer.state.step >= max_steps):
                break
            t0 = time.monotonic()
            terms = trainer.train_step()
            acc.add(terms, time.monotonic() - t0)
            trainer.state.elapsed_s = base + time.monotonic() - start
            step = trainer.state.step
            if step % log_every == 0:
                row = acc.summary(step, trainer.state.elapsed_s, trainer.lr_at(step))
                trainer.state.curve.append(row)
                log(json.dumps(row))
                acc = _Window(rates)
            if time.monotonic() - last_ckpt >= checkpoint_minutes * 60:
                trainer.save(out / "checkpoint")
                last_ckpt = time.monotonic()
        trainer.save(out / "checkpoint")
    return trainer.state, stop.signal


class _Window:
    def __init__(self, rates: int) -> None:
        self.n, self.loss, self.secs = 0, 0.0, 0.0
        self.bpp = [[] for _ in range(rates)]
        self.pm = [[] for _ in range(rates)]
        self.pd = [[] for _ in range(rates)]

    def add(self, terms: dict, secs: float) -> None:
        self.n += 1
        self.loss += terms["loss"]
        self.secs += secs
        for r, b, m, d in zip(
            terms["rate"].tolist(),
            terms["bpp"].tolist(),
            terms["mse_mean"].tolist(),
            terms["mse_diff"].tolist(),
            strict=True,
        ):
            self.bpp[r].append(b)
            self.pm[r].append(m)
            if d == d:  # not NaN: this image trained the U-Net
                self.pd[r].append(d)

    def summary(self, step: int, elapsed: float, lr: float) -> dict:
        def mean_psnr(v: list[float]) -> float | None:
            return round(float(psnr(torch.tensor(float(np.mean(v))))), 2) if v else None

        return {
            "step": step,
            "elapsed_s": round(elapsed, 1),
            "lr": float(f"{lr:.3g}"),
            "loss": round(self.loss / max(1, self.n), 4),
            "s_per_step": round(self.secs / max(1, self.n), 3),
            "bpp": [round(float(np.mean(v)), 4) if v else None for v in self.bpp],
            "psnr_mean": [mean_psnr(v) for v in self.pm],
            "mse_diff_psnr": [mean_psnr(v) for v in self.pd],
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffc_pipeline.codecs.cdc.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoint in OUT/checkpoint)")
    p.add_argument(
        "--minutes",
        type=float,
        default=60.0,
        help="stop after this many minutes of this session (a checkpoint is written at the end; default: %(default)s)",
    )
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--tiny", default=DEFAULT_TINY, help="Tiny ImageNet train Parquet folder")
    p.add_argument("--photos", default=DEFAULT_PHOTOS, help="folder of native-resolution photos ('' for none)")
    p.add_argument(
        "--tiny-limit",
        type=int,
        default=None,
        help="train on the first N Tiny ImageNet images only (default: all; a resume must pass the same)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per step (default: {TrainConfig.batch_size}, or the checkpoint's; fixed for a run)",
    )
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--decay-start", type=int, default=None)
    p.add_argument("--decay-end", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--diffusion-fraction", type=float, default=None, help="share of each batch training the U-Net")
    p.add_argument("--photo-crop", type=int, default=None, help="side of the photo crops, a multiple of 64 (0: --crop)")
    p.add_argument(
        "--model-config",
        type=str,
        default=None,
        help="JSON of ModelConfig fields for a new run (a resumed run keeps its model: another is refused)",
    )
    p.add_argument(
        "--lambdas",
        default=None,
        help="comma-separated ascending lambdas, one per rate (new runs only; with --init-from, new rates start "
        "from the nearest trained one)",
    )
    p.add_argument(
        "--train-rates",
        default=None,
        help="comma-separated rate indices to train (default: all; on resume it branches a run, e.g. to one rate)",
    )
    p.add_argument(
        "--rho",
        type=float,
        default=None,
        help="weight of the LPIPS term, 0..1 (default: 0; a resumed run keeps its own: another is refused)",
    )
    p.add_argument("--lpips", default=None, help="LPIPS network as a torch.export archive (.pt2), for rho > 0")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start a new run instead of resuming OUT/checkpoint; where one exists, only with --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="with --fresh: let the new run replace the existing OUT/checkpoint (at its first checkpoint)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start a new run from a trained model: 'builtin', a model directory or a checkpoint (fresh optimizer)",
    )
    args = p.parse_args(argv)
    for name, low in OPTION_MINIMUM.items():
        value = getattr(args, name)
        if value is not None and not value >= low:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    torch.set_num_threads(args.threads)
    ckpt = args.out / "checkpoint"
    recover_checkpoint(ckpt)  # a kill between the swap's two renames left .old/.tmp: resume from it
    if args.overwrite and not args.fresh:
        raise InvalidInputError("--overwrite only goes with --fresh (a new run that replaces OUT/checkpoint)")
    if args.fresh and ckpt.exists() and not args.overwrite:
        raise InvalidInputError(
            f"--fresh: {ckpt} holds a training run, which a new run would replace at its first checkpoint; "
            "add --overwrite to replace it, drop --fresh to resume it, or give another --out"
        )
    resume = ckpt.is_dir() and not args.fresh
    cfg = checkpoint_config(ckpt) if resume else TrainConfig()
    lambdas = None
    if args.lambdas is not None:
        try:
            lambdas = tuple(float(v) for v in args.lambdas.split(",") if v.strip())
        except ValueError:
            raise DiffcError(f"--lambdas takes comma-separated numbers, got {args.lambdas!r}") from None
        if resume and tuple(cfg.model["lambdas"]) != lambdas:
            raise DiffcError(f"--lambdas: {ckpt} trains lambdas {cfg.model['lambdas']}; they are fixed for a run")
    init_weights = None
    if args.init_from is not None:
        from .codec import load_model

        init = load_model(args.init_from)
        source = {"name": init.name, "sha256": init.sha256}
        if resume and cfg.init_from != source:
            raise DiffcError(
                f"--init-from {args.init_from}: {ckpt} is a run started from {cfg.init_from or 'scratch'}; "
                "--init-from only starts new runs (drop it to resume, or replace the run: --fresh --overwrite)"
            )
        if not resume:
            if args.model_config:
                raise DiffcError("--init-from takes the model's own architecture; drop --model-config")
            init_weights, init_cfg = dict(init.net.state_dict()), init.cfg
            if lambdas is not None and lambdas != init_cfg.lambdas:
                init_weights, init_cfg = remap_rates(init_weights, init_cfg, lambdas)
            cfg.model, cfg.init_from = init_cfg.to_dict(), source
    elif lambdas is not None and not resume:
        cfg.model = {**cfg.model, **rates_config(lambdas)}
    if args.model_config:
        requested = model_config_option(args.model_config, cfg.model)
        if not resume:
            cfg.model = requested.to_dict()
        elif requested != ModelConfig.from_dict(cfg.model):
            trained = ModelConfig.from_dict(cfg.model)
            diffs = ", ".join(
                f"{f.name} {getattr(trained, f.name)!r} (requested {getattr(requested, f.name)!r})"
                for f in fields(ModelConfig)
                if getattr(trained, f.name) != getattr(requested, f.name)
            )
            raise InvalidInputError(
                f"--model-config: {ckpt} trains a model with {diffs}; the model is fixed for a run "
                "(drop --model-config to resume, or start a new run in another --out)"
            )
    for name in (
        "batch_size",
        "lr",
        "warmup_steps",
        "decay_start",
        "decay_end",
        "seed",
        "diffusion_fraction",
        "photo_crop",
    ):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.train_rates is not None:
        try:
            cfg.train_rates = tuple(int(r) for r in args.train_rates.split(",") if r.strip())
        except ValueError:
            raise DiffcError(f"--train-rates takes comma-separated integers, got {args.train_rates!r}") from None
    if args.rho is not None:
        if not 0.0 <= args.rho <= 1.0:
            raise InvalidInputError(f"--rho must be in [0, 1], got {args.rho}")
        if resume and args.rho != cfg.rho:
            raise InvalidInputError(
                f"--rho {args.rho}: {ckpt} trains with rho {cfg.rho}, which is fixed for a run (drop --rho to "
                "resume, or start a new run in another --out)"
            )
        cfg.rho = args.rho
    lpips = None
    if args.lpips:
        from ...evaluation.perceptual import check_lpips, load_exported

        lpips = load_exported(args.lpips, "--lpips")
        check_lpips(lpips)
        digest = hashlib.sha256(Path(args.lpips).read_bytes()).hexdigest()
        if not resume:
            cfg.lpips_sha256 = digest
        elif digest != cfg.lpips_sha256:
            raise DiffcError(f"--lpips {args.lpips} is not the LPIPS network this run was trained with")
    tiny = load_tiny(args.tiny, args.tiny_limit)
    photos = list_photos(args.photos) if args.photos else []
    cfg.data = data_record(args.tiny, args.tiny_limit, len(tiny), args.photos, len(photos))
    trainer = CdcTrainer(cfg, tiny, photos, lpips)
    if resume:
        trainer.load(ckpt)
    elif init_weights is not None:
        trainer.start_from(init_weights)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(
        json.dumps(
            {
                "event": "start",
                "resume": resume,
                "step": trainer.state.step,
                "params": count_parameters(trainer.net),
                "tiny": len(tiny),
                "photos": len(photos),
                "config": asdict(cfg),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )
    state, sig = run_training(trainer, args.out, args.minutes, args.max_steps, args.checkpoint_minutes, log=log)
    log(
        json.dumps(
            {
                "event": "stop",
                "step": state.step,
                "signal": sig,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DiffcError as exc:  # a bad flag or input: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
