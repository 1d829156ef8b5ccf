"""Users' own pretrained models in the diffusers format, behind the continuous log-SNR interface.

A diffusers ``UNet2DModel`` is trained on ``N`` discrete timesteps with ``alphas_cumprod[n]`` from its
scheduler config, ``z_n = sqrt(ac[n]) x + sqrt(1 - ac[n]) eps``: the same variance-preserving process as
ours, with ``logsnr[n] = log(ac[n] / (1 - ac[n]))``. The adapter therefore only has to translate noise levels:

- ``schedule.gamma(t)`` interpolates ``-logsnr`` over ``t_n = n / (N - 1)``, so ``t`` in ``[0, 1]`` spans
  exactly the noise levels the model was trained on;
- ``predict_eps(z, logsnr)`` finds the fractional timestep whose log-SNR equals ``logsnr`` and feeds it to the
  U-Net (its sinusoidal timestep embedding takes real numbers), then converts the output of its
  ``prediction_type`` (epsilon, v_prediction or sample) to a noise prediction.

``diffusers`` is an optional dependency (``pip install 'diffc-pipeline[diffusers]'``), imported only here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .base import ModelIdentity
from .storage import PICKLE_SUFFIXES, read_state_dict

UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# ac[n] is kept in (0, 1) so that log-SNR stays finite for zero-terminal-SNR schedules
_AC_EPS = 1e-12


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``np.interp`` for tensors (torch has none), clamped to the end values."""
    x = x.to(xp.dtype)
    i = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]).contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return f0 + w * (f1 - f0)


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


class DiscreteSchedule:
    """A :class:`~diffc_pipeline.models.base.NoiseSchedule` through the points ``(n / (N-1), -logsnr[n])``."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        ac = alphas_cumprod.double().clamp(_AC_EPS, 1.0 - _AC_EPS)
        gamma = -(ac.log() - torch.log1p(-ac))
        if not bool((gamma[1:] > gamma[:-1]).all()):
            raise ModelLoadError("the scheduler's alphas_cumprod must strictly decrease over timesteps")
        self.alphas_cumprod = ac
        self.gammas = gamma  # gammas[n] = -logsnr of discrete timestep n, increasing
        self.ts = torch.linspace(0.0, 1.0, len(ac), dtype=torch.float64)
        self.gamma_min = float(gamma[0])
        self.gamma_max = float(gamma[-1])

    @property
    def num_timesteps(self) -> int:
        return len(self.gammas)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t)
        return _interp(t, self.ts, self.gammas).to(_float_dtype(t))

    def t_of_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        gamma = torch.as_tensor(gamma)
        return _interp(gamma, self.gammas, self.ts).to(_float_dtype(gamma))

    def timestep_of_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The fractional discrete timestep ``n`` with ``logsnr[n] = logsnr``, clamped to ``[0, N-1]``."""
        steps = torch.arange(self.num_timesteps, dtype=torch.float64)
        return _interp(-logsnr.double(), self.gammas, steps)

    def to_dict(self) -> dict:
        return {
            "kind": "discrete",
            "num_timesteps": self.num_timesteps,
            "gamma_min": self.gamma_min,
            "gamma_max": self.gamma_max,
        }


def _find_layout(directory: Path) -> tuple[Path, Path]:
    """``(unet_dir, scheduler_config)`` of a pipeline folder (``unet/`` + ``scheduler/``) or a flat folder."""
    unet_dir = directory / "unet" if (directory / "unet" / UNET_CONFIG).is_file() else directory
    if not (unet_dir / UNET_CONFIG).is_file():
        raise ModelLoadError(f"{directory}: no diffusers {UNET_CONFIG} (in unet/ or the folder itself)")
    for candidate in (
        directory / "scheduler" / SCHEDULER_CONFIG,
        directory / SCHEDULER_CONFIG,
        unet_dir / SCHEDULER_CONFIG,
    ):
        if candidate.is_file():
            return unet_dir, candidate
    raise ModelLoadError(
        f"{directory}: no {SCHEDULER_CONFIG} (in scheduler/ or the folder itself); "
        "the noise schedule the U-Net was trained with is needed"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def is_diffusers_dir(directory: Path) -> bool:
    """Whether ``directory`` looks like a diffusers UNet2DModel folder (by its config's ``_class_name``)."""
    for cfg in (directory / "unet" / UNET_CONFIG, directory / UNET_CONFIG):
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel"
            except (OSError, json.JSONDecodeError, AttributeError):
                return False
    return False


def _weight_files(unet_dir: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The files holding the weights and whether they are safetensors; pickles only when allowed."""
    names = sorted(unet_dir.iterdir())
    safe = [p for p in names if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    if safe:
        return safe, True
    pickles = [p for p in names if p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json")]
    if not pickles:
        raise ModelLoadError(f"{unet_dir}: no diffusion_pytorch_model.safetensors")
    if not allow_pickle:
        raise ModelLoadError(
            f"{pickles[0]}: refusing to load a pickled checkpoint (unpickling can run arbitrary code); "
            "re-save it with save_pretrained(safe_serialization=True), or allow pickles (--allow-pickle) "
            "to read it with torch.load(weights_only=True)"
        )
    for p in pickles:
        if p.suffix in PICKLE_SUFFIXES:
            # proves it holds tensors only, whatever diffusers' own loader does next
            read_state_dict(p, allow_pickle=True)
    return pickles, False


def _identity(name: str, files: list[Path], root: Path) -> ModelIdentity:
    """SHA-256 over each config and weight file's path (relative to ``root``) and bytes."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return ModelIdentity(name=name, sha256=h.hexdigest())


class DiffusersModel:
    """A diffusers ``UNet2DModel`` + its training noise schedule as a :class:`DiffusionModel`."""

    def __init__(
        self,
        unet,
        schedule: DiscreteSchedule,
        prediction_type: str,
        identity: ModelIdentity,
        device: str | torch.device = "cpu",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ModelLoadError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        self.net = unet.to(device).eval().float()
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.identity = identity
        self.device = torch.device(device)
        self.channels = int(unet.config.in_channels)
        # one 2x downsampling per down block but the last
        self.pad_multiple = 2 ** (len(unet.config.down_block_types) - 1)

    @torch.inference_mode()
    def predict_eps(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        timestep = self.schedule.timestep_of_logsnr(logsnr.cpu()).float().to(self.device)
        zd = z.to(self.device, torch.float32)
        out = self.net(zd, timestep).sample[:, : self.channels]  # learned-variance models output 2C channels
        if self.prediction_type == "epsilon":
            return out.to(z.device)
        ls = logsnr.to(self.device, torch.float32).view(-1, 1, 1, 1)
        a, s = torch.sigmoid(ls).sqrt(), torch.sigmoid(-ls).sqrt()
        if self.prediction_type == "v_prediction":  # v = a eps - s x  =>  eps = a v + s z
            return (a * out + s * zd).to(z.device)
        return ((zd - a * out) / s).to(z.device)  # sample: x_hat  =>  eps = (z - a x_hat) / s


def load_diffusers_model(
    directory: str | Path, device: str = "cpu", allow_pickle: bool = False, name: str | None = None
) -> DiffusersModel:
    """Load a local diffusers folder: ``unet/`` + ``scheduler/`` (a pipeline) or both configs side by side."""
    directory = Path(directory)
    unet_dir, scheduler_path = _find_layout(directory)
    unet_config = _read_json(unet_dir / UNET_CONFIG)
    if unet_config.get("_class_name") != "UNet2DModel":
        kind = unet_config.get("_class_name")
        raise ModelLoadError(f"{unet_dir}: a {kind!r}; only UNet2DModel is supported")
    if unet_config.get("num_class_embeds") or unet_config.get("class_embed_type"):
        raise ModelLoadError(
            f"{unet_dir}: class-conditional U-Nets are not supported (DiffC needs an unconditional model)"
        )
    if unet_config.get("time_embedding_type", "positional") != "positional":
        raise ModelLoadError(
            f"{unet_dir}: time_embedding_type {unet_config['time_embedding_type']!r} is not "
            "supported (only 'positional' takes fractional timesteps)"
        )
    scheduler_config = _read_json(scheduler_path)
    weights, safe = _weight_files(unet_dir, allow_pickle)
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError as exc:
        raise ModelLoadError(
            f"{directory}: loading diffusers models needs the optional extra: "
            f"pip install 'diffc-pipeline[diffusers]' ({exc})"
        ) from None
    try:
        # DDPMScheduler computes alphas_cumprod from beta_schedule/betas exactly as every discrete diffusers
        # scheduler does; the other fields (sampling settings) do not matter here
        scheduler = DDPMScheduler.from_config(scheduler_config)
        unet = UNet2DModel.from_pretrained(
            str(unet_dir), use_safetensors=safe, low_cpu_mem_usage=False, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as exc:
        raise ModelLoadError(f"{directory}: diffusers could not load the model: {exc}") from None
    schedule = DiscreteSchedule(scheduler.alphas_cumprod)
    identity = _identity(
        name or f"diffusers:{directory.resolve().name}", [unet_dir / UNET_CONFIG, scheduler_path, *weights], directory
    )
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    return DiffusersModel(unet, schedule, prediction_type, identity, device)
