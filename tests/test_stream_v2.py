"""DiffC stream version 2: compact shape, context-coded chunk counts joined with the first index bucket,
per-chunk-count index tables and the sender's gain ramp; version 1 still written on request and read
always; the rate breakdown's accounting adds up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synthetic import smooth_images

from diffc_pipeline.benchmarks.rate_breakdown import breakdown
from diffc_pipeline.codecs import Encoded
from diffc_pipeline.codecs.diffc.bitstream import HEADER_SIZE, EncodedImage, Header, header_length, shape_bytes
from diffc_pipeline.codecs.diffc.channel import chunk_gains
from diffc_pipeline.codecs.diffc.codec import DiffcCodec
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.codecs.diffc.index_code import StepCode, StepReader, StepWriter
from diffc_pipeline.errors import InvalidInputError, StreamError
from diffc_pipeline.models.gaussian import GaussianModel

SMALL = CodecConfig(num_steps=6, logsnr_start=-5.0, logsnr_end=3.0, flow_steps=4, ancestral_steps=4)


def test_shape_field_and_header_lengths() -> None:
    assert shape_bytes(64, 64) == bytes([127])  # (63 << 1) | square: one byte
    assert len(shape_bytes(64, 64)) == 1 and len(shape_bytes(65, 65)) == 2 and len(shape_bytes(16, 12)) == 2
    assert len(shape_bytes(321, 481)) == 4 and len(shape_bytes(65535, 1)) == 4
    for h, w in ((64, 64), (12, 20), (321, 481), (1, 65535), (65535, 65535)):
        head = Header(h, w, 2**64 - 5, b"abc", b"xyz")
        packed = head.pack()
        assert len(packed) == 22 + len(shape_bytes(h, w)) == header_length(packed + b"chunk bytes")
        assert Header.unpack(packed) == head and head.shape_bits == 8 * len(shape_bytes(h, w))
    old = Header(64, 64, 7, b"abc", b"xyz", version=1)
    assert len(old.pack()) == HEADER_SIZE == 26 and Header.unpack(old.pack()) == old and old.shape_bits == 32
    with pytest.raises(StreamError, match="does not fit"):
        Header(65536, 4, 1, b"abc", b"xyz").pack()
    with pytest.raises(StreamError, match="expected 23"):
        Header.unpack(Header(64, 64, 7, b"abc", b"xyz").pack() + b"\0")
    with pytest.raises(StreamError, match="version 3"):
        Header.unpack(b"DC\x03" + bytes(20))


def test_gain_ramp() -> None:
    cfg = CodecConfig()  # 2**12 candidates, gain 1.2: no gain up to 3 bits, full gain from 7 bits
    assert chunk_gains(np.array([0.5, 3.0, 4.0, 5.0, 7.0, 12.0]), cfg) == pytest.approx([1, 1, 1.05, 1.1, 1.2, 1.2])
    wide = dataclasses.replace(cfg, chunk_bits=14, candidate_log2=14)  # the ramp follows the slack
    assert chunk_gains(np.array([5.0, 7.0, 9.0]), wide) == pytest.approx([1.0, 1.1, 1.2])


def test_step_code_round_trips_counts_and_indices() -> None:
    """Exact round trip of the step integers, including counts that escape the joined classes (big jumps,
    drops, a first step of many chunks) and indices at both ends of the range."""
    code = StepCode.for_config(CodecConfig(), 2)
    assert code.drift_q == 27  # 0.4 * expm1(9.5 / 40) in 1/256
    rng = np.random.default_rng(3)
    counts = [1, 1, 2, 2, 3, 5, 9, 40, 41, 45, 44, 1, 300, 301, 1000, 1100, 1, 1]
    steps = [(c, rng.integers(0, 4096, c)) for c in counts]
    steps[0][1][0] = 0
    steps[1][1][0] = 4095
    writer = StepWriter()
    previous, ends = 0, []
    for count, indices in steps:
        count_bits, index_bits = writer.write_step(count, previous, indices, code)
        assert count_bits >= 0 and index_bits > 0
        previous = count
        ends.append(writer.bit_length())
    data = writer.to_bytes()
    for cut in (len(steps), 5):  # the whole stream, and a byte prefix holding the first 5 steps
        reader = StepReader(data[: (ends[cut - 1] + 7) // 8])
        previous = 0
        for count, indices in steps[:cut]:
            got_count, got = reader.read_step(previous, code)
            assert got_count == count and np.array_equal(got, indices)
            previous = count
        assert reader.consumed_bits == ends[cut - 1]
        reader.check_within("the last step")


def test_near_certain_count_costs_under_a_bit() -> None:
    """A one-chunk step after a one-chunk step: the count shares the bucket's Huffman symbol."""
    code = StepCode.for_config(CodecConfig(), 2)
    writer = StepWriter()
    writer.write_step(1, 0, np.array([300]), code)
    total = [writer.write_step(1, 1, np.array([n]), code) for n in (37, 900, 5, 2000)]
    assert all(c < 0.5 for c, _ in total)


def test_v2_round_trip_and_v1_on_request(gaussian_model: GaussianModel) -> None:
    x = smooth_images(2, 12, 20)
    v2, v1 = DiffcCodec(gaussian_model, SMALL), DiffcCodec(gaussian_model, SMALL, stream_version=1)
    assert v2.stream_version == 2 and v2.fingerprint == v1.fingerprint  # streams name their own version
    s2, s1 = v2.compress(x, [4, 5]), v1.compress(x, [4, 5])
    assert [s.version for s in s2 + s1] == [2, 2, 1, 1]
    assert len(s2[0].header) == 24 and len(s1[0].header) == 26  # 12x20: two shape bytes
    for k in range(1, SMALL.num_steps + 1):
        cut = [Encoded(header=s.header, chunks=s.chunks[:k]) for s in s2]
        assert np.array_equal(v1.decompress(cut, method="denoise"), v2.decompress(s2, k, method="denoise"))
    # one codec decodes both versions, even in one call, and containers of both versions round trip
    mixed = v2.decompress([s1[0], s2[1]], method="flow")
    assert np.array_equal(mixed[0], v2.decompress([s1[0]], method="flow")[0])
    for s in (s1[0], s2[0]):
        back = EncodedImage.from_bytes(s.to_bytes())
        assert back.header == s.header and back.chunks == s.chunks
    with pytest.raises(StreamError, match="truncated"):
        v2.decompress([Encoded(header=s2[0].header, chunks=[*s2[0].chunks[:-1], s2[0].chunks[-1][:-2]])])
    with pytest.raises(InvalidInputError, match="stream version 3"):
        DiffcCodec(gaussian_model, SMALL, stream_version=3)
    no_tables = dataclasses.replace(SMALL, chunk_bits=8, candidate_log2=12, target_gain=1.25)
    assert DiffcCodec(gaussian_model, no_tables).stream_version == 1  # a setting without version-2 tables


def test_breakdown_adds_up_and_v2_cuts_the_fixed_costs(gaussian_model: GaussianModel) -> None:
    x = smooth_images(2, 16, 16, seed=4)
    codecs = {v: DiffcCodec(gaussian_model, SMALL, stream_version=v) for v in (1, 2)}
    rows = {v: breakdown(codec, x, (1, 3, 6), entropy_trials=200) for v, codec in codecs.items()}
    for v, result in rows.items():
        assert result["stream_version"] == v
        for row in result["rows"]:
            # the stream is its shape, counts, indices and the padding to the prefix's last byte, exactly
            parts = row["shape"] + row["counts"] + row["indices"] + row["padding"]
            assert row["stream"] == pytest.approx(parts, abs=0.02)
            assert 0 <= row["padding"] < 8
            assert row["table_loss"] == pytest.approx(row["indices"] - row["index_exact"], abs=0.02)
    first1, first2 = rows[1]["rows"][0], rows[2]["rows"][0]
    assert (first1["shape"], first2["shape"]) == (32, 8)
    assert first1["header_fixed"] == first2["header_fixed"] == 8 * 22
    assert first2["counts"] < first1["counts"]
    assert first2["stream"] < first1["stream"] - 24


def test_an_edited_count_is_refused_before_any_large_code_is_built() -> None:
    """A count bucket near 2**31 (an edited stream) fails at once, in both versions: a step holds at most
    as many chunks as bits left (docs/reliability.md, *Untrusted archives*)."""
    import constriction

    from diffc_pipeline.codecs.diffc import index_code

    for version in (1, 2):
        code = StepCode.for_config(CodecConfig(), version)
        enc = constriction.symbol.QueueEncoder()
        if version == 2:  # the escape symbol of the joined count code, then a huge escaped change
            groups = index_code._class_groups(code, 1)
            enc.encode_symbol(index_code.COUNT_CLASSES * 13, index_code._joint_trees(code.key, 1, groups)[0])
        enc.encode_symbol(30, index_code._count_trees()[0])
        data = enc.get_compressed()[0].astype("<u4").tobytes() + bytes(64)
        with pytest.raises(StreamError, match="bucket 30 exceeds"):
            StepReader(data).read_step(1, code)


def test_a_step_with_more_chunks_than_dimensions_round_trips(gaussian_model: GaussianModel) -> None:
    """A 4x4 image sent to high SNR: late steps carry more than 12 bits per dimension, so more chunks than
    its 48 dimensions (some empty); the reader's count bound must not refuse them."""
    cfg = dataclasses.replace(SMALL, logsnr_end=12.0)
    codec = DiffcCodec(gaussian_model, cfg)
    codec.step_log = []
    x = smooth_images(1, 4, 4, seed=9)
    s = codec.compress(x, [3])
    assert max(step["count"] for step in codec.step_log[0]) > 48
    again = codec.decompress([EncodedImage.from_bytes(s[0].to_bytes())], method="denoise")
    assert np.array_equal(again, codec.decompress(s, method="denoise"))
