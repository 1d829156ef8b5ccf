"""Entropy code for the integers of a step: the chunk count and the chosen candidate indices.

A PFR index ``n`` in ``[0, N)`` is split into a bucket ``b = n.bit_length()`` and ``b - 1`` offset bits.
Offsets are near-uniform; buckets follow a distribution that depends only on the chunk budget, fitted once
by :mod:`.tables` and shipped as integer counts (so both sides build bit-identical codes on any machine).
Buckets are coded with a Huffman code from ``constriction``; a symbol code, unlike ANS or range coding,
leaves no per-step flush overhead, so one bit-granular queue can hold all steps back to back and any
byte prefix of it decodes the steps it covers.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import constriction
import numpy as np

from ...errors import StreamError
from .tables import table_key

huffman = constriction.symbol.huffman
MAX_COUNT_BUCKET = 31  # chunk counts up to 2**31 - 1
_TABLE_FILE = "index_buckets.json"


@cache
def _tables() -> dict[str, list[int]]:
    text = resources.files(__package__).joinpath("tables", _TABLE_FILE).read_text()
    return json.loads(text)["tables"]


def bucket_counts(chunk_bits: int, candidate_log2: int, gain: float) -> np.ndarray:
    key = table_key(chunk_bits, candidate_log2, gain)
    table = _tables().get(key)
    if table is None:
        raise StreamError(
            f"no index table for chunk_bits={chunk_bits}, candidate_log2={candidate_log2}, target_gain={gain}; "
            f"build it with `python -m diffc_pipeline.codecs.diffc.tables {chunk_bits} {candidate_log2} {gain}`"
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


class StepWriter:
    """Appends the integers of successive steps to one bit-granular stream."""

    def __init__(self) -> None:
        self._enc = constriction.symbol.QueueEncoder()

    def _write_split(self, value: int, bucket_tree) -> None:
        b = int(value).bit_length()
        self._enc.encode_symbol(b, bucket_tree)
        if b > 1:
            self._enc.encode_symbol(int(value) - (1 << (b - 1)), _uniform_trees(b - 1)[0])

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

    def bit_length(self) -> int:
        return int(self._enc.get_compressed_and_bitrate()[1])

    def to_bytes(self) -> bytes:
        words, bits = self._enc.get_compressed_and_bitrate()
        return words.astype("<u4").tobytes()[: (int(bits) + 7) // 8]


class StepReader:
    """Reads back what :class:`StepWriter` wrote, from a byte prefix of it."""

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

    def _read_split(self, trees, max_bucket: int) -> int:
        b = self._symbol(trees[1])
        if b > max_bucket:
            raise StreamError(f"corrupt stream: bucket {b} exceeds {max_bucket}")
        self._consumed += int(trees[2][b]) + max(0, b - 1)
        if b <= 1:
            return b
        return (1 << (b - 1)) + self._symbol(_uniform_trees(b - 1)[1])

    def check_within(self, what: str) -> None:
        """Raise if decoding ran past the bytes given: the stream was cut inside ``what``."""
        if self._consumed > self._limit_bits:
            raise StreamError(f"stream truncated in {what}: needs {self._consumed} bits, has {self._limit_bits}")

    @property
    def consumed_bits(self) -> int:
        return self._consumed

    def read_count(self, previous: int) -> int:
        count = previous + _unzigzag(self._read_split(_count_trees(), MAX_COUNT_BUCKET))
        if count < 1:
            raise StreamError("corrupt stream: a step with no chunks")
        return count

    def read_indices(self, n: int, chunk_bits: int, candidate_log2: int, gain: float) -> np.ndarray:
        trees = _bucket_trees(chunk_bits, candidate_log2, gain)
        return np.array([self._read_split(trees, candidate_log2) for _ in range(n)], dtype=np.int64)
