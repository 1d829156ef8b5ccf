"""``diffc bench prior-variance`` (issue 20, item 4): coding each step against a *widened* prior
``N(mu_p, (1 + tau^2) sigma^2 I)`` - how much it could save, and what it does to the real channel's samples.

In the channel's normalised coordinates the target is ``q = N(d, I)`` and the model's prior ``N(0, I)``
(``KL = |d|^2 / 2``). Against ``p' = N(0, s^2 I)`` the KL is ``(n / 2) (s^-2 (1 + |d|^2 / n) - 1 + ln s^2)``,
smallest at ``s^2 = 1 + |d|^2 / n`` where it is ``(n / 2) ln(1 + |d|^2 / n)``; the target is still ``q``, so
an exact channel's samples - the chain, the PSNR - do not change, only the rate. The codec's opt-in
``prior_variance="count"`` derives ``s^2`` from the step's chunk count (:func:`~..codecs.diffc.channel.prior_s2`).

- :func:`chain_rates`: the ideal rate (bits per image after each prefix) of the ideal chain on real images
  without and with the widened prior - at the optimal ``s^2`` (what sending ``tau`` exactly would give, before
  its side information) and at the count-derived one (what the codec does, with no side information) - and
  two floors no per-step ``tau`` reaches: one variance per 8x8 block and colour channel (side information
  free), and one per dimension (``s_i^2 = 1 + d_i^2``: the least KL of any diagonal Gaussian prior with the
  model's mean, a bound for any decoder-side per-pixel variance);
- :func:`widened_fidelity`: the real channel against the widened prior (``rcc_encode`` with
  ``prior_variance="count"``, each norm-term weight given) next to the default channel on the profile steps
  of :mod:`.fidelity`: shift / variance along / variance across / TV of each chunk's sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from ..codecs.diffc.channel import (
    LN2,
    ideal_sample,
    num_chunks_for,
    prior_s2,
    rcc_decode,
    rcc_encode,
    step_layout,
    widened_kl_nats,
)
from ..codecs.diffc.codec import DiffcCodec
from ..codecs.diffc.config import CodecConfig
from ..codecs.diffc.reconstruct import denoise
from ..codecs.diffc.steps import step_coefficients
from ..codecs.tensors import to_float
from .fidelity import chunk_projections, profile_step, tv_to_normal


def _chain_targets(codec: DiffcCodec, images: np.ndarray, seeds: Sequence[int]) -> list[np.ndarray]:
    """``d`` of every step of the ideal chain, ``(B, C, H, W)`` float32 each: the codec's own step algebra with
    exact samples (the ideal channel's chain, which the widened prior leaves unchanged)."""
    x = to_float(images, codec.model.channels)
    lam = torch.from_numpy(codec.config.logsnrs())
    z = codec._start(seeds, tuple(x.shape[1:]))
    out = []
    for k in range(1, codec.config.num_steps + 1):
        lam_t, lam_s = lam[k - 1].expand(len(x)), lam[k].expand(len(x))
        x_hat = denoise(codec.model, z, lam_t)
        c = step_coefficients(lam_t, lam_s)
        d = (c.c_x * (x - x_hat) / c.std).numpy()
        u = np.stack([ideal_sample(d[i], int(s), k).reshape(d[i].shape) for i, s in enumerate(seeds)])
        z = c.c_z * z + c.c_x * x_hat + c.std * torch.from_numpy(u)
        out.append(d)
    return out


def _block_kl_nats(d: np.ndarray, block: int) -> float:
    """Sum over ``block x block`` tiles of each colour channel of their optimal widened KL (one variance each)."""
    c, h, w = d.shape
    tiles = d.reshape(c, h // block, block, w // block, block).astype(np.float64) ** 2
    sq = tiles.sum(axis=(2, 4))
    n = block * block
    return float((0.5 * n * np.log1p(sq / n)).sum())


def chain_rates(codec: DiffcCodec, images: np.ndarray, prefixes: Sequence[int], block: int = 8) -> dict:
    """Mean ideal rate (bits per image) after each prefix: today's KL, the widened KL at the optimal ``s^2``
    and at the count-derived ``s^2``, and the per-block and per-dimension floors (module docstring)."""
    seeds = list(range(len(images)))
    targets = _chain_targets(codec, images, seeds)
    widened = dataclasses.replace(codec.config, prior_variance="count")
    per = {key: np.zeros((len(images), len(targets))) for key in ("kl", "optimal", "from_count", "block", "dim")}
    for k, d in enumerate(targets):
        for i in range(len(images)):
            di = d[i].astype(np.float64)
            n, sq = di.size, float((di * di).sum())
            per["kl"][i, k] = 0.5 * sq
            per["optimal"][i, k] = float(widened_kl_nats(sq, n, 1.0 + sq / n))
            count = num_chunks_for(per["optimal"][i, k] / LN2, widened)
            per["from_count"][i, k] = float(widened_kl_nats(sq, n, prior_s2(count, n, widened)))
            per["block"][i, k] = _block_kl_nats(d[i], block)
            per["dim"][i, k] = float((0.5 * np.log1p(di * di)).sum())
    rows = []
    for p in prefixes:
        row: dict = {"prefix": p}
        for key, v in per.items():
            row[key] = round(float(v[:, :p].sum(axis=1).mean() / LN2), 2)
        for key in ("optimal", "from_count", "block", "dim"):
            row[f"{key}_saving"] = round(1.0 - row[key] / row["kl"], 4)
        rows.append(row)
    last = per["kl"][:, -1] / LN2
    r_last = 2 * per["kl"][:, -1] / targets[-1][0].size
    return {
        "images": len(images),
        "step_kl_bits": [round(float(v), 1) for v in per["kl"].mean(axis=0) / LN2],
        "last_step_kl_bits": {"mean": round(float(last.mean()), 1), "max": round(float(last.max()), 1)},
        "last_step_r": {"mean": round(float(r_last.mean()), 4), "max": round(float(r_last.max()), 4)},
        "rows": rows,
    }


def widened_fidelity(
    config: CodecConfig, step_kls: Sequence[float], seeds: int, norm_gains: Sequence[float] = (1.0,)
) -> list[dict]:
    """Per profile step (:func:`.fidelity.profile_step`, 12,288 dimensions): the chunks of the default channel
    and of the widened prior at each norm-term weight ``norm_gains`` (stream version 2 both): chunk count,
    shift and variance of ``t`` along each chunk's target, variance across it (where only the widened prior
    can err: its candidates have ``s^2`` there), TV of ``t`` to N(0, 1)."""
    widened = dataclasses.replace(config, prior_variance="count")
    out = []
    rng = np.random.default_rng(0)
    for step_kl in step_kls:
        # the default channel never uses the norm term: its weight there is moot
        variants = [("default", config, 1.0)] + [(f"widened, norm gain {g}", widened, g) for g in norm_gains]
        for name, cfg, g in variants:
            t, across_sq, across_dims, counts = [], [], [], []
            for seed in range(seeds):
                d = profile_step(step_kl, seed)
                step = 1 + seed % 40
                count, indices, u = rcc_encode(d, seed, step, cfg, 2, norm_gain=g)
                if not np.array_equal(u, rcc_decode(count, indices, d.size, seed, step, cfg)):
                    raise AssertionError("the decoder regenerated another sample")
                layout = step_layout(d.size, count, seed, step, cfg)
                parts = chunk_projections(d, u, layout)
                t += parts["t"]
                across_sq += parts["across_sq"]
                across_dims += parts["dims"]
                counts.append(count)
            ta = np.array(t)
            out.append(
                {
                    "step_kl_bits": step_kl,
                    "variant": name,
                    "r": round(2 * step_kl * LN2 / d.size, 4),
                    "mean_count": round(float(np.mean(counts)), 2),
                    "chunks": len(ta),
                    "shift": round(float(ta.mean()), 3),
                    "var_along": round(float(ta.var()), 3),
                    "var_across": round(float(np.sum(across_sq) / np.sum(across_dims)), 4),
                    "tv": round(tv_to_normal(ta), 3),
                    "tv_floor": round(tv_to_normal(rng.standard_normal(len(ta))), 3),
                }
            )
    return out
