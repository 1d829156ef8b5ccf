"""Shared randomness: a counter-based PRNG keyed by (seed, step, purpose).

Sender and receiver draw the same candidates from the same keys, so a chosen candidate is named by its index
alone. NumPy's Philox is counter-based (no state carried between draws), the same on every platform, and
independent of torch's CPU/GPU generators, which differ from each other.
"""

from __future__ import annotations

import numpy as np

# purposes: which stream of a step a draw belongs to
START = 0  # z at t_0, drawn at zero bits
PERMUTE = 1  # assignment of dimensions to chunks
POOL = 2  # candidate pool
SEGMENTS = 3  # per-segment row maps and signs
ARRIVALS = 4  # PFR arrival times
ANCESTRAL = 5  # noise of ancestral reconstruction

_MASK64 = (1 << 64) - 1


def rng(seed: int, step: int, purpose: int) -> np.random.Generator:
    """An independent generator for ``(seed, step, purpose)``; ``seed`` is any 64-bit integer. The key is an
    explicit uint64 array: from a list NumPy made a seed of 2**63 or more a float64, rounding neighbouring
    seeds to one key (and 2**64 - 1 to 0). Seeds below 2**63, all the pipeline writes, draw as before."""
    key = np.array([seed & _MASK64, ((step & 0xFFFFFFFF) << 8) | purpose], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key))


def normals(seed: int, step: int, purpose: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng(seed, step, purpose).standard_normal(shape, dtype=np.float32)
