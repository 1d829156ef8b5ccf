"""DiffC on unit-variance Gaussian data with the real channel vs the paper's closed forms.

    python bench/gaussian_theory.py STEPS CHUNK_BITS CANDIDATE_LOG2 TARGET_GAIN

Two 3x24x24 images are sent to log-SNR 4; prints measured / theoretical distortion of DiffC-A (2 s^2) and
DiffC-F (2 (1 - sqrt(1 - s^2))), the chain's KL per dimension against the exact discrete chain's, and the
coded bits per dimension.
"""

import math
import sys
import time

import torch

from diffc_pipeline.codec import CodecConfig, DiffcCodec
from diffc_pipeline.models.gaussian import GaussianModel


def main(steps: int, chunk_bits: int, log2n: int, gain: float, lam: float = 4.0) -> None:
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    s2 = 1 / (1 + math.exp(lam))
    cfg = CodecConfig(num_steps=steps, logsnr_start=-5, logsnr_end=lam, chunk_bits=chunk_bits,
                      candidate_log2=log2n, target_gain=gain)
    codec = DiffcCodec(GaussianModel.unit(), cfg)
    t = time.perf_counter()
    streams = codec.compress_float(x, [21, 22])
    enc = time.perf_counter() - t
    d_a = float(((codec.decompress_float(streams, method="ancestral", recon_steps=100) - x) ** 2).mean())
    d_f = float(((codec.decompress_float(streams, method="flow", recon_steps=60) - x) ** 2).mean())
    kl = sum(sum(s.step_kl_bits) for s in streams) / x.numel()
    bits = 8 * sum(sum(len(c) for c in s.chunks) for s in streams) / x.numel()
    snr = torch.tensor(cfg.logsnrs()).exp()
    exact = float((0.5 * (snr[1:] - snr[:-1]) / (1 + snr[:-1])).sum()) / math.log(2)
    print(f"K={steps} C={chunk_bits} L={log2n} gain={gain}: D_A/theory {d_a / (2 * s2):.3f} "
          f"D_F/theory {d_f / (2 * (1 - math.sqrt(1 - s2))):.3f} KL/dim {kl:.3f} (exact chain {exact:.3f}, "
          f"continuous {0.5 * math.log2(1 + math.exp(lam)):.3f}) coded bits/dim {bits:.3f} encode {enc:.1f}s")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
