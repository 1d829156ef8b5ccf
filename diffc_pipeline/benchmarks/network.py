"""The network's time per megapixel per call, and the memory and fidelity of its tiled evaluation.

``diffc bench network``: the variants of one measurement run interleaved (round-robin, minimum of the
repeats), so a busy machine slows them alike and their ratio stays meaningful. Memory is measured in a
fresh process per case (peak RSS only ever rises within a process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence

import torch

from ..models import load_model
from ..models.base import alpha_sigma
from ..models.tiling import Tiling

# (memory layout, autocast dtype or None) of each timed variant; "contiguous" float32 is the network as shipped
VARIANTS = {
    "contiguous": (torch.contiguous_format, None),
    "channels_last": (torch.channels_last, None),
    "bfloat16": (torch.contiguous_format, torch.bfloat16),
    "bfloat16_channels_last": (torch.channels_last, torch.bfloat16),
}


def time_variants(
    model_spec: str, cases: Sequence[tuple[int, int, int]], threads: Sequence[int], repeats: int
) -> list:
    """ms per megapixel per call for each ``(batch, height, width)`` and thread count, for each of
    :data:`VARIANTS` (memory layout x float32 / bfloat16 autocast, the codec's ``network_precision``),
    interleaved; speed-ups against the contiguous float32 network."""
    net = load_model(model_spec).net
    rows = []
    with torch.inference_mode():
        for batch, height, width in cases:
            x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
            lam = torch.full((batch,), 2.0)
            mp = batch * height * width / 1e6
            for n in threads:
                torch.set_num_threads(n)
                best = dict.fromkeys(VARIANTS, float("inf"))
                for _ in range(repeats + 1):  # the first round warms up and is not counted
                    for name, (fmt, dtype) in VARIANTS.items():
                        net.to(memory_format=fmt)
                        xin = x.contiguous(memory_format=fmt)
                        t = time.perf_counter()
                        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                            net(xin, lam)
                        best[name] = min(best[name], time.perf_counter() - t)
                net.to(memory_format=torch.contiguous_format)
                rows.append(
                    {
                        "batch": batch,
                        "height": height,
                        "width": width,
                        "threads": n,
                        **{f"{k}_ms_per_mp": round(v * 1000 / mp, 1) for k, v in best.items()},
                        **{
                            f"{k}_speedup": round(best["contiguous"] / v, 3)
                            for k, v in best.items()
                            if k != "contiguous"
                        },
                    }
                )
    return rows


def tiling_fidelity(model_spec: str, image, tiling: Tiling, logsnrs: Sequence[float]) -> list[dict]:
    """The denoiser's MSE against the clean image, tiled on ``tiling`` vs untiled, at each log-SNR.

    ``image``: (H, W, 3) uint8 with H, W multiples of the model's pad multiple.
    """
    model = load_model(model_spec)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    rows = []
    for lam in logsnrs:
        logsnr = torch.tensor([float(lam)])
        a, s = alpha_sigma(-logsnr)
        z = a * x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        out = {}
        for name, t in (("untiled", Tiling(above=10**12)), ("tiled", tiling)):
            model.tiling = t
            start = time.perf_counter()
            eps = model.predict_eps(z, logsnr)
            x_hat = ((z - s * eps) / a).clamp(-1, 1)
            out[f"{name}_mse"] = float(((x_hat - x) / 2).pow(2).mean())
            out[f"{name}_s"] = round(time.perf_counter() - start, 2)
        rows.append({"logsnr": float(lam), "windows": len(tiling.windows(*x.shape[2:])), **out})
    return rows


_PEAK_SCRIPT = """
import json, resource, sys, torch
from diffc_pipeline.models import load_model
from diffc_pipeline.models.tiling import Tiling
spec, side, tiled, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
torch.set_num_threads(threads)
model = load_model(spec)
if not tiled:
    model.tiling = Tiling(above=10**12)
z = torch.randn(1, 3, side, side)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.predict_eps(z, torch.tensor([0.0]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_gb": before / 1e6, "peak_gb": after / 1e6}))
"""


def peak_memory(model_spec: str, side: int, tiled: bool, threads: int = 1) -> dict:
    """Peak RSS of a fresh process that makes one network call on a ``side`` x ``side`` input."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, model_spec, str(side), "1" if tiled else "0", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {"side": side, "megapixels": round(side * side / 1e6, 2), "tiled": tiled, **json.loads(out.stdout)}
