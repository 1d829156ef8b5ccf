"""Where the real channel loses fidelity: the last steps before the decoded prefix.

    python bench/exact_tail.py N M@CHANNEL [M@CHANNEL ...]

Encodes N Tiny ImageNet val images (the images of ``bench/channel_rd.py``) with the default codec and the
built-in model, but codes the last M of the 40 steps with another channel: ``ideal`` (exact samples, the KL
charged) or ``C:L:G[:M:W]`` (chunk bits, log2 candidates, gain, optionally log2 pool rows and width, as in
``channel_rd.py``). Prints DiffC-F PSNR at the last step and the rate (coded bits, plus the KL of ideal
steps) per configuration. ``0@ideal`` is the default real channel throughout.

This is an experiment on the codec's internals (a stream whose steps use different channels has no format),
so it drives the step loop itself rather than ``DiffcCodec.compress``.
"""

import dataclasses
import sys
import time

import numpy as np
import torch
from channel_rd import load

from diffc_pipeline.codec import CodecConfig, DiffcCodec
from diffc_pipeline.codec.channel import LN2, ideal_sample, rcc_encode
from diffc_pipeline.codec.codec import float_to_uint8, uint8_to_float
from diffc_pipeline.codec.index_code import StepWriter
from diffc_pipeline.codec.reconstruct import denoise, reconstruct
from diffc_pipeline.codec.steps import step_coefficients
from diffc_pipeline.evaluation.metrics import psnr
from diffc_pipeline.models import load_model


def tail_config(base: CodecConfig, channel: str) -> CodecConfig | None:
    if channel == "ideal":
        return None
    c, log2n, gain, *pool = channel.split(":")
    extra = dict(pool_rows_log2=int(pool[0]), pool_width=int(pool[1])) if pool else {}
    return dataclasses.replace(base, chunk_bits=int(c), candidate_log2=int(log2n), target_gain=float(gain), **extra)


def run(codec: DiffcCodec, x: torch.Tensor, m: int, tail: CodecConfig | None) -> tuple[torch.Tensor, float]:
    """Final latents and total bits over the batch, the last ``m`` steps through ``tail`` (None: ideal)."""
    n, steps = x.shape[0], codec.num_steps
    z = codec._start(range(n), x.shape[1:])
    writers, previous, bits = [StepWriter() for _ in range(n)], [0] * n, 0.0
    for k in range(1, steps + 1):
        in_tail = k > steps - m
        lam_t, lam_s = codec._logsnrs[k - 1].expand(n), codec._logsnrs[k].expand(n)
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


def main(n: int, specs: list[str]) -> None:
    torch.set_num_threads(1)
    imgs = load(n)
    codec = DiffcCodec(load_model("builtin"), CodecConfig())
    x = uint8_to_float(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), 3)
    lam = codec._logsnrs[codec.num_steps].expand(n)
    for spec in specs:
        m, channel = spec.split("@")
        t0 = time.perf_counter()
        z, bits = run(codec, x, int(m), tail_config(codec.config, channel))
        xr = float_to_uint8(
            reconstruct(codec.model, z, lam, "flow", codec.config.flow_steps, list(range(n)), codec.logsnr_final)
        )
        quality = np.mean([psnr(im, xr[i].permute(1, 2, 0).numpy()) for i, im in enumerate(imgs)])
        bpp = bits / n / (imgs.shape[1] * imgs.shape[2])
        print(f"last {spec:20s}: DiffC-F {quality:.2f} dB at {bpp:.3f} bpp ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
