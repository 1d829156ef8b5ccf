"""``diffc bench rcc``: cost, rate overhead and sample fidelity of the reverse-channel coder.

Profile (stated in the output): one 64x64x3 step (D = 12,288 dimensions) at step KLs of 16, 64, 256, 1024 and
3072 bits; ``d`` has Gaussian entries with per-dimension scales drawn log-normal(0, 0.5) (image residuals are
heavy-tailed), renormalised to the step KL. Each configuration codes every profile step with ``repeats``
seeds. Fidelity is measured per chunk: the chosen sample's projection on ``d_j`` over ``|d_j|`` (exact
sampling: mean 1), the variance of that projection around ``shift * |d_j|`` (exact: 1) and the per-dimension
variance orthogonal to ``d_j`` (exact: 1).

Speed is measured on a real encode of 64x64 images with a real model in the same run: the codec's own
timers split each step into network time and channel time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..codecs.diffc.channel import LN2, rcc_decode, rcc_encode, step_layout
from ..codecs.diffc.codec import DiffcCodec
from ..codecs.diffc.config import CodecConfig
from ..codecs.diffc.index_code import StepWriter

PROFILE_KL_BITS = (16, 64, 256, 1024, 3072)
DIMS = 64 * 64 * 3


@dataclass
class ChannelStats:
    kl_bits: float = 0.0
    coded_bits: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0


def profile_targets(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for kl in PROFILE_KL_BITS:
        d = rng.standard_normal(DIMS) * rng.lognormal(0.0, 0.5, DIMS)
        out.append((d * np.sqrt(2 * kl * LN2) / np.linalg.norm(d)).astype(np.float32))
    return out


def measure_channel(config: CodecConfig, repeats: int = 2) -> dict:
    """Rate overhead and fidelity of the channel alone over the profile."""
    stats = ChannelStats()
    shifts, along, orth_sq, orth_dims = [], [], 0.0, 0
    for rep in range(repeats):
        for step, d in enumerate(profile_targets(), start=1):
            seed = 1000 + rep
            t0 = time.perf_counter()
            count, indices, u = rcc_encode(d, seed, step, config)
            t1 = time.perf_counter()
            u2 = rcc_decode(count, indices, d.size, seed, step, config)
            stats.decode_s += time.perf_counter() - t1
            stats.encode_s += t1 - t0
            if not np.array_equal(u, u2):
                raise AssertionError("decoder regenerated a different sample")
            writer = StepWriter()
            writer.write_count(count, 0)
            writer.write_indices(indices, config.chunk_bits, config.candidate_log2, config.target_gain)
            stats.coded_bits += writer.bit_length()
            stats.kl_bits += 0.5 * float(d.astype(np.float64) @ d) / LN2
            stats.steps += 1
            layout = step_layout(d.size, count, seed, step, config)
            for j in range(count):
                dims = layout.seg_dims[layout.seg_chunk == j][layout.seg_mask[layout.seg_chunk == j]]
                dj, uj = d[dims].astype(np.float64), u[dims].astype(np.float64)
                norm = np.linalg.norm(dj)
                proj = float(uj @ dj) / norm
                shifts.append(proj / norm)
                along.append((proj, norm))
                orth = uj - proj * dj / norm
                orth_sq += float(orth @ orth)
                orth_dims += len(dims) - 1
    shift = float(np.mean(shifts))
    var_along = float(np.mean([(p - shift * n) ** 2 for p, n in along]))
    return {
        "chunk_bits": config.chunk_bits,
        "candidate_log2": config.candidate_log2,
        "kl_bits": round(stats.kl_bits, 1),
        "coded_bits": int(stats.coded_bits),
        "overhead_ratio": round(stats.coded_bits / stats.kl_bits, 4),
        "mean_shift_ratio": round(shift, 4),
        "var_ratio": round(var_along, 4),
        "orth_var_ratio": round(orth_sq / max(1, orth_dims), 4),
        "chunks": len(shifts),
        "encode_s": round(stats.encode_s, 3),
        "decode_s": round(stats.decode_s, 3),
        "encode_s_per_step": round(stats.encode_s / stats.steps, 4),
    }


def measure_codec_speed(model, config: CodecConfig, images: np.ndarray) -> dict:
    """Network vs channel time per 64x64 image and step, from one real encode of ``images``."""
    codec = DiffcCodec(model, config)
    codec.compress(images[:2], [0, 1])  # warm-up: tables, trees, allocator
    t0 = time.perf_counter()
    streams = codec.compress(images, list(range(len(images))))
    wall = time.perf_counter() - t0
    per = len(images) * config.num_steps
    bits = sum(s.prefix_bits() - 8 * len(s.header) for s in streams)
    kl = sum(sum(s.estimated_bits) for s in streams)
    pixels = images.shape[0] * images.shape[1] * images.shape[2]
    return {
        "images": len(images),
        "size": f"{images.shape[1]}x{images.shape[2]}",
        "batch": len(images),
        "num_steps": config.num_steps,
        "network_s_per_step": round(codec.timings["network_s"] / per, 5),
        "rcc_s_per_step": round(codec.timings["channel_s"] / per, 5),
        "rcc_to_network": round(codec.timings["channel_s"] / max(1e-9, codec.timings["network_s"]), 3),
        "encode_s_per_image": round(wall / len(images), 4),
        "bpp_payload": round(bits / pixels, 4),
        "kl_bpp": round(kl / pixels, 4),
        "coded_over_kl": round(bits / kl, 4),
    }
