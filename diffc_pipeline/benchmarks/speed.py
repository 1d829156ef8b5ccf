"""``diffc bench speed``: encode and decode throughput of the codec, and where encode time goes.

One in-process codec, no Ray (the pipeline's own overhead is ``diffc bench pipeline``). Encoding is timed
per batch with the codec's own timers, which split each step into the network call and the channel coder;
decoding is timed per reconstruction method: ``denoise`` is the chain of decoded steps plus one network
call, ``flow`` adds the probability-flow ODE on top.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..codec import CodecConfig, DiffcCodec


def measure_speed(
    model, config: CodecConfig, images: torch.Tensor, batch_size: int, methods: Sequence[str] = ("flow", "denoise")
) -> dict:
    """Images/s to encode and to decode ``images`` (uint8, one size) at the full stream, in batches."""
    codec = DiffcCodec(model, config)
    codec.compress(images[:1, :, :16, :16], [0])  # warm-up on a crop: tables, allocator, first-call costs
    n = len(images)
    streams, network_s, channel_s = [], 0.0, 0.0
    t0 = time.perf_counter()
    for lo in range(0, n, batch_size):
        streams += codec.compress(images[lo : lo + batch_size], list(range(lo, min(n, lo + batch_size))))
        network_s += codec.timings["network_s"]
        channel_s += codec.timings["channel_s"]
    encode_s = time.perf_counter() - t0
    decode_s = {}
    for method in methods:
        t0 = time.perf_counter()
        for lo in range(0, n, batch_size):
            codec.decompress(streams[lo : lo + batch_size], method=method)
        decode_s[method] = time.perf_counter() - t0
    pixels = n * images.shape[2] * images.shape[3]
    return {
        "size": f"{images.shape[2]}x{images.shape[3]}",
        "images": n,
        "batch": min(batch_size, n),
        "bpp": round(8 * sum(len(s.to_bytes()) for s in streams) / pixels, 4),
        "encode_img_per_s": round(n / encode_s, 4),
        "encode_s_per_image": round(encode_s / n, 3),
        "encode_network_share": round(network_s / encode_s, 3),
        "encode_channel_share": round(channel_s / encode_s, 3),
        "decode_img_per_s": {m: round(n / s, 4) for m, s in decode_s.items()},
        "decode_s_per_image": {m: round(s / n, 3) for m, s in decode_s.items()},
    }
