"""Entropy code for the integers of a step: the chunk count and the chosen candidate indices.

A PFR index ``n`` in ``[0, N)`` is split into a bucket ``b = n.bit_length()`` and ``b - 1`` offset bits.
Offsets are near-uniform (a 1/n law within a bucket is 0.03 bit from uniform); buckets follow a
distribution fitted once by :mod:`.tables` and shipped as integer counts, so both sides build bit-identical
codes on any machine. Buckets are coded with a Huffman code from ``constriction``; a symbol code, unlike ANS
or range coding, leaves no per-step flush overhead, so one bit-granular queue can hold all steps back to
back and any byte prefix of it decodes the steps it covers.

Stream version 1 codes each step's chunk count as a zig-zagged change from the previous count (one generic
table) and every index with one table per channel setting. Version 2 (:class:`StepCode` with ``version=2``):

- the count change is centred on the drift the schedule predicts (a step's KL grows by about
  ``0.4 * expm1(dlogsnr)`` per step once the image has several chunks) and coded with a table per context
  (the previous count's bit length), fitted on real streams: 85% of one-chunk steps are followed by another;
- the count's symbol and the first index's bucket form **one** Huffman symbol, so a near-certain count costs
  a fraction of a bit instead of a whole codeword (a Huffman symbol costs at least 1 bit);
- each index is coded with the bucket table of its step's chunk-count group (1, 2, 3, 4-7, 8+ chunks): the
  count tells the receiver where the chunk's KL lies, and the table is the exact index law of ordered random
  coding for the KL mixture of that group (:func:`.tables.v2_bucket_tables`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import constriction
import numpy as np

from ...errors import StreamError
from .config import CodecConfig
from .tables import COUNT_GROUPS, table_key

huffman = constriction.symbol.huffman
MAX_COUNT_BUCKET = 31  # chunk counts up to 2**31 - 1
_TABLE_FILE = "index_buckets.json"
_TABLE_FILE_V2 = "index_v2.json"
OFFSET_PIECE_BITS = 16  # version 2: offsets travel in pieces of at most this many uniform bits
COUNT_CLASSES = 4  # version 2: centred zig-zag count changes 0..3 (0, -1, +1, -2) join the first bucket
MAX_COUNT_CONTEXT = 12
# version 2, contexts without fitted weights (counts above 4,095: images far beyond the training size): the
# centred change is spread wide, mostly escaped
_WIDE_COUNT_WEIGHTS = (4, 3, 3, 2, 12)


@cache
def _tables() -> dict[str, list[int]]:
    text = resources.files(__package__).joinpath("tables", _TABLE_FILE).read_text()
    return json.loads(text)["tables"]


@cache
def _tables_v2() -> dict:
    return json.loads(resources.files(__package__).joinpath("tables", _TABLE_FILE_V2).read_text())


def coded_settings() -> list[str]:
    """The channel settings ``chunk_bits,candidate_log2,target_gain`` that shipped index tables can code."""
    return sorted(_tables(), key=lambda k: tuple(float(v) for v in k.split(",")))


def has_v1_tables(chunk_bits: int, candidate_log2: int, gain: float) -> bool:
    """Whether stream version 1 can code this channel setting: without its table no setting can be coded."""
    return table_key(chunk_bits, candidate_log2, gain) in _tables()


def has_v2_tables(chunk_bits: int, candidate_log2: int, gain: float) -> bool:
    """Whether stream version 2 can code this channel setting (its index tables are shipped)."""
    return table_key(chunk_bits, candidate_log2, gain) in _tables_v2()["index"]


def bucket_counts(chunk_bits: int, candidate_log2: int, gain: float) -> np.ndarray:
    key = table_key(chunk_bits, candidate_log2, gain)
    table = _tables().get(key)
    if table is None:
        raise StreamError(
            f"no index table for chunk_bits={chunk_bits}, candidate_log2={candidate_log2}, target_gain={gain}; "
            f"build it with `python -m diffc_pipeline.training.diffc_tables index {chunk_bits} {candidate_log2} {gain}`"
        )
    return np.asarray(table, dtype=np.float64)


def _codeword_lengths(tree, n: int) -> np.ndarray:
    """Bits of each symbol's codeword, so the reader can count what it consumed (constriction does not say)."""
    lengths = np.empty(n, dtype=np.int64)
    for s in range(n):
        enc = constriction.symbol.QueueEncoder()
        enc.encode_symbol(s, tree)
        lengths[s] = enc.get_compressed_and_bitrate()[1]
    return lengths


@cache
def _bucket_trees(chunk_bits: int, candidate_log2: int, gain: float):
    p = bucket_counts(chunk_bits, candidate_log2, gain)
    enc = huffman.EncoderHuffmanTree(p)
    return enc, huffman.DecoderHuffmanTree(p), _codeword_lengths(enc, len(p))


@cache
def _uniform_trees(bits: int):
    p = np.ones(1 << bits, dtype=np.float64)
    return huffman.EncoderHuffmanTree(p), huffman.DecoderHuffmanTree(p)


@cache
def _count_trees():
    # zig-zagged count changes: small changes are the rule
    p = np.array([2.0 ** (-0.5 * b) for b in range(MAX_COUNT_BUCKET + 1)])
    enc = huffman.EncoderHuffmanTree(p)
    return enc, huffman.DecoderHuffmanTree(p), _codeword_lengths(enc, len(p))


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(v: int) -> int:
    return v // 2 if v % 2 == 0 else -(v + 1) // 2


@dataclass(frozen=True)
class StepCode:
    """What both sides need to code a step's integers: the stream version and the channel setting; for
    version 2 also ``drift_q``, the expected count change per count in 1/256 (see the module docstring)."""

    version: int
    chunk_bits: int
    candidate_log2: int
    gain: float
    drift_q: int = 0

    @classmethod
    def for_config(cls, config: CodecConfig, version: int) -> StepCode:
        code = (config.chunk_bits, config.candidate_log2, config.target_gain)
        if version == 1:
            return cls(1, *code)
        # expm1 by its Taylor polynomial: only +, * and / (correctly rounded on every IEEE-754 platform, where
        # libm's expm1 may differ in the last bit), then rounded to an integer, which is all either side uses
        x = (config.logsnr_end - config.logsnr_start) / config.num_steps
        expm1 = x + x * x / 2 + x * x * x / 6 + x * x * x * x / 24
        return cls(2, *code, drift_q=round(256 * 0.4 * expm1))

    @property
    def key(self) -> tuple[int, int, float]:
        return (self.chunk_bits, self.candidate_log2, self.gain)

    def centre(self, previous: int) -> int:
        """The count change version 2 expects after a step of ``previous`` chunks."""
        return (previous * self.drift_q + 128) >> 8


def _group(count: int) -> int:
    """Version 2's index-table group of a step of ``count`` chunks (index into ``COUNT_GROUPS``)."""
    return max(i for i, g in enumerate(COUNT_GROUPS) if g <= count)


@cache
def _group_trees(key: tuple[int, int, float], group: int):
    p = np.asarray(_tables_v2()["index"][table_key(*key)][str(COUNT_GROUPS[group])], dtype=np.float64)
    enc = huffman.EncoderHuffmanTree(p)
    return enc, huffman.DecoderHuffmanTree(p), _codeword_lengths(enc, len(p)), p / p.sum()


def _count_weights(context: int) -> tuple[int, ...]:
    return tuple(_tables_v2()["counts"].get(str(context), _WIDE_COUNT_WEIGHTS))


@cache
def _joint_trees(key: tuple[int, int, float], context: int, groups: tuple[int, ...]):
    """Huffman trees over (count class, first bucket) plus one escape symbol, for the count context and the
    index-table group each count class leads to (``-1``: the class would give no chunks, so it never occurs).
    Weights are the count weight times the bucket probability, integers divided once in float64 (correctly
    rounded on every IEEE-754 platform): both sides build the same tree."""
    weights = _count_weights(context)
    parts = []
    for cls_, group in enumerate(groups):
        counts = np.asarray(_tables_v2()["index"][table_key(*key)][str(COUNT_GROUPS[max(group, 0)])], float)
        parts.append(counts * weights[cls_] / counts.sum() if group >= 0 else np.zeros_like(counts))
    p = np.concatenate([*parts, [float(weights[COUNT_CLASSES])]])
    enc = huffman.EncoderHuffmanTree(p)
    return enc, huffman.DecoderHuffmanTree(p), _codeword_lengths(enc, len(p)), p / p.sum()


def _class_groups(code: StepCode, previous: int) -> tuple[int, ...]:
    base = previous + code.centre(previous)
    counts = [base + _unzigzag(c) for c in range(COUNT_CLASSES)]
    return tuple(_group(n) if n >= 1 else -1 for n in counts)


class StepWriter:
    """Appends the integers of successive steps to one bit-granular stream."""

    def __init__(self) -> None:
        self._enc = constriction.symbol.QueueEncoder()

    def _write_split(self, value: int, bucket_tree, pieces: bool = False) -> None:
        b = int(value).bit_length()
        self._enc.encode_symbol(b, bucket_tree)
        if b > 1:
            self._write_offset(int(value) - (1 << (b - 1)), b - 1, pieces)

    def _write_offset(self, offset: int, bits: int, pieces: bool) -> None:
        """``bits`` uniform bits: one symbol of ``2**bits`` (version 1), or pieces of at most
        :data:`OFFSET_PIECE_BITS` bits, high first (version 2: a reader never builds a larger code)."""
        if not pieces:
            self._enc.encode_symbol(offset, _uniform_trees(bits)[0])
            return
        while bits > 0:
            take = min(bits, OFFSET_PIECE_BITS)
            bits -= take
            self._enc.encode_symbol((offset >> bits) & ((1 << take) - 1), _uniform_trees(take)[0])

    def write_count(self, count: int, previous: int) -> None:
        """Code a step's chunk count as its change from the previous step's (zig-zag): counts drift slowly
        along the schedule, so the change costs ~5 bits where the count itself would cost ~11."""
        if not 1 <= count < (1 << (MAX_COUNT_BUCKET - 1)):
            raise ValueError(f"chunk count {count} out of range")
        self._write_split(_zigzag(count - previous), _count_trees()[0])

    def write_indices(self, indices: np.ndarray, chunk_bits: int, candidate_log2: int, gain: float) -> None:
        tree = _bucket_trees(chunk_bits, candidate_log2, gain)[0]
        for n in indices.tolist():
            self._write_split(n, tree)

    def write_step(self, count: int, previous: int, indices: np.ndarray, code: StepCode) -> tuple[float, float]:
        """Code one step (its chunk count, then its indices) with ``code``; returns the bits spent on the
        count and on the indices (version 2 codes the count and the first bucket as one symbol, whose
        codeword is split between the two in proportion to their information)."""
        start = self.bit_length()
        if code.version == 1:
            self.write_count(count, previous)
            middle = self.bit_length()
            self.write_indices(indices, *code.key)
            return float(middle - start), float(self.bit_length() - middle)
        if not 1 <= count < (1 << (MAX_COUNT_BUCKET - 1)) or len(indices) != count:
            raise ValueError(f"chunk count {count} out of range or not the number of indices")
        context = min(previous.bit_length(), MAX_COUNT_CONTEXT)
        joint = _joint_trees(code.key, context, _class_groups(code, previous))
        dz = _zigzag(count - previous - code.centre(previous))
        first = int(indices[0])
        b = first.bit_length()
        bucket_trees = _group_trees(code.key, _group(count))
        width = code.candidate_log2 + 1
        if dz < COUNT_CLASSES:
            symbol = dz * width + b
            self._enc.encode_symbol(symbol, joint[0])
            share = math.log2(bucket_trees[3][b]) / math.log2(joint[3][symbol]) if joint[3][symbol] < 1 else 0.0
            count_bits = float(joint[2][symbol]) * (1.0 - share)
            if b > 1:
                self._write_offset(first - (1 << (b - 1)), b - 1, pieces=True)
        else:
            self._enc.encode_symbol(COUNT_CLASSES * width, joint[0])
            self._write_split(dz - COUNT_CLASSES, _count_trees()[0], pieces=True)
            count_bits = float(self.bit_length() - start)
            self._write_split(first, bucket_trees[0], pieces=True)
        for n in indices[1:].tolist():
            self._write_split(n, bucket_trees[0], pieces=True)
        return count_bits, self.bit_length() - start - count_bits

    def bit_length(self) -> int:
        return int(self._enc.get_compressed_and_bitrate()[1])

    def to_bytes(self) -> bytes:
        words, bits = self._enc.get_compressed_and_bitrate()
        return words.astype("<u4").tobytes()[: (int(bits) + 7) // 8]


class StepReader:
    """Reads back what :class:`StepWriter` wrote, from a byte prefix of it.

    Counts are bounded before any code is built for their offset: a step cannot hold more chunks than there
    are bits left (every index costs at least one), so an edited stream costs work in proportion to its
    length, not to the 2**31 its count code could name. (Not by the step's dimensions: a step of more than
    ``chunk_bits`` bits per dimension, as tiny images reach at high SNR, has more chunks than dimensions.)
    """

    def __init__(self, data: bytes) -> None:
        padded = data + bytes(-len(data) % 4 + 4)  # reading past the prefix yields zeros, caught below
        self._limit_bits = 8 * len(data)
        self._consumed = 0
        self._dec = constriction.symbol.QueueDecoder(np.frombuffer(padded, dtype="<u4").copy())

    def _symbol(self, tree) -> int:
        try:
            return int(self._dec.decode_symbol(tree))
        except ValueError:  # constriction ran past the end of the data
            raise StreamError(f"stream truncated: ran out of bits after {self._limit_bits} bits") from None

    def _read_split(self, trees, max_bucket: int, pieces: bool = False) -> int:
        b = self._symbol(trees[1])
        if b > max_bucket:
            raise StreamError(f"corrupt stream: bucket {b} exceeds {max_bucket}")
        self._consumed += int(trees[2][b])
        if b <= 1:
            return b
        return (1 << (b - 1)) + self._read_offset(b - 1, pieces)

    def _read_offset(self, bits: int, pieces: bool) -> int:
        self._consumed += bits
        if not pieces:
            return self._symbol(_uniform_trees(bits)[1])
        value = 0
        while bits > 0:
            take = min(bits, OFFSET_PIECE_BITS)
            bits -= take
            value = (value << take) | self._symbol(_uniform_trees(take)[1])
        return value

    def _count_bucket_limit(self, previous: int) -> int:
        """The largest count-change bucket a step after ``previous`` chunks can hold."""
        most = max(1, self._limit_bits - self._consumed)
        return min(MAX_COUNT_BUCKET, (2 * (most + previous)).bit_length())

    def check_within(self, what: str) -> None:
        """Raise if decoding ran past the bytes given: the stream was cut inside ``what``."""
        if self._consumed > self._limit_bits:
            raise StreamError(f"stream truncated in {what}: needs {self._consumed} bits, has {self._limit_bits}")

    @property
    def consumed_bits(self) -> int:
        return self._consumed

    def read_count(self, previous: int) -> int:
        count = previous + _unzigzag(self._read_split(_count_trees(), self._count_bucket_limit(previous)))
        if count < 1:
            raise StreamError("corrupt stream: a step with no chunks")
        return count

    def read_indices(self, n: int, chunk_bits: int, candidate_log2: int, gain: float) -> np.ndarray:
        trees = _bucket_trees(chunk_bits, candidate_log2, gain)
        return np.array([self._read_split(trees, candidate_log2) for _ in range(n)], dtype=np.int64)

    def read_step(self, previous: int, code: StepCode) -> tuple[int, np.ndarray]:
        """Read what :meth:`StepWriter.write_step` wrote: ``(count, indices)``."""
        if code.version == 1:
            count = self.read_count(previous)
            return count, self.read_indices(count, *code.key)
        context = min(previous.bit_length(), MAX_COUNT_CONTEXT)
        groups = _class_groups(code, previous)
        joint = _joint_trees(code.key, context, groups)
        symbol = self._symbol(joint[1])
        self._consumed += int(joint[2][symbol])
        width = code.candidate_log2 + 1
        if symbol > COUNT_CLASSES * width or (symbol < COUNT_CLASSES * width and groups[symbol // width] < 0):
            raise StreamError(f"corrupt stream: count symbol {symbol} cannot occur")
        if symbol == COUNT_CLASSES * width:
            limit = self._count_bucket_limit(previous)
            dz = COUNT_CLASSES + self._read_split(_count_trees(), limit, pieces=True)
            first = None
        else:
            dz, first = divmod(symbol, width)
        count = previous + code.centre(previous) + _unzigzag(dz)
        if not 1 <= count <= max(1, self._limit_bits - self._consumed):
            raise StreamError(f"corrupt stream: a step with {count} chunks")
        trees = _group_trees(code.key, _group(count))
        out = np.empty(count, dtype=np.int64)
        if first is None:
            out[0] = self._read_split(trees, code.candidate_log2, pieces=True)
        else:
            out[0] = first if first <= 1 else (1 << (first - 1)) + self._read_offset(first - 1, pieces=True)
        for i in range(1, count):
            out[i] = self._read_split(trees, code.candidate_log2, pieces=True)
        return count, out
