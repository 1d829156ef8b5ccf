"""Measure a CDC model with real streams: per rate index, real and estimated bpp, PSNR of the mean and the
diffusion decoders, prefix decodes, and the encode time of a full-size photo.

``python -m diffc_pipeline.codecs.cdc.evaluate --model builtin --images 100 --out cdc_eval.json``
``python -m diffc_pipeline.codecs.cdc.evaluate --images 0 --threads 2 --photo-rates 0,3,5`` (photo timing only)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ...images import decode_image
from .codec import CdcCodec, load_model
from .config import CdcOptions

TINY_VAL = "../shared/data/tinyimagenet/val/part-00000.parquet"
PHOTO = "../shared/data/cbsd68"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the per-image PSNR (dB)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def tiny_val(n: int, path: str = TINY_VAL) -> np.ndarray:
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["image"]).column("image")
    return np.stack([decode_image(col[i].as_py()) for i in range(n)])


def evaluate(
    model_spec: str,
    n: int,
    steps: int | None,
    batch: int,
    photo: str | None,
    photo_rates: list[int] | None = None,
) -> dict:
    """``steps`` None: the diffusion decoder's default; its other decode options are always the defaults."""
    model = load_model(model_spec)
    if steps is None:
        steps = CdcCodec.parse_decode_options({})["steps"]
    images = tiny_val(n) if n else np.zeros((0, 64, 64, 3), np.uint8)
    pixels = images.shape[1] * images.shape[2]
    rows = []
    for rate in range(model.cfg.rates if n else 0):
        c = CdcCodec(model, CdcOptions(rate=rate))
        enc, t0 = [], time.perf_counter()
        for i in range(0, n, batch):
            enc += c.compress(images[i : i + batch], list(range(i, min(n, i + batch))))
        t_enc = time.perf_counter() - t0
        payload = np.array([8 * sum(len(ch) for ch in e.chunks) for e in enc], dtype=np.float64)
        header = np.array([8 * len(e.header) for e in enc], dtype=np.float64)
        est = np.array([sum(e.estimated_bits) for e in enc])
        mean = np.concatenate([c.decompress(enc[i : i + batch], method="mean") for i in range(0, n, batch)])
        t0 = time.perf_counter()
        diff = np.concatenate([c.decompress(enc[i : i + batch], steps=steps) for i in range(0, n, batch)])
        t_dec = time.perf_counter() - t0
        prefixes = []
        for k in range(1, c.num_chunks + 1):
            pm = np.concatenate([c.decompress(enc[i : i + batch], prefix=k, method="mean") for i in range(0, n, batch)])
            bits = np.mean([8 * sum(len(ch) for ch in e.chunks[:k]) for e in enc])
            prefixes.append({"k": k, "bpp_payload": round(bits / pixels, 4), "psnr_mean": round(psnr(pm, images), 2)})
        rows.append(
            {
                "rate": rate,
                "lambda": model.cfg.lambdas[rate],
                "bpp_payload": round(payload.mean() / pixels, 4),
                "bpp_with_header": round((payload + header).mean() / pixels, 4),
                "bpp_estimate": round(est.mean() / pixels, 4),
                "real_over_estimate": round(payload.sum() / est.sum(), 4),
                "overhead_bytes_per_chunk": round((payload.sum() - est.sum()) / 8 / len(enc) / c.num_chunks, 3),
                "psnr_mean": round(psnr(mean, images), 2),
                f"psnr_diffusion_{steps}steps": round(psnr(diff, images), 2),
                "encode_s_per_image": round(t_enc / n, 4),
                "diffusion_decode_s_per_image": round(t_dec / n, 4),
                "prefixes": prefixes,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "model": {"name": model.name, "sha256": model.sha256},
        "images": f"first {n} of {TINY_VAL}",
        "steps": steps,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rates": rows,
    }
    if photo:
        p = sorted(Path(photo).glob("*.png"))[0] if Path(photo).is_dir() else Path(photo)
        img = decode_image(p.read_bytes())[None]
        out["photo"] = []
        for rate in photo_rates if photo_rates is not None else [model.cfg.rates // 2]:
            c = CdcCodec(model, CdcOptions(rate=rate))
            c.compress(img, [0])  # warm-up
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                e = c.compress(img, [0])[0]
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rec = c.decompress([e], method="mean")
            t_mean = time.perf_counter() - t0
            t0 = time.perf_counter()
            c.decompress([e], steps=steps)
            t_diff = time.perf_counter() - t0
            row = {
                "file": str(p),
                "size": list(img.shape[1:3]),
                "rate": rate,
                "encode_s_best_of_3": round(min(times), 3),
                "decode_mean_s": round(t_mean, 3),
                f"decode_diffusion_{steps}steps_s": round(t_diff, 3),
                "bpp_with_header": round(e.prefix_bits() / (img.shape[1] * img.shape[2]), 4),
                "psnr_mean": round(psnr(rec, img), 2),
            }
            out["photo"].append(row)
            print(json.dumps(row), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffc_pipeline.codecs.cdc.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="diffusion decoder steps (default: the codec's)")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--photo", default=PHOTO, help="CBSD68 folder or one photo for the encode-time measure ('' none)")
    p.add_argument("--photo-rates", default=None, help="comma-separated rate indices for the photo timing")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rates = [int(r) for r in a.photo_rates.split(",")] if a.photo_rates else None
    res = evaluate(a.model, a.images, a.steps, a.batch, a.photo or None, rates)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
