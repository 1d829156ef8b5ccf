"""Reverse-channel coding of one diffusion step: a sample of ``N(d, I)`` communicated against ``N(0, I)``.

**What the channel delivers** (``diffc bench channel-fidelity``, 2026-12-01; 12,288-dimension steps, ``d``
Gaussian times log-normal(0, 0.5) scales, 600 seeds per step; ``t`` = the sample's error along ``d_j`` in
noise standard deviations, exact sampling: ``t ~ N(0, 1)``). The sample is **not exact**: with ``2**12``
candidates per chunk the selection lags along each chunk's ``d_j``. Default setting (12-bit chunks, ``2**12``
candidates, gain 1.2), stream version 2:

============================  =====  ==========  ===========  ==========================
chunks of a step of           shift  var along   var across   TV of ``t`` (noise floor)
============================  =====  ==========  ===========  ==========================
2 bits (one chunk)            +0.01  1.02        1.00         0.08 (0.07)
4 bits (one chunk)            +0.04  0.89        1.00         0.08 (0.07)
6 bits (one chunk)            +0.04  0.61        1.00         0.14 (0.07)
8 bits (one chunk)            -0.17  0.45        1.00         0.22 (0.07)
1,024 bits (86 chunks, 11.9)  -0.70  0.45        1.00         0.36 (0.01)
============================  =====  ==========  ===========  ==========================

Orthogonal to ``d_j`` the sample is exact in variance; along it, full chunks (the bulk of every stream)
undershoot by 0.70 noise standard deviations with less than half the variance, and the 1-D TV, a lower
bound on the chunk's, is 0.36. Only chunks of a few bits (the first steps of an image) are close to exact:
at 2 bits the measured TV is at the estimator's noise floor. Version 1 (gain 1.2 on every chunk) overshoots
those: shift +0.35 / +0.31 / +0.09 at 2 / 4 / 6 bits (TV 0.16-0.17). More candidates are what buys exactness
(``docs/benchmarks.md``).

After normalising by the step's standard deviation, the sender must communicate a sample ``u ~ N(d, I)``
(``d`` = scaled ``x - x_hat``) using the prior ``N(0, I)`` the receiver also knows; ``KL = |d|^2 / 2`` nats.
A whole step carries hundreds to thousands of bits, far beyond any one-shot sampler, so:

1. **Chunks.** The dimensions are shuffled by a permutation drawn from the shared seed and cut into
   ``J = ceil(KL / chunk_bits)`` near-equal contiguous groups; ``J`` is the only per-step integer sent.
2. **Ordered random coding per chunk** (Theis & Yosri 2022; PFR of Li & El Gamal 2018 with finitely many
   candidates): candidates ``c_n ~ N(0, I)`` paired with sorted exponential times ``T_n``; the sender picks
   ``argmin_n log T_n - <c_n, d_j>`` over ``N = 2**candidate_log2`` candidates and sends the index. The
   receiver regenerates ``c_n`` from the index.
3. **Shared candidate pool.** Drawing ``N x D`` fresh normals per step would cost seconds; instead every
   candidate is assembled from rows of one pool ``P`` of ``N x w`` normals, drawn once per step for all
   images (the per-image randomness is in the row maps and signs): segment ``g`` of candidate ``n``
   is ``sign_g * P[(a_g n + b_g) mod N]`` with a per-segment odd multiplier ``a_g``, offset ``b_g`` and
   random signs. Each chunk's candidates are marginally i.i.d. ``N(0, I)`` (a bijective row map and a sign
   flip preserve the distribution), so each chunk's sample keeps PFR's guarantees, and scoring all chunks is
   one matrix product ``P @ [sign_g * d_g]`` plus a gather.

   **Fewer rows than candidates** (``pool_rows_log2 < candidate_log2``): segment ``g`` of candidate ``n``
   takes row ``((a_g n + b_g) mod N) >> shift`` of a pool of ``M = N >> shift`` rows, and every chunk spans
   at least two segments, so candidates are distinct combinations of rows. Each candidate is still
   marginally ``N(0, I)``; two candidates share a segment's row with probability ``1/M``, which couples their
   scores only through that segment. The matrix product shrinks to ``M`` rows and candidates cost one gather
   per segment: 2**16 candidates from a 2**12-row pool score ~3x faster than 2**16 rows. A 1-D simulation of
   one 11-bit chunk (600 trials) gave the same selected-sample bias as i.i.d. candidates: -0.37 vs -0.34
   noise standard deviations along ``d`` at 2**16 candidates, -0.15 vs -0.10 at 2**20 (-0.74 at 2**12).

4. **Target gain.** With finitely many candidates the selection undershoots: the chosen sample's projection
   on ``d`` averages ~0.93 ``|d|`` (8-bit chunks, 2**14 candidates). The lag compounds along the chain, and the
   last ``z`` carries ~18% excess noise, which the flow reconstruction turns into ~18% excess distortion. The
   sender therefore scores candidates against ``target_gain * d`` (stream version 2: against
   ``chunk_gains * d``, which ramps from 1 on chunks far below the candidate count to ``target_gain``, see
   :func:`chunk_gains`). The chunk count still comes from the true KL. Measured on Gaussian data, 48
   steps to log-SNR 4, 2**14 candidates: gain 1.15 brings DiffC-A and DiffC-F within 2% of theory, where
   gain 1.0 gives +5% and +19%, for +0.5% of bits.

5. **Chunk size.** Each chunk pays a one-shot overhead of order ``log2(KL + 1)`` bits on top of its KL, so the
   bits per KL fall as chunks grow: on Tiny ImageNet images (``diffc bench channel-rd``) 8-bit chunks with 2**12
   candidates coded 1.36x the KL, 12-bit chunks with 2**12 candidates (the default) 1.17x and 16-bit chunks
   with 2**16 candidates 1.14x, at 0.2, 1.1 and 0.9 dB lower PSNR at the last step than the ideal channel; in
   BD-rate against the ideal channel 12-bit chunks gain 6 points on 8-bit ones at the same candidate count.
   Candidates cost compute, not bits - scoring is one ``(segments x w) @ (w x 2**L)`` product and a gather
   per step, ``D x 2**L`` work - and the encoder must stay network-bound, which caps them near 2**12.

6. **The prior's variance** (opt-in, ``prior_variance="count"``). The model's prior has the target's variance
   ``sigma^2``; a wider one, ``N(0, s^2 I)`` in these coordinates, is closer to ``N(d, I)``: the KL is
   ``(n / 2) (s^-2 (1 + |d|^2 / n) - 1 + ln s^2)``, smallest at ``s^2 = 1 + |d|^2 / n`` where it is
   ``(n / 2) ln(1 + |d|^2 / n)``. The sender takes the chunk count from that optimal KL, and both sides derive
   ``s^2`` from the count (:func:`prior_s2`): the count pins ``ln s^2`` to within ``2 C ln 2 / n``, and the
   KL is so flat at its optimum (``(n / 2) (e^delta - 1 - delta)`` nats for ``ln s^2`` short by ``delta``) that
   taking the bracket's lower end costs about ``C^2 (ln 2)^2 / n`` nats per step at most (0.008 bit at 64x64) -
   and no side information. The lower end is never wider than the optimum, so no step costs more than against
   the model's prior, and one-chunk steps keep it (``s^2 = 1``). Candidates become ``s c`` (``c`` from the same
   pool), scored ``-log T + s <c, g d_j> - (s^2 - 1) |c|^2 / 2`` (``log q / p'`` up to a constant at gain 1),
   ``|c|^2`` a sum of per-segment squared row norms gathered like the projections; the index tables are version
   2's (fitted to the model's prior; any table decodes). The sample still targets ``N(d, I)``: the ideal chain
   does not change, its rate does (1.7% less after 40 steps at 64x64, where a step's ``|d|^2 / n`` stays under
   0.09). With 2**12 candidates the selection leaves part of the prior's excess variance across ``d``
   (variance across 1.012 at a 454-bit step, exact 1); weighting the norm term 1.5x removes it but costs
   index bits for no PSNR (measured end to end), so the codec scores the exact ratio (``docs/benchmarks.md``).

The ``ideal`` channel draws ``u = d + e`` exactly and charges the KL (against the prior in use); both channels
share everything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from . import prng
from .config import CodecConfig

LN2 = float(np.log(2.0))
# Work arrays (chunks or segments x candidates) stay under this many entries (16 MB as float32), whatever the
# image size and candidate count: a 481x321 step can hold ~2,000 chunks, and 2**16 candidates each.
_WORK_ENTRIES = 1 << 22


@dataclass(frozen=True)
class StepLayout:
    """Which dimensions each chunk's segments cover, and how each segment maps candidate -> pool row."""

    num_chunks: int
    pool_width: int
    seg_dims: np.ndarray  # (G, w) int32 dimension indices (0 where masked)
    seg_mask: np.ndarray  # (G, w) bool: real dimensions
    seg_chunk: np.ndarray  # (G,) chunk of each segment (non-decreasing)
    seg_mult: np.ndarray  # (G,) odd multipliers
    seg_add: np.ndarray  # (G,) offsets
    seg_sign: np.ndarray  # (G, w) int8 +-1
    candidate_log2: int
    row_shift: int  # candidate n takes pool row ((a_g n + b_g) mod N) >> row_shift in segment g

    def seg_rows(self, candidates: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """``(hi - lo, len(candidates))`` pool rows of ``candidates`` in segments ``lo:hi``."""
        rows = torch.from_numpy(self.seg_mult[lo:hi])[:, None] * candidates[None, :]
        rows += torch.from_numpy(self.seg_add[lo:hi])[:, None]  # in place: this is the channel's hottest loop
        rows &= (1 << self.candidate_log2) - 1
        rows >>= self.row_shift
        return rows

    def chosen_rows(self, indices: np.ndarray) -> np.ndarray:
        """``(G,)`` pool row of each segment for its chunk's chosen candidate."""
        n_mask = (1 << self.candidate_log2) - 1
        return ((self.seg_mult * indices[self.seg_chunk] + self.seg_add) & n_mask) >> self.row_shift


def step_layout(dims: int, num_chunks: int, seed: int, step: int, config: CodecConfig) -> StepLayout:
    # Dimension indices are int32 (a side is at most 65,535 pixels but the compress limit keeps images far
    # below 2**31 values) and the masks, signs and index arrays are built in place: at 12 MP the (segments x
    # width) arrays are 36 M entries each, and int64 or float64 temporaries of that size were ~0.3 GB apiece.
    index_type = np.int32 if dims < 2**31 else np.int64
    perm = prng.rng(seed, step, prng.PERMUTE).permutation(dims).astype(index_type)
    bounds = (np.arange(num_chunks + 1, dtype=np.int64) * dims) // num_chunks
    sizes = np.diff(bounds)
    w = _segment_width(sizes, config)
    per_chunk = -(-sizes // w)  # ceil
    seg_chunk = np.repeat(np.arange(num_chunks), per_chunk)
    first_seg = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])
    seg_start = bounds[seg_chunk] + w * (np.arange(len(seg_chunk)) - first_seg[seg_chunk])
    seg_len = np.minimum(w, bounds[seg_chunk + 1] - seg_start)
    offs = np.arange(w, dtype=index_type)
    seg_mask = offs[None, :] < seg_len[:, None].astype(index_type)
    positions = seg_start.astype(index_type)[:, None] + offs[None, :]
    positions[~seg_mask] = 0
    seg_dims = perm[positions]
    del perm, positions
    n = 1 << config.candidate_log2
    g = prng.rng(seed, step, prng.SEGMENTS)
    seg_mult = 2 * g.integers(0, max(1, n // 2), len(seg_chunk), dtype=np.int64) + 1
    seg_add = g.integers(0, n, len(seg_chunk), dtype=np.int64)
    # drawn as float32 uniforms (the streams' definition), kept as int8 +-1: a quarter of the memory, and
    # exact in every product it enters
    seg_sign = np.where(g.random((len(seg_chunk), w), dtype=np.float32) < 0.5, np.int8(-1), np.int8(1))
    return StepLayout(
        num_chunks,
        w,
        seg_dims,
        seg_mask,
        seg_chunk,
        seg_mult,
        seg_add,
        seg_sign,
        config.candidate_log2,
        config.row_shift,
    )


def _segment_width(chunk_sizes: np.ndarray, config: CodecConfig) -> int:
    """Segment width: the pool width, and with fewer pool rows than candidates at most half the smallest
    chunk, so that every chunk combines rows of at least two segments (one segment would leave it only
    ``pool_rows`` distinct candidates)."""
    if config.row_shift == 0:
        return int(min(config.pool_width, chunk_sizes.max()))
    return int(max(1, min(config.pool_width, chunk_sizes.min() // 2)))


def num_chunks_for(kl_bits: float, config: CodecConfig) -> int:
    return max(1, int(np.ceil(kl_bits / config.chunk_bits - 1e-9)))


def widened_kl_nats(sq_norm: np.ndarray | float, dims: np.ndarray | float, s2: np.ndarray | float) -> np.ndarray:
    """``KL(N(d, I) || N(0, s2 I))`` in nats for ``|d|^2 = sq_norm`` over ``dims`` dimensions."""
    sq_norm, dims, s2 = np.asarray(sq_norm, float), np.asarray(dims, float), np.asarray(s2, float)
    return 0.5 * ((dims + sq_norm) / s2 - dims + dims * np.log(s2))


def prior_s2(count: int, dims: int, config: CodecConfig) -> float:
    """The prior's variance ``s^2`` of a step of ``count`` chunks over ``dims`` dimensions: 1 (the model's), or
    with ``prior_variance="count"`` the lower end of the bracket the count puts the optimal one in,
    ``ln s^2 = 2 (count - 1) C ln 2 / dims`` (module docstring, item 6). Both sides compute it from integers
    the stream carries; it sets the sample's scale, never what is parsed."""
    if config.prior_variance is None:
        return 1.0
    return 1.0 + math.expm1(2.0 * (count - 1) * config.chunk_bits * LN2 / dims)


def step_prior(d: np.ndarray, config: CodecConfig) -> tuple[int, float, float]:
    """``(count, s^2, KL bits)`` of a step's normalised target ``d``: the chunk count, from the KL against
    the model's prior or, with the widened one, from its optimal KL; the prior's variance the receiver derives
    from the count; and the KL against that prior - the ideal rate."""
    kl_bits = step_kl_bits(d)
    if config.prior_variance is None:
        return num_chunks_for(kl_bits, config), 1.0, kl_bits
    sq, n = 2.0 * LN2 * kl_bits, np.asarray(d).size
    count = num_chunks_for(float(widened_kl_nats(sq, n, 1.0 + sq / n)) / LN2, config)
    s2 = prior_s2(count, n, config)
    return count, s2, float(widened_kl_nats(sq, n, s2)) / LN2


class OrderedArrivals:
    """Sorted i.i.d. Exp(1) times, ``n`` per chunk, drawn chunk block by chunk block (Renyi's representation).

    Ordered random coding (Theis & Yosri 2022): pairing *sorted* exponentials with i.i.d. candidates leaves
    the selected sample's law that of an exponential race over ``n`` candidates (self-normalised importance
    sampling), while pushing the chosen index towards small values, which the index code turns into bits
    saved (measured: ~0.35 bits per chunk against truncated PFR at equal fidelity). Successive calls continue
    one generator, so the times do not depend on how the chunks are blocked.
    """

    def __init__(self, seed: int, step: int, n: int) -> None:
        self._gen = prng.rng(seed, step, prng.ARRIVALS)
        self._n = n
        self._rates = (1.0 / np.arange(n, 0, -1, dtype=np.float64)).astype(np.float32)

    def next_log_rows(self, rows: int) -> np.ndarray:
        """``-log T`` for the next ``rows`` chunks, ``(rows, n)`` float32.

        Only the sender draws these (the receiver never needs them), so their precision and generator change
        no stream's meaning: float32 halves their cost, the largest part of the channel at 2**14+ candidates.
        """
        times = self._gen.standard_exponential(size=(rows, self._n), dtype=np.float32)
        times *= self._rates
        np.cumsum(times, axis=1, out=times)
        np.log(times, out=times)
        times *= -1.0
        return times


def _pool(step: int, config: CodecConfig, width: int) -> tuple[np.ndarray, torch.Tensor]:
    """The step's candidate pool (first ``width`` columns) and its transpose for scoring.

    One pool per step for every image: each image's candidates are marginally i.i.d. ``N(0, I)`` through its
    own seeded row maps and signs, which is all a chunk's sampler needs, and a batch then draws the pool
    once per step instead of once per image (drawing it was a fifth of the channel's time).
    """
    pool, pool_t = _full_pool(step, config.pool_rows, config.pool_width)
    return pool[:, :width], pool_t[:width]


@lru_cache(maxsize=2)  # the step being coded (and the next): a batch is coded step by step
def _full_pool(step: int, rows: int, width: int) -> tuple[np.ndarray, torch.Tensor]:
    pool = prng.normals(0, step, prng.POOL, (rows, width))
    pool.flags.writeable = False
    return pool, torch.from_numpy(pool.T.copy())


@lru_cache(maxsize=2)
def _pool_norms(step: int, rows: int, width: int) -> torch.Tensor:
    """``(width + 1, rows)``: entry ``[L, r]`` is the squared norm of the first ``L`` columns of pool row ``r``,
    so a segment of ``L`` dimensions adds ``|c|^2`` to its candidates' scores with one gather (the widened
    prior's norm term). Only the sender uses it."""
    pool = _full_pool(step, rows, width)[0].astype(np.float64)
    cum = np.concatenate([np.zeros((rows, 1)), np.cumsum(pool * pool, axis=1)], axis=1)
    return torch.from_numpy(np.ascontiguousarray(cum.T, dtype=np.float32))


# Stream version 2's gain ramp (:func:`chunk_gains`): in slack ``candidate_log2 - KL`` bits, full gain at
# or below the first value, no gain at or above the second.
GAIN_RAMP_SLACK = (5.0, 9.0)


def chunk_gains(chunk_kl_bits: np.ndarray, config: CodecConfig) -> np.ndarray:
    """Target gain per chunk in stream version 2: 1 where the candidates have ample slack, ``target_gain``
    where they have little, linear in between.

    The gain exists to cancel the undershoot that finitely many candidates leave along ``d``; a chunk whose
    KL sits 9+ bits below ``candidate_log2`` has no undershoot to cancel (simulated, 2**12 candidates: mean
    shift 0.99-1.00 at 1-3 bits with gain 1), so the full gain there overshoots (1.16-1.19 at gain 1.2) and
    costs 1.0-1.3 bits per chunk in index entropy. The ramp keeps the shift within 0.98-1.03 from 1 to 7 bits
    and the full gain from there up. Only the sender uses it: the receiver regenerates candidates from indices
    whatever the gain, and the index tables of version 2 are simulated with it.
    """
    lo, hi = GAIN_RAMP_SLACK
    slack = config.candidate_log2 - np.asarray(chunk_kl_bits, dtype=np.float64)
    return 1.0 + (config.target_gain - 1.0) * np.clip((hi - slack) / (hi - lo), 0.0, 1.0)


def chunk_kl_bits(d: np.ndarray, layout: StepLayout, s2: float = 1.0) -> np.ndarray:
    """KL of each chunk of ``layout`` (bits) for the normalised target ``d`` (flat), against the prior
    ``N(0, s2 I)``; segment rows are summed a block at a time, so the float64 squares never exceed
    :data:`_WORK_ENTRIES` entries."""
    out = np.zeros(layout.num_chunks)
    rows = max(1, _WORK_ENTRIES // layout.pool_width)
    for lo in range(0, len(layout.seg_chunk), rows):
        sq = d[layout.seg_dims[lo : lo + rows]].astype(np.float64)
        sq[~layout.seg_mask[lo : lo + rows]] = 0.0
        sq *= sq
        np.add.at(out, layout.seg_chunk[lo : lo + rows], sq.sum(axis=1))
    if s2 == 1.0:
        return 0.5 * out / LN2
    dims = np.zeros(layout.num_chunks)
    np.add.at(dims, layout.seg_chunk, layout.seg_mask.sum(axis=1))
    return widened_kl_nats(out, dims, s2) / LN2


def step_kl_bits(d: np.ndarray) -> float:
    """The step's KL ``|d|^2 / 2`` in bits, summed in float64 a block at a time (no whole-image copy)."""
    flat = np.asarray(d).ravel()
    total = 0.0
    for lo in range(0, flat.size, _WORK_ENTRIES):
        piece = flat[lo : lo + _WORK_ENTRIES].astype(np.float64)
        total += float(np.dot(piece, piece))
    return 0.5 * total / LN2


def rcc_encode(
    d: np.ndarray,
    seed: int,
    step: int,
    config: CodecConfig,
    stream_version: int = 1,
    norm_gain: float = 1.0,
    out: np.ndarray | None = None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Choose candidates for ``N(d, I)``; returns ``(J, indices, u)`` with ``u`` the communicated sample
    (written into ``out``, flat float32 of ``d``'s size, when given: the caller's batch array, no copy).

    ``stream_version`` 1 scores every chunk against ``target_gain * d``; 2 against ``chunk_gains * d``. With the
    widened prior (``config.prior_variance``) the candidates are ``s c`` (module docstring, item 6);
    ``norm_gain`` weights their norm term (sender-only; 1, the exact ``log q / p'``, is what the codec uses and
    ``diffc bench prior-variance`` compares it with others)."""
    d = np.asarray(d, dtype=np.float32).ravel()
    count, s2, _ = step_prior(d, config)
    layout = step_layout(d.size, count, seed, step, config)
    pool, pool_t = _pool(step, config, layout.pool_width)  # (rows, w), (w, rows)
    n = 1 << config.candidate_log2
    if stream_version == 1:
        gain = np.float32(config.target_gain)
    else:
        gain = chunk_gains(chunk_kl_bits(d, layout, s2), config).astype(np.float32)[layout.seg_chunk][:, None]
    norms = None
    if s2 != 1.0:  # s <c, g d>: the target scaled by s; the norm term per segment length, scaled once
        gain = gain * np.float32(math.sqrt(s2))
        norms = _pool_norms(step, config.pool_rows, config.pool_width) * np.float32(-0.5 * norm_gain * (s2 - 1))
    arrivals = OrderedArrivals(seed, step, n)
    # segments of chunk c are seg_first[c]:seg_first[c + 1] (seg_chunk is non-decreasing)
    seg_first = np.searchsorted(layout.seg_chunk, np.arange(layout.num_chunks + 1))
    per_block = max(1, _WORK_ENTRIES // n)
    indices = np.empty(layout.num_chunks, dtype=np.int64)
    for c0 in range(0, layout.num_chunks, per_block):
        c1 = min(c0 + per_block, layout.num_chunks)
        scores = torch.from_numpy(arrivals.next_log_rows(c1 - c0))
        segs = range(seg_first[c0], seg_first[c1])
        _add_projections(scores, d, gain, pool_t, layout, segs, c0, per_block, norms)
        indices[c0:c1] = scores.argmax(dim=1).numpy()
    return layout.num_chunks, indices, _scaled(_assemble(layout, pool, indices, d.size, out), s2)


def _segment_targets(d: np.ndarray, gain: np.ndarray | np.float32, layout: StepLayout, lo: int, hi: int) -> np.ndarray:
    """``(hi - lo, w)`` float32: segments ``lo:hi`` of the scaled, signed target, zero where masked. Built per
    block of segments, never for the whole step (a whole-step copy was 0.14 GB at 12 MP); elementwise, so the
    values are the same however the segments are blocked."""
    targets = d[layout.seg_dims[lo:hi]]
    targets *= gain if np.ndim(gain) == 0 else gain[lo:hi]
    targets[~layout.seg_mask[lo:hi]] = 0.0
    targets *= layout.seg_sign[lo:hi]
    return targets


def _add_projections(
    scores: torch.Tensor,
    d: np.ndarray,
    gain: np.ndarray | np.float32,
    pool_t: torch.Tensor,
    layout: StepLayout,
    segs: range,
    c0: int,
    per_block: int,
    norms: torch.Tensor | None = None,
) -> None:
    """Add each segment's candidate projections ``<c_n segment, gain d segment>`` to its chunk's scores, and
    with ``norms`` (the widened prior's scaled :func:`_pool_norms`) each segment's norm term."""
    cand = torch.arange(scores.shape[1], dtype=torch.int64)
    seg_chunk = torch.from_numpy(layout.seg_chunk[segs.start : segs.stop] - c0)  # chunk of each segment, in block
    if norms is not None:  # segment lengths of this block's segments: rows of the norm table
        seg_len = torch.from_numpy(layout.seg_mask[segs.start : segs.stop].sum(axis=1))
    for lo in range(segs.start, segs.stop, per_block):
        hi = min(lo + per_block, segs.stop)
        # (Gb, rows): each segment target against every pool row, laid out contiguously per segment so the
        # gather below stays in cache
        proj = torch.from_numpy(_segment_targets(d, gain, layout, lo, hi)) @ pool_t
        if norms is not None:
            proj += norms[seg_len[lo - segs.start : hi - segs.start]]
        rows = layout.seg_rows(cand, lo, hi)
        scores.index_add_(0, seg_chunk[lo - segs.start : hi - segs.start], torch.gather(proj, 1, rows))


def rcc_decode(
    num_chunks: int, indices: np.ndarray, dims: int, seed: int, step: int, config: CodecConfig
) -> np.ndarray:
    """Regenerate the communicated sample ``u`` from the chunk count and indices (and, with the widened prior,
    the variance the count gives)."""
    layout = step_layout(dims, num_chunks, seed, step, config)
    u = _assemble(layout, _pool(step, config, layout.pool_width)[0], indices, dims)
    return _scaled(u, prior_s2(num_chunks, dims, config))


def _scaled(u: np.ndarray, s2: float) -> np.ndarray:
    """``s u``: a candidate of the prior ``N(0, s2 I)`` from one of ``N(0, I)`` (in place; float32 on both sides)."""
    if s2 != 1.0:
        u *= np.float32(math.sqrt(s2))
    return u


def _assemble(
    layout: StepLayout, pool: np.ndarray, indices: np.ndarray, dims: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The chosen candidates' values in image order (into ``out`` when given), a block of segments at a time:
    whole-step (segments x width) temporaries were three arrays of 0.14 GB each at 12 MP."""
    u = np.empty(dims, dtype=np.float32) if out is None else out
    rows = layout.chosen_rows(indices)
    block = max(1, _WORK_ENTRIES // layout.pool_width)
    for lo in range(0, len(rows), block):
        values = pool[rows[lo : lo + block]]
        values *= layout.seg_sign[lo : lo + block]
        mask = layout.seg_mask[lo : lo + block]
        u[layout.seg_dims[lo : lo + block][mask]] = values[mask]
    return u


def ideal_sample(d: np.ndarray, seed: int, step: int) -> np.ndarray:
    """An exact sample of ``N(d, I)`` (the rate DiffC's paper reports charges its KL)."""
    d = np.asarray(d, dtype=np.float32).ravel()
    return d + prng.normals(seed, step, prng.POOL, (d.size,))
