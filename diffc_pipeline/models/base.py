"""The one interface the codec needs from a diffusion model.

The codec (``diffc_pipeline.codec``) depends on nothing but :class:`DiffusionModel`: a noise-prediction
network over variance-preserving Gaussian diffusion in continuous time, ``z_t = a_t x + s_t e`` with
``a_t^2 = sigmoid(-g(t))``, ``s_t^2 = sigmoid(g(t))`` and ``g(t) = -log SNR(t)`` increasing in ``t``.
Pixels are scaled to ``[-1, 1]``. The built-in U-Net, the analytic Gaussian model and the diffusers
adapter all implement it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class ModelIdentity:
    """Names the exact weights a stream was made with: decoding with anything else must fail loudly."""

    name: str
    sha256: str  # hex digest over the weights and the config that shape the model's outputs

    @property
    def short(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"


class NoiseSchedule(Protocol):
    """``g(t) = -log SNR(t)`` on ``t`` in ``[0, 1]``, strictly increasing."""

    gamma_min: float
    gamma_max: float

    def gamma(self, t: torch.Tensor) -> torch.Tensor: ...

    def t_of_gamma(self, gamma: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LinearSchedule:
    """``g(t) = g_min + (g_max - g_min) t``: the fixed schedule of VDM (Kingma et al. 2021)."""

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def t_of_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        return (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)

    def dgamma_dt(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.gamma_max - self.gamma_min)

    def to_dict(self) -> dict:
        return {"kind": "linear", "gamma_min": self.gamma_min, "gamma_max": self.gamma_max}


def schedule_from_dict(d: dict) -> LinearSchedule:
    if d.get("kind") != "linear":
        raise ValueError(f"unknown noise schedule kind {d.get('kind')!r}")
    low, high = float(d["gamma_min"]), float(d["gamma_max"])
    if not low < high:  # the log-SNR must fall along the chain; NaN fails this too
        raise ValueError(f"noise schedule gamma_min {low} must be below gamma_max {high}")
    return LinearSchedule(low, high)


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, s)`` with ``a^2 = sigmoid(-g)``, ``s^2 = sigmoid(g)``: variance preserving."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


@runtime_checkable
class DiffusionModel(Protocol):
    """What every model offers the codec.

    ``predict_eps(z, logsnr)`` takes a batch ``z`` of shape ``(B, C, H, W)`` with ``H`` and ``W`` multiples
    of ``pad_multiple`` and per-image ``logsnr`` of shape ``(B,)`` (``= -g(t)``) and returns the
    predicted noise, same shape as ``z``.
    """

    channels: int
    pad_multiple: int
    identity: ModelIdentity
    schedule: NoiseSchedule

    def predict_eps(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor: ...


# float64 temporaries of the per-pixel algebra stay under this many elements per piece (8 MB each): on a
# 12 MP photo whole-image temporaries were ~0.3 GB apiece and the denoiser alone held four of them
PIECE_ELEMENTS = 1 << 20


def map_in_pieces(
    fn: Callable[..., torch.Tensor], tensors: tuple[torch.Tensor, ...], coeffs: tuple[torch.Tensor, ...] = ()
) -> torch.Tensor:
    """``fn(*tensors, *coeffs)`` computed piece by piece into a float32 tensor shaped like ``tensors[0]``.

    ``tensors`` are ``(B, ...)`` with equal element counts per image; ``coeffs`` are per-image ``(B,)``
    scalars, passed to ``fn`` as ``(b, 1)`` columns. ``fn`` must be elementwise: each output element then
    depends on its own inputs only, so the pieces give bit for bit what one whole-batch call gives (tested),
    while the float64 temporaries stay at :data:`PIECE_ELEMENTS` - whatever the image size. Small images
    are taken several at a time, so a batch of thumbnails costs no more calls than it did.
    """
    b = tensors[0].shape[0]
    flat = [t.reshape(b, -1) for t in tensors]
    n = flat[0].shape[1]
    out = torch.empty((b, n), dtype=torch.float32, device=flat[0].device)
    per = max(1, PIECE_ELEMENTS // max(n, 1))
    width = min(n, PIECE_ELEMENTS)
    for i in range(0, b, per):
        rows = slice(i, i + per)
        cols = [c[rows].reshape(-1, 1) for c in coeffs]
        for lo in range(0, n, width):
            out[rows, lo : lo + width] = fn(*(f[rows, lo : lo + width] for f in flat), *cols)
    return out.view(tensors[0].shape)


def predict_x(model: DiffusionModel, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """``x_hat(z_t) = (z_t - s_t eps_hat) / a_t`` in float64, clipped to the data range ``[-1, 1]`` unless the
    model says its data are unbounded (``clip_denoised = False``, e.g. the analytic Gaussian model).

    The one definition of the denoiser: the codec's chain, its reconstructions and the NELBO evaluation all
    call it, so they agree on what the receiver computes.
    """
    a, s = alpha_sigma(-logsnr.double())
    eps = model.predict_eps(z, logsnr.float())
    clip = getattr(model, "clip_denoised", True)

    def x_of(zp: torch.Tensor, ep: torch.Tensor, ap: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
        x = (zp.double() - sp * ep.double()) / ap
        return x.clamp(-1.0, 1.0) if clip else x

    return map_in_pieces(x_of, (z, eps), (a, s))
