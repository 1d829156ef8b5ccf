"""``diffc bench speed``: encode and decode throughput of any registered codec, and where DiffC's time goes.

One in-process codec, no Ray (the pipeline's own overhead is ``diffc bench pipeline``). Decoding is timed
per value of the codec's ``method`` decode option where it has one (DiffC: ``denoise`` is the chain of
decoded steps plus one network call, ``flow`` adds the probability-flow ODE; CDC: ``mean`` is one pass,
``diffusion`` a few sampler steps). Codecs that keep per-call timers (DiffC's network vs channel coder split)
report those shares too.
"""

from __future__ import annotations

import time

import numpy as np

from ..codecs import Codec


def measure_speed(codec: Codec, images: np.ndarray, batch_size: int, methods: tuple[str, ...] | None = None) -> dict:
    """Images/s to encode and to decode ``images`` (uint8 ``(N, H, W, 3)``, one size) at the full stream."""
    codec.compress(images[:1, :16, :16], [0])  # warm-up on a crop: tables, allocator, first-call costs
    if methods is None:
        method = next((o for o in codec.decode_options if o.name == "method"), None)
        methods = tuple(method.choices) if method is not None and method.choices else ()
    n = len(images)
    streams, shares = [], {"network_s": 0.0, "channel_s": 0.0}
    t0 = time.perf_counter()
    for lo in range(0, n, batch_size):
        streams += codec.compress(images[lo : lo + batch_size], list(range(lo, min(n, lo + batch_size))))
        for key in shares:
            shares[key] += getattr(codec, "timings", {}).get(key, 0.0)
    encode_s = time.perf_counter() - t0
    decode_s = {}
    for method in methods or ("",):
        options = {"method": method} if method else {}
        t0 = time.perf_counter()
        for lo in range(0, n, batch_size):
            codec.decompress(streams[lo : lo + batch_size], **options)
        decode_s[method or "default"] = time.perf_counter() - t0
    pixels = n * images.shape[1] * images.shape[2]
    result = {
        "codec": codec.name,
        "size": f"{images.shape[1]}x{images.shape[2]}",
        "images": n,
        "batch": min(batch_size, n),
        "bpp": round(sum(s.prefix_bits() for s in streams) / pixels, 4),
        "encode_img_per_s": round(n / encode_s, 4),
        "encode_s_per_image": round(encode_s / n, 4),
        "decode_img_per_s": {m: round(n / s, 4) for m, s in decode_s.items()},
        "decode_s_per_image": {m: round(s / n, 4) for m, s in decode_s.items()},
    }
    if shares["network_s"]:
        result["encode_network_share"] = round(shares["network_s"] / encode_s, 3)
        result["encode_channel_share"] = round(shares["channel_s"] / encode_s, 3)
    return result
