"""``diffc bench rate-breakdown``: where DiffC's bits go, per prefix, against the KL - and what stream version
2 changes, both versions encoded side by side from the same images in one run.

Per prefix ``k`` (mean bits per image): the KL of the first ``k`` steps (what an exact channel would charge),
the stream header's dataset-wide part (magic, version, flags, model and configuration ids, seed, CRC: the
manifest holds or derives all of them) and its per-image part (the shape), the chunk counts, the indices,
and the byte padding at the end of the prefix (chunks end on byte boundaries). The indices are split once
more: ``index_exact`` is what the indices would cost coded with the exact index law of each chunk's own KL
(``H(index | chunk KL)`` of ordered random coding with the channel's candidates and gain, simulated in one
dimension) - the part no index table can remove - and ``table_loss`` what the shipped tables spend on top.
``chunk_rounding`` is the share of ``index_exact - KL`` that comes from cutting each step into whole chunks
(``J`` chunks of ``K / J`` bits instead of ``K / C`` chunks of ``C`` bits each at ``H(C) - C`` redundancy).
The *stream* is what ``diffc eval`` charges an image: its shape plus its chunk bytes.

With ``--rd`` it also decodes every prefix (DiffC-F) for each version and for the ideal channel, and reports
the BD-rate (PSNR) of each real stream against the ideal one, over the whole range and from 20 dB up.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import cache

import numpy as np

from ..codecs.diffc.bitstream import Header
from ..codecs.diffc.channel import chunk_gains
from ..codecs.diffc.codec import DiffcCodec
from ..codecs.diffc.config import CodecConfig
from ..codecs.diffc.tables import orc_indices

PREFIXES = (4, 8, 16, 24, 32, 40)
_KL_GRID = np.arange(0.5, 16.01, 0.5)  # chunk KL (bits) where the exact index entropy is simulated


@cache
def exact_index_entropy(candidate_log2: int, gain: float, ramp: bool, trials: int = 4000) -> np.ndarray:
    """``H(index | KL = c)`` in bits of ordered random coding on :data:`_KL_GRID` (bucket entropy plus the
    offset bits, which is what a bucket code with exact tables spends; a 1/n law within a bucket is 0.03 bit
    from uniform). ``ramp``: the sender's gain follows version 2's ramp instead of being ``gain``."""
    config = CodecConfig(chunk_bits=min(12, candidate_log2), candidate_log2=candidate_log2, target_gain=gain)
    gains = chunk_gains(_KL_GRID, config) if ramp else np.full(len(_KL_GRID), gain)
    rng = np.random.default_rng(7)
    out = np.empty(len(_KL_GRID))
    for i, (c, g) in enumerate(zip(_KL_GRID, gains, strict=True)):
        idx = orc_indices(np.full(trials, c * np.log(2.0) * g**2), candidate_log2, rng)
        b = np.array([int(n).bit_length() for n in idx])
        p = np.bincount(b) / trials
        p = p[p > 0]
        out[i] = float(-(p * np.log2(p)).sum() + np.maximum(b - 1, 0).mean())
    return out


def _entropy_at(table: np.ndarray, kl_bits: np.ndarray) -> np.ndarray:
    grid, values = np.concatenate([[0.0], _KL_GRID]), np.concatenate([[0.0], table])
    return np.interp(np.minimum(kl_bits, _KL_GRID[-1]), grid, values)


def breakdown(
    codec: DiffcCodec, images: np.ndarray, prefixes: Sequence[int] = PREFIXES, entropy_trials: int = 4000
) -> dict:
    """Encode ``images`` (one size) with ``codec`` and break its bits down per prefix (module docstring);
    ``entropy_trials``: simulated chunks per grid point of the exact index entropy (4,000: +-0.03 bit)."""
    cfg = codec.config
    codec.step_log = []
    t0 = time.perf_counter()
    streams = codec.compress(images, list(range(len(images))))
    encode_s = time.perf_counter() - t0
    log = codec.step_log
    codec.step_log = None
    table = exact_index_entropy(cfg.candidate_log2, cfg.target_gain, codec.stream_version == 2, entropy_trials)
    full_redundancy = float(_entropy_at(table, np.array([cfg.chunk_bits]))[0]) - cfg.chunk_bits
    pixels = images.shape[1] * images.shape[2]
    rows = []
    for k in prefixes:
        acc: dict[str, list[float]] = {}
        for stream, steps in zip(streams, log, strict=True):
            head = Header.unpack(stream.header)
            part = steps[:k]
            chunk_kl = np.concatenate([s["chunk_kl_bits"] for s in part])
            exact = float(_entropy_at(table, chunk_kl).sum())
            kl = float(sum(s["kl_bits"] for s in part))
            payload = 8 * sum(len(c) for c in stream.chunks[:k])
            values = {
                "kl": kl,
                "header_fixed": 8 * len(stream.header) - head.shape_bits,
                "shape": head.shape_bits,
                "counts": sum(s["count_bits"] for s in part),
                "indices": sum(s["index_bits"] for s in part),
                "index_exact": exact,
                "chunk_rounding": exact - float(chunk_kl.sum()) - kl / cfg.chunk_bits * full_redundancy,
                "padding": payload - part[-1]["end_bits"],
                "chunks": sum(s["count"] for s in part),
                "stream": head.shape_bits + payload,
            }
            values["table_loss"] = values["indices"] - exact
            for key, v in values.items():
                acc.setdefault(key, []).append(float(v))
        row = {"prefix": k, **{key: round(float(np.mean(v)), 2) for key, v in acc.items()}}
        row["stream_over_kl"] = round(row["stream"] / row["kl"], 3)
        row["stream_bpp"] = round(row["stream"] / pixels, 4)
        row["kl_bpp"] = round(row["kl"] / pixels, 4)
        rows.append(row)
    return {
        "stream_version": codec.stream_version,
        "images": len(images),
        "size": f"{images.shape[1]}x{images.shape[2]}",
        "encode_s_per_image": round(encode_s / len(images), 3),
        # the codec's own timers, side by side in one process: what issue 6 bounds (channel <= 0.5x network)
        "channel_to_network": round(codec.timings["channel_s"] / max(1e-9, codec.timings["network_s"]), 3),
        "exact_redundancy_per_full_chunk": round(full_redundancy, 3),
        "rows": rows,
    }


def real_vs_ideal(
    model,
    images: np.ndarray,
    versions: Sequence[int],
    config: CodecConfig | None = None,
    prior_variance: str | None = None,
    ancestral_images: int = 0,
) -> dict:
    """DiffC-F at every 4th prefix for each stream version and for the ideal channel; BD-rate (PSNR) of each
    version's real stream (shape + chunks, as ``diffc eval`` charges) against the ideal rate (the KL).

    ``prior_variance``: also each version coded against that prior variance (``v2+count``) and the ideal rate
    against it (``ideal+count``: the ideal chain is the same - exact samples do not depend on the prior - so it
    takes the ideal curve's PSNR and its own KL); each is also compared with its default counterpart.
    ``ancestral_images``: DiffC-F minus DiffC-A at the last prefix on the first that many images, per channel."""
    from ..evaluation.bdrate import bd_rate
    from ..evaluation.metrics import psnr

    config = config or CodecConfig()
    prefixes = list(range(4, config.num_steps + 1, 4))
    seeds = list(range(len(images)))
    pixels = images.shape[1] * images.shape[2]
    codecs = [("ideal", DiffcCodec(model, config, channel="ideal"))]
    codecs += [(f"v{v}", DiffcCodec(model, config, stream_version=v)) for v in versions]
    if prior_variance is not None:
        widened = dataclasses.replace(config, prior_variance=prior_variance)
        codecs += [(f"v{v}+{prior_variance}", DiffcCodec(model, widened, stream_version=v)) for v in versions]
    curves = {}
    for name, codec in codecs:
        res = codec.sweep(images, seeds, prefixes, methods=("flow",))
        quality = [float(np.mean([psnr(im, res.recon["flow"][k][i]) for i, im in enumerate(images)])) for k in prefixes]
        curves[name] = {
            "bpp": _rates(name == "ideal", res.streams, prefixes, pixels),
            "psnr": [round(q, 2) for q in quality],
        }
    if prior_variance is not None:
        ideal_widened = DiffcCodec(model, widened, channel="ideal").compress(images, seeds)
        curves[f"ideal+{prior_variance}"] = {
            "bpp": _rates(True, ideal_widened, prefixes, pixels),
            "psnr": curves["ideal"]["psnr"],
        }
    out = {"prefixes": prefixes, "curves": curves, "bd_rate": {}}
    for name, c in curves.items():
        for ref in ["ideal"] + ([name.split("+")[0]] if "+" in name else []):
            if name == ref:
                continue
            r = curves[ref]
            whole = bd_rate(r["bpp"], r["psnr"], c["bpp"], c["psnr"])
            upper = bd_rate(r["bpp"], r["psnr"], c["bpp"], c["psnr"], min_quality=20.0)
            out["bd_rate"][name if ref == "ideal" else f"{name} vs {ref}"] = {
                "whole": None if whole is None else round(whole.percent, 1),
                "from_20db": None if upper is None else round(upper.percent, 1),
                "dpsnr_last": round(c["psnr"][-1] - r["psnr"][-1], 2),
            }
    if ancestral_images:
        out["flow_minus_ancestral"] = _flow_minus_ancestral(codecs, images[:ancestral_images], prefixes[-1])
    return out


def _rates(ideal: bool, streams: Sequence, prefixes: Sequence[int], pixels: int) -> list[float]:
    """Mean bpp after each prefix: the KL for the ideal channel, shape + chunk bytes for a real stream."""
    rates = []
    for k in prefixes:
        if ideal:
            bits = [sum(s.estimated_bits[:k]) for s in streams]
        else:
            bits = [s.parsed.shape_bits + 8 * sum(len(c) for c in s.chunks[:k]) for s in streams]
        rates.append(round(float(np.mean(bits)) / pixels, 4))
    return rates


def _flow_minus_ancestral(codecs: Sequence[tuple[str, DiffcCodec]], images: np.ndarray, k: int) -> dict:
    """Mean PSNR of DiffC-F and DiffC-A after ``k`` steps, and their difference, per codec."""
    from ..evaluation.metrics import psnr

    out = {}
    for name, codec in codecs:
        res = codec.sweep(images, list(range(len(images))), [k], methods=("flow", "ancestral"))
        q = {m: float(np.mean([psnr(im, res.recon[m][k][i]) for i, im in enumerate(images)])) for m in res.recon}
        out[name] = {"images": len(images), **flow_minus_ancestral_row(q["flow"], q["ancestral"])}
    return out


def flow_minus_ancestral_row(flow: float, ancestral: float) -> dict:
    """Mean PSNRs of DiffC-F and DiffC-A and their difference, as every benchmark reports them."""
    difference = round(flow - ancestral, 2)
    return {"flow": round(flow, 2), "ancestral": round(ancestral, 2), "flow_minus_ancestral": difference}
