"""Diffusion models behind one interface, and :func:`load_model`, which turns a ``--model`` value into one.

``--model`` takes ``builtin`` (the weights shipped in ``models/builtin/``, trained on Tiny ImageNet 64x64),
``photo`` (``models/photo/``: the same network fine-tuned on crops of full-size photos), ``gaussian`` (an
analytic model, for tests and baselines), or a PATH: a diffc model directory (``config.json`` +
``model.safetensors``), its weight file, or a local diffusers folder (``UNet2DModel`` + scheduler config).
Pickled weights are refused unless ``allow_pickle`` - and even then read with
``torch.load(weights_only=True)``, which unpickles tensors only.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError
from .base import (
    DiffusionModel,
    LinearSchedule,
    ModelIdentity,
    NoiseSchedule,
    alpha_sigma,
    predict_x,
)
from .storage import (
    CONFIG_NAME,
    FORMAT,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    load_unet_model,
    refuse_pickle,
    save_unet_model,
)

# The models every installation ships, by the --model name that picks them (their directories are release
# weights, committed); ``builtin`` is the default.
SHIPPED_MODELS = {name: Path(__file__).resolve().parent / name for name in ("builtin", "photo")}
BUILTIN_DIR = SHIPPED_MODELS["builtin"]
# Names a --model value may take that every installation resolves the same way (an archive records them).
NAMED_MODELS = (*SHIPPED_MODELS, "gaussian")

__all__ = [
    "BUILTIN_DIR",
    "NAMED_MODELS",
    "SHIPPED_MODELS",
    "DiffusionModel",
    "LinearSchedule",
    "ModelIdentity",
    "NoiseSchedule",
    "alpha_sigma",
    "count_parameters",
    "load_model",
    "load_unet_model",
    "predict_x",
    "save_unet_model",
]


def load_model(spec: str, device: str = "cpu", allow_pickle: bool = False) -> DiffusionModel:
    """``builtin``, ``photo``, ``gaussian`` or a PATH (see the module docstring) -> a ready, eval-mode model."""
    if spec in SHIPPED_MODELS:
        return load_builtin(SHIPPED_MODELS[spec], device)
    if spec == "gaussian":
        return _load_gaussian()
    path = Path(spec).expanduser()
    if not path.exists():
        names = ", ".join(repr(name) for name in NAMED_MODELS)
        raise ModelLoadError(f"model {spec!r}: no such file or directory (expected {names} or a PATH)")
    if path.is_file():
        return _load_weight_file(path, device, allow_pickle)
    if _is_diffc_dir(path):
        return load_unet_model(path, device, allow_pickle=allow_pickle)
    from .diffusers_adapter import is_diffusers_dir, load_diffusers_model

    if is_diffusers_dir(path):
        return load_diffusers_model(path, device, allow_pickle=allow_pickle)
    raise ModelLoadError(
        f"{path}: not a model directory: expected {CONFIG_NAME} + {WEIGHTS_NAME} (a diffc model) or a "
        "diffusers UNet2DModel folder (unet/config.json + scheduler/scheduler_config.json)"
    )


def load_builtin(directory: Path, device: str = "cpu") -> DiffusionModel:
    """A shipped model; until its release weights exist, say how to make them instead of a bare file error."""
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise ModelLoadError(
            f"the {directory.name!r} model's weights are not shipped yet ({directory} holds no {CONFIG_NAME} + "
            f"{WEIGHTS_NAME}); "
            "train them with `diffc train --data URL --out RUN`, then `diffc model export RUN/checkpoint "
            f"{directory} --fp16`, or pass --model PATH to a model directory"
        )
    return load_unet_model(directory, device)


def count_parameters(model: DiffusionModel) -> int:
    """Parameters of the model's network (0 for analytic models without one)."""
    net = getattr(model, "net", None)
    return sum(p.numel() for p in net.parameters()) if net is not None else 0


def _load_gaussian() -> DiffusionModel:
    try:
        from .gaussian import GaussianModel
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.gaussian":
            raise
        raise ModelLoadError("the analytic 'gaussian' model is not part of this build") from None
    return GaussianModel.default()


def _is_diffc_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_NAME).read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def _load_weight_file(path: Path, device: str, allow_pickle: bool) -> DiffusionModel:
    """A weight file named directly: its directory supplies the config (a ``.pt`` in place of safetensors)."""
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise refuse_pickle(path)
    if not _is_diffc_dir(path.parent):
        raise ModelLoadError(f"{path}: a weight file needs a diffc {CONFIG_NAME} beside it; pass the model directory")
    return load_unet_model(path.parent, device, allow_pickle=allow_pickle, weights=path)
