"""The model's negative ELBO on held-out images, in bits/dim: what DiffC pays to transmit them.

DiffC's rate for a step from ``t`` to ``s < t`` is that step's term of the variational bound,
``0.5 (SNR(s) - SNR(t)) |x - x_hat(z_t)|^2`` nats, so three figures matter (Kingma et al. 2021, VDM):

- the continuous-time bound (infinitely many steps): prior + reconstruction +
  ``0.5 int e^-g |x - x_hat|^2 dg`` over ``g = -log SNR`` from ``g_min`` to ``g_max``, estimated with
  ``t_samples`` stratified noise levels per image (integrating over ``g`` instead of ``t`` makes it
  independent of how the schedule is parametrised);
- the discrete-time bound of ``K`` uniform steps in ``t``, the rate of a codec that takes those steps;
- the rate as a function of ``t`` on a grid: ``bpd_from_1[t]`` is prior + the bound's terms from ``t = 1``
  down to ``t``, i.e. what communicating ``z_t`` costs, and ``psnr_db[t]`` is the quality of the denoised
  ``x_hat(z_t)``; the codec's step schedule is chosen from these curves.

``x_hat`` is :func:`~diffc_pipeline.models.base.predict_x`, clipped to the data range exactly as the codec
uses it, so these are the codec's (ideal, before coding overhead) rates. Everything is a function of ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..codecs.tensors import to_float
from ..errors import DiffcError
from ..images import decode_image
from ..models.base import DiffusionModel, predict_x
from .vdm import prior_loss, reconstruction_loss

LN2 = math.log(2.0)
# VDM's discretised decoder materialises 256 levels per dimension: a few images at a time bounds its memory
_RECON_CHUNK = 4


@dataclass(frozen=True)
class EvalConfig:
    t_samples: int = 8  # noise levels per image for each Monte-Carlo estimate
    steps: tuple[int, ...] = (16, 64, 256)  # discrete schedules to evaluate (uniform in t)
    # codec-style schedules (logsnr_start, logsnr_end, K): K steps uniform in log-SNR, stopping at logsnr_end
    codec: tuple[tuple[float, float, int], ...] = ()
    grid: int = 17  # points of the bits/dim-versus-t curve, t = 0 .. 1
    batch_size: int = 32
    seed: int = 0


@dataclass
class Bound:
    """One estimate of the NELBO in bits/dim, split into its terms, with the standard error over images."""

    bpd: float
    diffusion_bpd: float
    prior_bpd: float
    reconstruction_bpd: float
    stderr_bpd: float | None  # None with a single image
    steps: int | None = None  # None: continuous time


@dataclass
class EvalResult:
    model: dict
    images: int
    dims: int  # per image (C x H x W after cropping to the model's multiple); all bits/dim use it
    config: dict
    continuous: Bound
    discrete: list[Bound]
    by_t: list[dict]
    codec: list[dict]  # rate of the steps of each codec-style schedule and the denoised quality at its end
    # continuous-time NELBO by the trapezoid rule over the by_t grid: a cross-check of the Monte-Carlo one
    quadrature_bpd: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def crop_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Centre crop to the model's size multiple (64x64 Tiny ImageNet needs none); padding would add pixels
    the likelihood should not count."""
    h, w = img.shape[0] // multiple * multiple, img.shape[1] // multiple * multiple
    if h == 0 or w == 0:
        raise DiffcError(f"image of {img.shape[1]}x{img.shape[0]} is smaller than the model's multiple {multiple}")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top : top + h, left : left + w]


def batches(encoded: list[bytes], multiple: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Decoded ``(B, 3, H, W)`` batches in ``[-1, 1]``; images of one size per batch (sizes may vary)."""
    by_shape: dict[tuple[int, int], list[np.ndarray]] = {}
    for data in encoded:
        img = crop_to_multiple(decode_image(data), multiple)
        group = by_shape.setdefault(img.shape[:2], [])
        group.append(img)
        if len(group) == batch_size:
            yield _to_tensor(by_shape.pop(img.shape[:2]))
    for group in by_shape.values():
        yield _to_tensor(group)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return to_float(np.stack(images))


def _sq_err(model: DiffusionModel, x: torch.Tensor, gamma: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image ``|x - x_hat(z_g)|^2`` (float64) for per-image noise levels ``gamma``."""
    gamma = gamma.float()
    a, s = torch.sigmoid(-gamma).sqrt().view(-1, 1, 1, 1), torch.sigmoid(gamma).sqrt().view(-1, 1, 1, 1)
    z = a * x + s * torch.randn(x.shape, generator=gen)
    x_hat = predict_x(model, z, -gamma)
    return (x - x_hat).double().pow(2).flatten(1).sum(1)


def _stratified(b: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """``(b, m)`` points in ``[0, 1)``: one per stratum ``[j/m, (j+1)/m)``, independent offsets per image."""
    return (torch.rand((b, 1), generator=gen, dtype=torch.float64) + torch.arange(m, dtype=torch.float64)) / m


def continuous_diffusion_nats(model: DiffusionModel, x: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """Unbiased per-image estimate of ``0.5 int_{g_min}^{g_max} e^-g |x - x_hat(z_g)|^2 dg``."""
    g0, g1 = model.schedule.gamma_min, model.schedule.gamma_max
    gammas = g0 + (g1 - g0) * _stratified(x.shape[0], m, gen)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for j in range(m):
        total += torch.exp(-gammas[:, j]) * _sq_err(model, x, gammas[:, j], gen)
    return 0.5 * (g1 - g0) / m * total


def uniform_t_gammas(model: DiffusionModel, steps: int) -> torch.Tensor:
    """``g`` at ``t = 1, (K-1)/K, ..., 0``: ``K`` steps uniform in ``t``, noisiest first."""
    return model.schedule.gamma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).double()


def steps_diffusion_nats(
    model: DiffusionModel, x: torch.Tensor, gammas: torch.Tensor, m: int, gen: torch.Generator
) -> torch.Tensor:
    """Per-image sum over steps ``g_{i-1} -> g_i`` of ``0.5 (SNR(g_i) - SNR(g_{i-1})) |x - x_hat(z_{g_{i-1}})|^2``.

    ``gammas`` runs from the noisiest level down (``K + 1`` values, ``K`` steps). With ``m >= K`` every term
    is evaluated; otherwise ``m`` stratified terms per image, weighted ``K/m`` (unbiased, as VDM trains its
    discrete-time loss).
    """
    b, steps = x.shape[0], len(gammas) - 1
    if m >= steps:
        idx = torch.arange(steps).expand(b, steps)
    else:
        idx = (_stratified(b, m, gen) * steps).floor().long().clamp(0, steps - 1)
    total = torch.zeros(b, dtype=torch.float64)
    for j in range(idx.shape[1]):
        g_t, g_s = gammas[idx[:, j]], gammas[idx[:, j] + 1]
        total += (torch.exp(-g_s) - torch.exp(-g_t)) * _sq_err(model, x, g_t, gen)
    return 0.5 * steps / idx.shape[1] * total


def grid_sq_err(model: DiffusionModel, x: torch.Tensor, ts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``(len(ts),)`` sums over the batch of ``|x - x_hat(z_t)|^2`` at each grid point."""
    gammas = model.schedule.gamma(ts.double()).double()
    return torch.stack([_sq_err(model, x, g.expand(x.shape[0]), gen).sum() for g in gammas])


def by_t_curve(model: DiffusionModel, ts: torch.Tensor, mse: torch.Tensor, prior_bpd: float) -> list[dict]:
    """Rate to reach each ``t`` from ``t = 1`` (trapezoid rule in ``g``) and the denoised quality there."""
    gammas = model.schedule.gamma(ts.double()).double()
    density = 0.5 * torch.exp(-gammas) * mse / LN2  # bits/dim per unit of g
    segments = 0.5 * (density[1:] + density[:-1]) * (gammas[1:] - gammas[:-1])
    # reversed cumulative sum: the rate of every segment between t and 1
    from_1 = prior_bpd + torch.cat([segments.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
    return [
        {
            "t": round(float(t), 6),
            "gamma": float(g),
            "mse_x": float(m),  # per dim, data scaled to [-1, 1]
            "psnr_db": 10 * math.log10(4.0 / float(m)) if m > 0 else None,  # None: lossless
            "bpd_per_gamma": float(d),
            "bpd_from_1": float(r),
        }
        for t, g, m, d, r in zip(ts, gammas, mse, density, from_1, strict=True)
    ]


def _bound(
    per_image_nats: torch.Tensor, prior: torch.Tensor, recon: torch.Tensor, dims: int, steps: int | None
) -> Bound:
    total = per_image_nats + prior + recon
    n = len(total)
    stderr = float(total.std(unbiased=True)) / math.sqrt(n) / (dims * LN2) if n > 1 else None

    def bpd(v: torch.Tensor) -> float:
        return float(v.mean()) / (dims * LN2)

    return Bound(bpd(total), bpd(per_image_nats), bpd(prior), bpd(recon), stderr, steps)


def _codec_row(schedule: tuple[float, float, int], nats: torch.Tensor, mse: float, dims: int, channels: int) -> dict:
    """Ideal rate of a codec-style schedule's steps (the start is shared noise, so no prior term is paid)."""
    n = len(nats)
    bpd = nats / (dims * LN2)
    return {
        "logsnr_start": schedule[0],
        "logsnr_end": schedule[1],
        "steps": schedule[2],
        "bpd": float(bpd.mean()),
        "bpp": float(bpd.mean()) * channels,
        "stderr_bpd": float(bpd.std(unbiased=True)) / math.sqrt(n) if n > 1 else None,
        "mse_x_end": mse,
        "psnr_denoised_db": 10 * math.log10(4.0 / mse) if mse > 0 else None,
    }


def evaluate(
    model: DiffusionModel,
    encoded: list[bytes],
    config: EvalConfig = EvalConfig(),
    model_info: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """NELBO of ``model`` on the encoded images (all of one pixel count, as the val split is)."""
    if not encoded:
        raise DiffcError("no images to evaluate")
    start = time.monotonic()
    gen = torch.Generator().manual_seed(config.seed)
    ts = torch.linspace(0.0, 1.0, config.grid, dtype=torch.float64)
    cont, prior, recon = [], [], []
    disc: dict[int, list[torch.Tensor]] = {k: [] for k in config.steps}
    codec_rate: list[list[torch.Tensor]] = [[] for _ in config.codec]
    codec_err = [0.0] * len(config.codec)
    grid_sum = torch.zeros(config.grid, dtype=torch.float64)
    dims, n_images = None, 0
    for x in batches(encoded, model.pad_multiple, config.batch_size):
        if dims is None:
            dims = x[0].numel()
        elif x[0].numel() != dims:
            raise DiffcError("bits/dim needs images of one pixel count; these differ (crop or resize them)")
        prior.append(prior_loss(x, model.schedule).double())
        recon.append(torch.cat([reconstruction_loss(c, model.schedule, gen) for c in x.split(_RECON_CHUNK)]).double())
        cont.append(continuous_diffusion_nats(model, x, config.t_samples, gen))
        for k in config.steps:
            disc[k].append(steps_diffusion_nats(model, x, uniform_t_gammas(model, k), config.t_samples, gen))
        for i, (start_, end, k) in enumerate(config.codec):
            gammas = -torch.linspace(start_, end, k + 1, dtype=torch.float64)
            codec_rate[i].append(steps_diffusion_nats(model, x, gammas, config.t_samples, gen))
            codec_err[i] += float(_sq_err(model, x, gammas[-1].expand(x.shape[0]), gen).sum())
        if config.grid:
            grid_sum += grid_sq_err(model, x, ts, gen)
        n_images += x.shape[0]
        if on_batch:
            on_batch(x.shape[0])
    prior_t, recon_t = torch.cat(prior), torch.cat(recon)
    continuous = _bound(torch.cat(cont), prior_t, recon_t, dims, None)
    discrete = [_bound(torch.cat(disc[k]), prior_t, recon_t, dims, k) for k in config.steps]
    curve = by_t_curve(model, ts, grid_sum / (n_images * dims), continuous.prior_bpd) if config.grid else []
    notes = [
        "bits/dim over C*H*W after centre-cropping to the model's size multiple",
        "x_hat is clipped to [-1, 1] as the codec uses it; rates are ideal (no coding overhead)",
    ]
    return EvalResult(
        model=model_info or {"name": model.identity.name, "sha256": model.identity.sha256},
        images=n_images,
        dims=dims,
        config=asdict(config) | {"steps": list(config.steps), "codec": [list(c) for c in config.codec]},
        continuous=continuous,
        discrete=discrete,
        by_t=curve,
        codec=[
            _codec_row(sched, torch.cat(rate), err / (n_images * dims), dims, model.channels)
            for sched, rate, err in zip(config.codec, codec_rate, codec_err, strict=True)
        ],
        quadrature_bpd=curve[0]["bpd_from_1"] + continuous.reconstruction_bpd if curve else None,
        seconds=round(time.monotonic() - start, 2),
        notes=notes,
    )
