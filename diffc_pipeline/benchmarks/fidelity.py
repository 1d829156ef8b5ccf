"""``diffc bench channel-fidelity``: how far the reverse-channel coder's sample is from the exact ``N(d, I)``.

With finitely many candidates the chosen sample is not exact. Per chunk ``j`` (its dimensions, its target
``d_j``), with ``u_j`` the communicated sample and ``t_j = <u_j - d_j, d_j / |d_j|>`` (noise standard
deviations along the target; exact sampling: ``t ~ N(0, 1)``):

- ``shift``: mean of ``t`` (the selection's lag along ``d``; exact: 0);
- ``var_along``: variance of ``t`` (exact: 1);
- ``var_across``: per-dimension variance of ``u_j - d_j`` orthogonal to ``d_j`` (exact: 1);
- ``tv``: total variation between the law of ``t`` and ``N(0, 1)``, from a 40-bin histogram over the pooled
  chunks, with ``tv_floor`` the same estimator on as many exact ``N(0, 1)`` draws (its sampling noise). The
  TV of this 1-D projection is a lower bound on the chunk's TV: the other directions are exact only in law
  per dimension, and the winning candidate's law differs from ``N(d, I)`` only through its score, which is
  a function of ``t`` (and of the norm of the orthogonal part, whose law the selection barely moves).

The profile: 64x64x3 steps (12,288 dimensions) at the given KLs, ``d`` Gaussian times log-normal(0, 0.5)
per-dimension scales, each step coded with ``seeds`` seeds through :func:`~..codecs.diffc.channel.rcc_encode`
and checked against :func:`~..codecs.diffc.channel.rcc_decode`; one row per step KL, its chunks pooled.
Steps under ``chunk_bits`` are one chunk each (the early steps of every image, where stream version 2's
gain ramp acts); a 1,024-bit step is 86 chunks of ~11.9 bits (the bulk of a stream's chunks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..codecs.diffc.channel import LN2, StepLayout, rcc_decode, rcc_encode, step_layout
from ..codecs.diffc.config import CodecConfig

DIMS = 64 * 64 * 3
STEP_KL_BITS = (2, 4, 6, 8, 1024)


def profile_step(kl_bits: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    d = rng.standard_normal(DIMS) * rng.lognormal(0.0, 0.5, DIMS)
    return (d * np.sqrt(2 * kl_bits * LN2) / np.linalg.norm(d)).astype(np.float32)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.atleast_1d(x)])


def tv_to_normal(t: np.ndarray, bins: int = 40) -> float:
    """Histogram estimate of TV(law of ``t``, N(0, 1)) over [-5, 5] (mass outside counted in full)."""
    edges = np.linspace(-5.0, 5.0, bins + 1)
    observed = np.histogram(t, edges)[0] / len(t)
    expected = np.diff(_normal_cdf(edges))
    outside = np.mean(np.abs(t) > 5.0) + 2 * _normal_cdf(np.array([-5.0]))[0]
    return float(0.5 * (np.abs(observed - expected).sum() + outside))


def chunk_projections(d: np.ndarray, u: np.ndarray, layout: StepLayout) -> dict[str, list]:
    """Per chunk of one coded step: ``t`` (the error ``u - d`` along the chunk's target, in noise standard
    deviations), the chunk's KL in bits, the error's squared norm across the target and its dimensions."""
    out: dict[str, list] = {"t": [], "kl": [], "across_sq": [], "dims": []}
    for j in range(layout.num_chunks):
        rows = layout.seg_chunk == j
        dims = layout.seg_dims[rows][layout.seg_mask[rows]]
        dj, ej = d[dims].astype(np.float64), (u[dims] - d[dims]).astype(np.float64)
        unit = dj / np.linalg.norm(dj)
        along = float(ej @ unit)
        orth = ej - along * unit
        out["t"].append(along)
        out["kl"].append(0.5 * float(dj @ dj) / LN2)
        out["across_sq"].append(float(orth @ orth))
        out["dims"].append(len(dims) - 1)
    return out


def step_projections(config: CodecConfig, version: int, step_kl: float, seeds: int) -> dict:
    """:func:`chunk_projections` of every chunk of the profile step of ``step_kl`` bits over ``seeds`` seeds."""
    pooled: dict[str, list] = {"t": [], "kl": [], "across_sq": [], "dims": []}
    for seed in range(seeds):
        d = profile_step(step_kl, seed)
        step = 1 + seed % 40  # the pool and permutation of every schedule step get used
        count, indices, u = rcc_encode(d, seed, step, config, version)
        if not np.array_equal(u, rcc_decode(count, indices, d.size, seed, step, config)):
            raise AssertionError("the decoder regenerated another sample")
        for key, values in chunk_projections(d, u, step_layout(d.size, count, seed, step, config)).items():
            pooled[key] += values
    return {key: np.array(values) for key, values in pooled.items()}


def expected_chunk(chunk_kl_bits: float, candidate_log2: int, gain: float, trials: int) -> dict:
    """Computed (not through the codec): ordered random coding of one chunk of ``chunk_kl_bits`` with
    ``2**candidate_log2`` i.i.d. candidates scored against ``gain * d``, simulated in one dimension (the
    selection depends on a candidate only through its projection on ``d``): shift and variance of ``t``,
    its TV to N(0, 1), and the index entropy (buckets plus offset bits) over the KL - what a denser channel
    would deliver per chunk before anyone builds it."""
    rng = np.random.default_rng(1)
    n = 1 << candidate_log2
    r = math.sqrt(2.0 * chunk_kl_bits * LN2)
    t, buckets = np.empty(trials), np.empty(trials, dtype=np.int64)
    block = max(1, (1 << 22) // n)
    for start in range(0, trials, block):
        k = min(block, trials - start)
        u = rng.standard_normal((k, n))
        log_t = np.log(np.cumsum(rng.exponential(size=(k, n)) / np.arange(n, 0, -1), axis=1))
        win = np.argmax(gain * r * u - log_t, axis=1)
        t[start : start + k] = u[np.arange(k), win] - r
        buckets[start : start + k] = [int(i).bit_length() for i in win]
    p = np.bincount(buckets) / trials
    p = p[p > 0]
    bits = float(-(p * np.log2(p)).sum() + np.maximum(buckets - 1, 0).mean())
    return {
        "candidate_log2": candidate_log2,
        "gain": gain,
        "chunk_kl_bits": chunk_kl_bits,
        "trials": trials,
        "shift": round(float(t.mean()), 3),
        "var_along": round(float(t.var()), 3),
        "tv": round(tv_to_normal(t, bins=20), 3),
        "tv_floor": round(tv_to_normal(rng.standard_normal(trials), bins=20), 3),
        "index_bits_over_kl": round(bits / chunk_kl_bits, 3),
    }


def fidelity(config: CodecConfig, version: int, kl_steps: Sequence[float] = STEP_KL_BITS, seeds: int = 600) -> dict:
    """Shift, variances and TV of the chunks of each profile step, for one channel setting and version."""
    rng = np.random.default_rng(0)
    out = []
    for step_kl in kl_steps:
        p = step_projections(config, version, step_kl, seeds)
        t = p["t"]
        out.append(
            {
                "step_kl_bits": step_kl,
                "chunks": len(t),
                "mean_chunk_kl_bits": round(float(p["kl"].mean()), 2),
                "shift": round(float(t.mean()), 3),
                "var_along": round(float(t.var()), 3),
                "var_across": round(float(p["across_sq"].sum() / p["dims"].sum()), 3),
                "tv": round(tv_to_normal(t), 3),
                "tv_floor": round(tv_to_normal(rng.standard_normal(len(t))), 3),
            }
        )
    return {
        "chunk_bits": config.chunk_bits,
        "candidate_log2": config.candidate_log2,
        "target_gain": config.target_gain,
        "pool_rows_log2": config.pool_rows_log2,
        "stream_version": version,
        "seeds": seeds,
        "steps": out,
    }
