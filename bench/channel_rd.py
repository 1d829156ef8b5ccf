"""Real channel against the ideal one, end to end, for several channel configurations.

    python bench/channel_rd.py N C:L:G[:M:W] [C:L:G[:M:W] ...]

N Tiny ImageNet val images (rows 100.. of the first val file, 64x64), the built-in model, 40 steps to log-SNR
4.5; for each configuration (chunk bits C, 2**L candidates, target gain G, optionally a pool of 2**M rows of
width W; its index table must exist, see ``python -m diffc_pipeline.codec.tables``) one real encode + decode
at prefixes 4, 8, ..., 40 and the same images through the ideal channel. Prints per configuration the BD-rate
(PSNR) of the real channel against the ideal one over the whole overlap and over the upper half of the
schedule (prefixes k >= 24, about 21 dB and up; rate: as `diffc eval` charges it, chunk bytes + 4 bytes of
image shape), the PSNR difference and the rate ratio at k=40, for DiffC-F and the denoiser.
"""

import dataclasses
import glob
import io
import json
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from diffc_pipeline.codec import CodecConfig, DiffcCodec
from diffc_pipeline.evaluation.bdrate import bd_rate
from diffc_pipeline.evaluation.metrics import psnr
from diffc_pipeline.evaluation.runner import prefix_rate
from diffc_pipeline.models import load_model

PREFIXES = [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
METHODS = ("flow", "denoise")


def load(n: int) -> np.ndarray:
    table = pq.read_table(sorted(glob.glob("../shared/data/tinyimagenet/val/*.parquet"))[0]).slice(100, n)
    cells = table.column("image").to_pylist()
    return np.stack(
        [np.asarray(Image.open(io.BytesIO(c["bytes"] if isinstance(c, dict) else c)).convert("RGB")) for c in cells]
    )


def curves(codec: DiffcCodec, imgs: np.ndarray) -> tuple[dict, float]:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    t0 = time.perf_counter()
    res = codec.sweep(x, list(range(len(imgs))), PREFIXES, methods=METHODS)
    out = {}
    for method in METHODS:
        rates, quality = [], []
        for k in PREFIXES:
            bits = np.mean([prefix_rate(s, k, codec.channel, sum(s.step_kl_bits[:k]))["bits"] for s in res.streams])
            rates.append(bits / (imgs.shape[1] * imgs.shape[2]))
            quality.append(
                np.mean([psnr(im, res.recon[method][k][i].permute(1, 2, 0).numpy()) for i, im in enumerate(imgs)])
            )
        out[method] = (rates, quality)
    return out, time.perf_counter() - t0


def _upper(curve: tuple[list, list]) -> tuple[list, list]:
    keep = [i for i, k in enumerate(PREFIXES) if k >= 24]
    return [curve[0][i] for i in keep], [curve[1][i] for i in keep]


def main(n: int, specs: list[str]) -> None:
    torch.set_num_threads(1)
    imgs, model = load(n), load_model("builtin")
    ideal, _ = curves(DiffcCodec(model, CodecConfig(), channel="ideal"), imgs)
    for spec in specs:
        c, log2n, gain, *pool = spec.split(":")
        config = CodecConfig(chunk_bits=int(c), candidate_log2=int(log2n), target_gain=float(gain))
        if pool:
            config = dataclasses.replace(config, pool_rows_log2=int(pool[0]), pool_width=int(pool[1]))
        real, seconds = curves(DiffcCodec(model, config), imgs)
        row = {"config": spec, "sweep_s": round(seconds, 1)}
        for m in METHODS:
            full = bd_rate(*ideal[m], *real[m])
            upper = bd_rate(*_upper(ideal[m]), *_upper(real[m]))
            row[m] = {
                "bd_rate": round(full.percent, 1),
                "bd_rate_k24_up": round(upper.percent, 1),
                "dpsnr_k40": round(real[m][1][-1] - ideal[m][1][-1], 2),
                "rate_ratio_k40": round(real[m][0][-1] / ideal[m][0][-1], 3),
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
