"""Build the shipped bucket tables of the index code (see :mod:`.index_code`).

The distribution of the chosen index (ordered random coding, see :mod:`.channel`) depends on the chunk's KL
only through the projection of the candidates on the target direction, so a 1-D simulation reproduces it
exactly. Chunk KLs are drawn around the budget (``ceil`` of the step KL over the budget gives chunks a little
under it, and a random partition spreads them), scaled by ``target_gain**2`` as the sender sees them.
The counts are stored as integers: both sides must build identical Huffman codes.

The tables are built by :mod:`diffc_pipeline.training.diffc_tables` (``python -m
diffc_pipeline.training.diffc_tables --help``; it fits the count tables on training images, which is why it
lives beside the trainer and not in the codec). They change the stream format, so ``TABLES_VERSION`` (hashed
into every stream) must be bumped when an existing table changes.

Stream version 2's tables (``tables/index_v2.json``; the stream version pins them, so they never change
within a version) are conditional: one bucket table per *chunk count* group of the step (1, 2, 3, 4-7, 8+
chunks), because the count tells the receiver where the chunk's KL lies - ``J`` chunks of a step of KL ``K``
in ``((J - 1) C, J C]`` hold about ``K / J`` bits each (measured on Tiny ImageNet train: chunks of one step
differ by 5% rms). A one-chunk step holds anything from a few bits to ``C``, so its table is the mixture over
the KL of one-chunk steps as the built-in model produces them (``one_chunk_kl``: a histogram in half-bit
bins, fitted with the counts; 4-12 bits on Tiny ImageNet, every bin of ``(0, C]`` keeps a count of one).
Each table is the exact law of the winning index of
ordered random coding for that mixture, with the sender's version-2 gain ramp
(:func:`~.channel.chunk_gains`), simulated in one dimension. The chunk-count tables (``counts``) are weights
of the centred count change per context, fitted on the chunk counts of real streams (the first 48 Tiny
ImageNet train images, built-in model, default configuration; fitted before the ``v2`` index tables, whose
one-chunk table uses their histogram).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TABLES_VERSION = 1
OUT = Path(__file__).with_name("tables") / "index_buckets.json"
OUT_V2 = Path(__file__).with_name("tables") / "index_v2.json"
# chunk-count groups of version 2's index tables: a step of J chunks uses the table of the largest group start
# <= J; the last group's counts are drawn log-uniform up to 128 (beyond, chunks sit just under C all the same)
COUNT_GROUPS = (1, 2, 3, 4, 8)
PARTITION_SPREAD = 0.05  # rms relative difference of chunk KLs within a step (measured, see above)
ONE_CHUNK_BIN = 0.5  # bits: the histogram of one-chunk steps' KL (``one_chunk_kl``) that group 1 mixes over


def simulate_indices(chunk_bits: int, candidate_log2: int, gain: float, trials: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kl_nats = chunk_bits * np.log(2.0) * np.clip(rng.lognormal(np.log(0.9), 0.3, trials), 0.05, 3.0)
    kl_nats = kl_nats * gain**2  # the sender scores against gain * d
    return orc_indices(kl_nats, candidate_log2, rng)


def orc_indices(scored_kl_nats: np.ndarray, candidate_log2: int, rng: np.random.Generator) -> np.ndarray:
    """Winning index of ordered random coding over ``2**candidate_log2`` candidates, one trial per entry of
    ``scored_kl_nats`` (the KL of the target the sender scores against, ``gain**2`` times the chunk's)."""
    n = 1 << candidate_log2
    kl_nats = np.asarray(scored_kl_nats, dtype=np.float64)
    trials = len(kl_nats)
    out = np.empty(trials, dtype=np.int64)
    block = max(1, (1 << 22) // n)
    for start in range(0, trials, block):
        k = min(block, trials - start)
        r = np.sqrt(2.0 * kl_nats[start : start + k])[:, None]
        u = rng.standard_normal((k, n))
        spacings = rng.exponential(size=(k, n)) / np.arange(n, 0, -1)
        log_t = np.log(np.cumsum(spacings, axis=1))  # sorted exponentials (ordered random coding), no sort
        out[start : start + k] = np.argmax(r * u - log_t, axis=1)
    return out


def table_key(chunk_bits: int, candidate_log2: int, gain: float) -> str:
    return f"{chunk_bits},{candidate_log2},{gain:.2f}"


def bucket_table(chunk_bits: int, candidate_log2: int, gain: float, trials: int = 20_000) -> list[int]:
    idx = simulate_indices(chunk_bits, candidate_log2, gain, trials)
    buckets = np.array([int(i).bit_length() for i in idx])
    counts = np.bincount(buckets, minlength=candidate_log2 + 1)
    return (counts + 1).astype(int).tolist()  # add-one: every bucket stays codable


def chunk_kl_draws(group: int, chunk_bits: int, trials: int, rng: np.random.Generator) -> np.ndarray:
    """Chunk KLs (bits) of steps whose chunk count falls in ``group`` (see the module docstring)."""
    if group == 1:
        weights = np.ones(int(np.ceil(chunk_bits / ONE_CHUNK_BIN)))  # every bin of (0, C] keeps some weight
        fitted = json.loads(OUT_V2.read_text()).get("one_chunk_kl", [])[: len(weights)]
        weights[: len(fitted)] += fitted
        bins = rng.choice(len(weights), size=trials, p=weights / weights.sum())
        return np.minimum((bins + rng.random(trials)) * ONE_CHUNK_BIN, chunk_bits)
    if group == COUNT_GROUPS[-1]:
        counts = np.floor(np.exp(rng.uniform(np.log(group), np.log(129), trials)))
    else:
        counts = rng.integers(group, COUNT_GROUPS[COUNT_GROUPS.index(group) + 1], trials).astype(np.float64)
    step_kl = chunk_bits * (counts - 1 + rng.random(trials))
    return step_kl / counts * np.exp(PARTITION_SPREAD * rng.standard_normal(trials))


def v2_bucket_tables(
    chunk_bits: int, candidate_log2: int, gain: float, trials: int, groups: tuple[int, ...] = COUNT_GROUPS
) -> dict[str, list[int]]:
    """Version 2's bucket tables for one channel setting: ``{str(group): counts}`` for ``groups`` (each group
    draws from its own seeded generator, so a group is reproduced alone)."""
    import dataclasses

    from .channel import chunk_gains
    from .config import CodecConfig

    config = dataclasses.replace(CodecConfig(), chunk_bits=chunk_bits, candidate_log2=candidate_log2, target_gain=gain)
    out = {}
    for group in groups:
        rng = np.random.default_rng(1000 + group)
        kl = chunk_kl_draws(group, chunk_bits, trials, rng)
        scored = kl * np.log(2.0) * chunk_gains(kl, config) ** 2
        idx = orc_indices(scored, candidate_log2, rng)
        buckets = np.array([int(i).bit_length() for i in idx])
        out[str(group)] = (np.bincount(buckets, minlength=candidate_log2 + 1) + 1).astype(int).tolist()
        print(f"  {chunk_bits},{candidate_log2},{gain:.2f} group {group}: {out[str(group)]}", flush=True)
    return out


def fit_count_weights(sequences: list[list[int]], drift_q: int, classes: int = 4) -> dict[str, list[int]]:
    """Version 2's count weights from real chunk-count sequences (one per image, step 1 first): per context
    (bit length of the previous count), ``4 * n + 1`` for each centred zig-zag change ``0..classes - 1`` and
    for the escape (everything larger), so that no class is ever impossible to code.

    Only the first-level symbol is fitted: an escape's remainder uses version 1's count code."""
    hist: dict[int, np.ndarray] = {}
    for seq in sequences:
        previous = 0
        for count in seq:
            v = count - previous - ((previous * drift_q + 128) >> 8)
            z = 2 * v if v >= 0 else -2 * v - 1
            h = hist.setdefault(min(previous.bit_length(), 12), np.zeros(classes + 1, dtype=np.int64))
            h[min(z, classes)] += 1
            previous = count
    # a context seen fewer than 20 times keeps the codec's wide default (index_code._WIDE_COUNT_WEIGHTS)
    return {str(c): (4 * h + 1).tolist() for c, h in sorted(hist.items()) if h.sum() >= 20}
