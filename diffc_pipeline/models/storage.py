"""Model directories on disk: ``config.json`` + ``model.safetensors``, never pickles.

A model directory is what ``--model PATH`` names and what ``diffc model export`` writes. Its identity is the
SHA-256 of the canonical config plus the weight file's bytes, so an archive names the exact model it needs.
"""

from __future__ import annotations

import hashlib
import json
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


def identity_of(directory: Path, config: dict) -> ModelIdentity:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    with open(directory / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return ModelIdentity(name=str(config.get("name", directory.name)), sha256=h.hexdigest())


def save_unet_model(
    directory: str | Path, net: UNet, schedule_dict: dict, name: str, fp16: bool = False, extra: dict | None = None
) -> ModelIdentity:
    """Write a model directory; ``fp16`` halves the size (weights are upcast to fp32 on load)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
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
    save_file(tensors, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return identity_of(directory, config)


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


def load_unet_model(directory: str | Path, device: str = "cpu") -> UNetDiffusionModel:
    directory = Path(directory)
    config = read_config(directory)
    if config.get("format") != FORMAT or config.get("architecture") != "unet":
        raise ModelLoadError(f"{directory}: not a diffc U-Net model (format={config.get('format')!r})")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = f"; found pickled files {pickles}, which are refused" if pickles else ""
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME}{hint}")
    try:
        net = UNet(UNetConfig.from_dict(config["unet"]))
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        net.load_state_dict(state)
        schedule = schedule_from_dict(config["schedule"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{directory}: weights do not match the config: {exc}") from None
    return UNetDiffusionModel(net, schedule, identity_of(directory, config), device=device)
