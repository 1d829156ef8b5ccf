"""DiffC's channel against theory and against the ideal channel: ``diffc bench gaussian-theory``,
``diffc bench channel-rd`` and ``diffc bench exact-tail``.

These look inside DiffC (its step loop, its channel coder), so they import ``codecs.diffc`` directly; they
are measurements of that codec, not of the pipeline.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from ..codecs.diffc.channel import LN2, ideal_sample, rcc_encode
from ..codecs.diffc.codec import DiffcCodec
from ..codecs.diffc.config import CodecConfig
from ..codecs.diffc.index_code import StepWriter
from ..codecs.diffc.reconstruct import denoise, reconstruct
from ..codecs.diffc.steps import step_coefficients
from ..codecs.tensors import to_float, to_uint8
from ..errors import InvalidInputError
from ..models.gaussian import GaussianModel

VAL_ROWS = slice(100, None)  # the images channel-rd and exact-tail measure: Tiny ImageNet val rows 100..


def val_images(data: str, n: int) -> np.ndarray:
    """``n`` 64x64 images from rows 100.. of the Tiny ImageNet val set at ``data`` (as earlier figures)."""
    from ..images import decode_image
    from ..training.data import load_encoded_images

    blobs = load_encoded_images(data, limit=VAL_ROWS.start + n)[VAL_ROWS]
    return np.stack([decode_image(b) for b in blobs])


def image_sets(data: str, images: int, tiles: str = "", tile_count: int = 8) -> dict[str, np.ndarray]:
    """The rate benches' image sets: ``images`` Tiny ImageNet val images (:func:`val_images`) and, with
    ``tiles`` (a folder of photos, e.g. CBSD68), ``tile_count`` 64x64 tiles of the 3x box-downsampled photos,
    a fixed-seed subset of all of them."""
    from ..evaluation.data import ImageSource, choose_subset, load_eval_images

    sets = {"tinyimagenet_val": val_images(data, images)}
    if tiles:
        found = {t.id: t.pixels for t in load_eval_images(ImageSource(tiles, downsample=3, tile=64))}
        sets["cbsd68_tiles"] = np.stack([found[i] for i in choose_subset(sorted(found), tile_count)])
    return sets


def gaussian_theory(steps: int, chunk_bits: int, candidate_log2: int, gain: float, lam: float = 4.0) -> dict:
    """Unit-variance Gaussian data (two 3x24x24 images) sent to log-SNR ``lam`` through the real channel:
    measured distortion of DiffC-A and DiffC-F over the paper's closed forms (2 s^2 and
    2 (1 - sqrt(1 - s^2))), the chain's KL per dimension against the exact discrete chain's, and coded bits."""
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    s2 = 1 / (1 + math.exp(lam))
    cfg = CodecConfig(
        num_steps=steps, logsnr_start=-5, logsnr_end=lam, chunk_bits=chunk_bits, candidate_log2=candidate_log2,
        target_gain=gain,
    )  # fmt: skip
    codec = DiffcCodec(GaussianModel.unit(), cfg)
    t = time.perf_counter()
    streams = codec.compress_float(x, [21, 22])
    encode_s = time.perf_counter() - t
    d_a = float(((codec.decompress_float(streams, method="ancestral", recon_steps=100) - x) ** 2).mean())
    d_f = float(((codec.decompress_float(streams, method="flow", recon_steps=60) - x) ** 2).mean())
    snr = torch.tensor(cfg.logsnrs()).exp()
    return {
        "config": dataclasses.asdict(cfg),
        "dA_over_theory": d_a / (2 * s2),
        "dF_over_theory": d_f / (2 * (1 - math.sqrt(1 - s2))),
        "kl_bits_per_dim": sum(sum(s.estimated_bits) for s in streams) / x.numel(),
        "exact_chain_bits_per_dim": float((0.5 * (snr[1:] - snr[:-1]) / (1 + snr[:-1])).sum()) / math.log(2),
        "continuous_bits_per_dim": 0.5 * math.log2(1 + math.exp(lam)),
        "coded_bits_per_dim": sum(s.prefix_bits() - 8 * len(s.header) for s in streams) / x.numel(),
        "encode_s": encode_s,
    }


def channel_config(base: CodecConfig, spec: str) -> CodecConfig:
    """``C:L:G[:M:W]`` -> ``base`` with chunk bits C, 2**L candidates, target gain G (and a pool of 2**M rows of
    width W)."""
    parts = spec.split(":")
    try:
        if len(parts) not in (3, 5):
            raise ValueError
        c, log2n, gain, *pool = parts
        extra = dict(pool_rows_log2=int(pool[0]), pool_width=int(pool[1])) if pool else {}
        values = dict(chunk_bits=int(c), candidate_log2=int(log2n), target_gain=float(gain), **extra)
    except ValueError:
        raise InvalidInputError(
            f"channel setting {spec!r}: expected CHUNK:LOG2N:GAIN or CHUNK:LOG2N:GAIN:POOL:WIDTH, e.g. 12:12:1.2"
        ) from None
    return dataclasses.replace(base, **values)


def tail_channel(base: CodecConfig, spec: str) -> tuple[int, CodecConfig | None]:
    """``M@ideal`` or ``M@C:L:G[:M:W]`` -> (M, the tail's channel setting; None: ideal)."""
    m, sep, channel = spec.partition("@")
    if not sep or not m.isdigit():
        raise InvalidInputError(f"tail {spec!r}: expected M@ideal or M@CHUNK:LOG2N:GAIN[:POOL:WIDTH], e.g. 4@ideal")
    return int(m), None if channel == "ideal" else channel_config(base, channel)


def exact_tail(codec: DiffcCodec, images: np.ndarray, specs: list[str]) -> list[dict]:
    """Where the real channel loses fidelity: code the last M steps with another channel (``M@ideal``: exact
    samples with their KL charged; ``M@C:L:G[:M:W]``: another channel setting) and report DiffC-F PSNR after
    the last step and the rate. ``0@ideal`` is the default real channel throughout.

    A stream whose steps use different channels has no format, so this drives the step loop itself.
    """
    from ..evaluation.metrics import psnr

    x = to_float(images)
    n = len(images)
    lam = torch.from_numpy(codec.config.logsnrs())  # float64, as the codec's own step loop
    out = []
    tails = [tail_channel(codec.config, spec) for spec in specs]  # a malformed one fails before any work
    for spec, (m, tail) in zip(specs, tails, strict=True):
        t0 = time.perf_counter()
        z, bits = _run_with_tail(codec, x, m, tail, lam)
        xr = to_uint8(
            reconstruct(codec.model, z, lam[-1].expand(n), "flow", codec.config.flow_steps,
                        list(range(n)), codec.logsnr_final)
        )  # fmt: skip
        out.append(
            {
                "tail": spec,
                "psnr_flow": float(np.mean([psnr(im, xr[i]) for i, im in enumerate(images)])),
                "bpp": bits / n / (images.shape[1] * images.shape[2]),
                "seconds": time.perf_counter() - t0,
            }
        )
    return out


def _run_with_tail(
    codec: DiffcCodec, x: torch.Tensor, m: int, tail: CodecConfig | None, lam: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Final latents and total bits over the batch, the last ``m`` steps through ``tail`` (None: ideal)."""
    n, steps = x.shape[0], codec.num_steps
    z = torch.from_numpy(np.stack([_start(i, x.shape[1:]) for i in range(n)]))
    writers, previous, bits = [StepWriter() for _ in range(n)], [0] * n, 0.0
    for k in range(1, steps + 1):
        in_tail = k > steps - m
        lam_t, lam_s = lam[k - 1].expand(n), lam[k].expand(n)
        x_hat = denoise(codec.model, z, lam_t)
        c = step_coefficients(lam_t, lam_s)
        d = (c.c_x * (x - x_hat) / c.std).numpy()
        u = np.empty_like(d)
        for i in range(n):
            if in_tail and tail is None:
                u[i] = ideal_sample(d[i], i, k).reshape(d[i].shape)
                bits += 0.5 * float((d[i].astype(np.float64) ** 2).sum()) / LN2
                continue
            cfg = tail if in_tail else codec.config
            count, indices, sample = rcc_encode(d[i], i, k, cfg)
            writers[i].write_count(count, previous[i])
            previous[i] = count
            writers[i].write_indices(indices, cfg.chunk_bits, cfg.candidate_log2, cfg.target_gain)
            u[i] = sample.reshape(d[i].shape)
        z = c.c_z * z + c.c_x * x_hat + c.std * torch.from_numpy(u)
    return z, bits + sum(w.bit_length() for w in writers)


def _start(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    from ..codecs.diffc import prng

    return prng.normals(seed, 0, prng.START, tuple(shape))


CHANNEL_RD_PREFIXES = (4, 8, 12, 16, 20, 24, 28, 32, 36, 40)
CHANNEL_RD_METHODS = ("flow", "denoise")


def channel_rd(
    model, images: np.ndarray, specs: list[str], stream_version: int | None = None, ancestral: bool = False
) -> list[dict]:
    """Real channel against the ideal one, end to end, per channel setting ``C:L:G[:M:W]``: one real encode +
    decode at prefixes 4, 8, ..., 40 and the same images through the ideal channel; per setting the BD-rate
    (PSNR) of the real channel against the ideal one over the whole overlap and from k = 24 (about 21 dB)
    up, the PSNR difference and the rate ratio at k = 40, for DiffC-F and the denoiser. Rates as ``diffc
    eval`` charges DiffC (chunk bytes + the shape bytes the stream header codes: 1 at 64x64 in stream version
    2, 4 in version 1). ``stream_version``: every setting in that version (default: 2 where its tables are
    shipped, else 1). ``ancestral``: DiffC-A too (every prefix, from the same encode), and DiffC-F minus
    DiffC-A at k = 40 for each setting and the ideal channel."""
    from ..evaluation.bdrate import bd_rate

    # every setting built (and so checked: its syntax, its ranges, its index tables) before the ideal run
    codecs = [DiffcCodec(model, channel_config(CodecConfig(), spec), stream_version=stream_version) for spec in specs]
    methods = CHANNEL_RD_METHODS + (("ancestral",) if ancestral else ())
    ideal, _ = _curves(DiffcCodec(model, CodecConfig(), channel="ideal"), images, methods)
    rows = []
    if ancestral:
        rows.append({"config": "ideal", "flow_minus_ancestral_k40": _flow_minus_ancestral(ideal)})
    for spec, codec in zip(specs, codecs, strict=True):
        real, seconds = _curves(codec, images, methods)
        row: dict = {"config": spec, "stream_version": codec.stream_version, "sweep_s": round(seconds, 1)}
        for m in methods:
            row[m] = {
                "bd_rate": round(bd_rate(*ideal[m], *real[m]).percent, 1),
                "bd_rate_k24_up": round(bd_rate(*_upper(ideal[m]), *_upper(real[m])).percent, 1),
                "dpsnr_k40": round(real[m][1][-1] - ideal[m][1][-1], 2),
                "rate_ratio_k40": round(real[m][0][-1] / ideal[m][0][-1], 3),
            }
        if ancestral:
            row["flow_minus_ancestral_k40"] = _flow_minus_ancestral(real)
        rows.append(row)
    return rows


def _flow_minus_ancestral(curves: dict) -> dict:
    """DiffC-F and DiffC-A (mean PSNR) after the last prefix, and their difference."""
    from .rate_breakdown import flow_minus_ancestral_row

    return flow_minus_ancestral_row(curves["flow"][1][-1], curves["ancestral"][1][-1])


def _curves(codec: DiffcCodec, images: np.ndarray, methods: tuple[str, ...]) -> tuple[dict, float]:
    from ..evaluation.metrics import psnr
    from ..evaluation.runner import prefix_rate

    t0 = time.perf_counter()
    res = codec.sweep(images, list(range(len(images))), CHANNEL_RD_PREFIXES, methods=methods)
    pixels = images.shape[1] * images.shape[2]
    out = {}
    for method in methods:
        rates, quality = [], []
        for k in CHANNEL_RD_PREFIXES:
            bits = [prefix_rate(codec, s, k, codec.channel, sum(s.estimated_bits[:k]))["bits"] for s in res.streams]
            rates.append(np.mean(bits) / pixels)
            quality.append(np.mean([psnr(im, res.recon[method][k][i]) for i, im in enumerate(images)]))
        out[method] = (rates, quality)
    return out, time.perf_counter() - t0


def _upper(curve: tuple[list, list]) -> tuple[list, list]:
    keep = [i for i, k in enumerate(CHANNEL_RD_PREFIXES) if k >= 24]
    return [curve[0][i] for i in keep], [curve[1][i] for i in keep]
