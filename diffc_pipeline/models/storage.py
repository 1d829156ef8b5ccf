"""Model directories on disk: ``config.json`` + ``model.safetensors``, never pickles.

A model directory is what ``--model PATH`` names and what ``diffc model export`` writes. Its identity is the
SHA-256 of the canonical config plus the weight file's bytes, so an archive names the exact model it needs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelLoadError
from .base import ModelIdentity, schedule_from_dict
from .unet import UNet, UNetConfig
from .unet_model import UNetDiffusionModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "diffc-model"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def identity_of(directory: Path, config: dict, weights: Path | None = None) -> ModelIdentity:
    """Name + SHA-256 of the canonical config and the weight file (default ``model.safetensors``)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    with open(weights or directory / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return ModelIdentity(name=str(config.get("name", directory.name)), sha256=h.hexdigest())


def save_unet_model(
    directory: str | Path,
    net: UNet,
    schedule_dict: dict,
    name: str,
    fp16: bool = False,
    extra: dict | None = None,
) -> ModelIdentity:
    """Write a model directory; ``fp16`` halves the size (weights are upcast to fp32 on load).

    The directory is replaced whole: written beside it, then swapped in, so a kill never leaves new weights
    beside an old ``config.json`` (a model whose identity lies) or safetensors' temporary files in it. A
    directory holding anything but a model's files is refused, never replaced."""
    directory = Path(directory).absolute()  # "." has no name to put a staging folder beside
    others = sorted(p.name for p in directory.iterdir() if not _model_file(p.name)) if directory.is_dir() else []
    if others:
        raise ModelLoadError(
            f"{directory} holds other files than a model's ({', '.join(others[:3])}); write the model to a new folder"
        )
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}
    config = {
        "format": FORMAT,
        "version": 1,
        "architecture": "unet",
        "name": name,
        "unet": net.config.to_dict(),
        "schedule": schedule_dict,
        "dtype": "float16" if fp16 else "float32",
        **(extra or {}),
    }
    with replaced_directory(directory) as staging:
        save_file(tensors, str(staging / WEIGHTS_NAME))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return identity_of(directory, config)


# What a model directory holds; ``.tmp*`` are safetensors' temporary files, which a write killed in place (as
# this module wrote before it swapped whole directories) left behind: replaced with the rest.
MODEL_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME})


def _model_file(name: str) -> bool:
    return name in MODEL_FILES or name.startswith(".tmp")


@contextmanager
def replaced_directory(directory: Path) -> Iterator[Path]:
    """A fresh staging folder beside ``directory`` for the body to fill; when the body succeeds, it takes
    ``directory``'s place (the old one is moved aside, then removed). A kill before the swap leaves the old
    folder untouched and a staging one that the next call clears; a kill between the two renames leaves the
    old one aside, which the next call restores if ``directory`` is missing. Both have hidden names of their
    own (``.NAME.staging``, ``.NAME.old``), never a folder a user would call ``NAME.tmp``. Every model folder
    (DiffC's U-Net, CDC's exports) is written through this."""
    staging = directory.with_name(f".{directory.name}.staging")
    old = directory.with_name(f".{directory.name}.old")
    if not directory.exists() and old.is_dir():
        old.rename(directory)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory}: no {CONFIG_NAME} (a model directory holds {CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return config


def refuse_pickle(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: refusing to load a pickled checkpoint (unpickling can run arbitrary code); convert it to "
        f"safetensors, or allow pickles (--allow-pickle) to read it with torch.load(weights_only=True)"
    )


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a pickle when allowed - and then only plain tensors.

    ``torch.load(weights_only=True)`` unpickles nothing but tensors and containers, so even an allowed pickle
    cannot run code; anything else in it is an error, not a fallback to full unpickling.
    """
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own SafetensorError on corrupt headers
            raise ModelLoadError(f"{path}: not a valid safetensors file ({exc})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(f"{path}: unknown weight format (expected .safetensors)")
    if not allow_pickle:
        raise refuse_pickle(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for forbidden globals, RuntimeError for corrupt archives
        raise ModelLoadError(
            f"{path}: not a plain tensor checkpoint, refused even with --allow-pickle ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: expected a flat dict of tensors (a state_dict)")
    return state


def _weights_file(directory: Path, allow_pickle: bool) -> Path:
    """``model.safetensors``, else the single pickled weight file when pickles are allowed."""
    weights = directory / WEIGHTS_NAME
    if weights.is_file():
        return weights
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME}")
    if not allow_pickle:
        raise refuse_pickle(pickles[0])
    if len(pickles) > 1:
        names = [p.name for p in pickles]
        raise ModelLoadError(f"{directory}: several pickled weight files {names}; pass the one to load")
    return pickles[0]


def load_unet_model(
    directory: str | Path, device: str = "cpu", allow_pickle: bool = False, weights: Path | None = None
) -> UNetDiffusionModel:
    """Load a diffc U-Net directory; ``weights`` overrides its weight file (e.g. a ``.pt`` the user named)."""
    directory = Path(directory)
    config = read_config(directory)
    if config.get("format") != FORMAT or config.get("architecture") != "unet":
        raise ModelLoadError(f"{directory}: not a diffc U-Net model (format={config.get('format')!r})")
    weights = weights or _weights_file(directory, allow_pickle)
    tensors = read_state_dict(weights, allow_pickle)
    integral = sorted(k for k, v in tensors.items() if not v.is_floating_point())
    if integral:  # upcast, an int8 or bool tensor would load as garbage weights without a word
        raise ModelLoadError(
            f"{weights}: weights must be floating point, {integral[0]} is {tensors[integral[0]].dtype}"
        )
    if not isinstance(config.get("schedule"), dict):
        raise ModelLoadError(f"{directory}: {CONFIG_NAME} has no noise schedule ('schedule')")
    try:
        net = UNet(UNetConfig.from_dict(config["unet"]))
        net.load_state_dict({k: v.float() for k, v in tensors.items()})
        schedule = schedule_from_dict(config["schedule"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{directory}: weights do not match the config: {exc}") from None
    return UNetDiffusionModel(net, schedule, identity_of(directory, config, weights), device=device)
