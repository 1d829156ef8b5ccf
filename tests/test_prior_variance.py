"""The prior's variance (``prior_variance="count"``, issue 20 item 4): the widened KL against theory, exact
round trips, pixels independent of the process and the batch, no side information in the stream, and the
default configuration's streams unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from synthetic import smooth_images

from diffc_pipeline.benchmarks.prior_variance import widened_fidelity
from diffc_pipeline.benchmarks.rate_breakdown import real_vs_ideal
from diffc_pipeline.codecs import resolve
from diffc_pipeline.codecs.diffc.bitstream import EncodedImage
from diffc_pipeline.codecs.diffc.channel import (
    LN2,
    _assemble,
    _pool,
    prior_s2,
    rcc_decode,
    rcc_encode,
    step_layout,
    step_prior,
    widened_kl_nats,
)
from diffc_pipeline.codecs.diffc.codec import DiffcCodec
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.codecs.diffc.index_code import StepWriter
from diffc_pipeline.codecs.tensors import to_float
from diffc_pipeline.errors import InvalidInputError
from diffc_pipeline.models.gaussian import GaussianModel

SMALL = CodecConfig(num_steps=6, logsnr_start=-5.0, logsnr_end=3.0, flow_steps=4, ancestral_steps=4)
WIDE = dataclasses.replace(SMALL, prior_variance="count")


def test_widened_kl_against_theory() -> None:
    n = 12288
    for step_bits, saving in ((50, 0.003), (1000, 0.052), (3000, 0.14)):  # the figures
        sq = 2 * step_bits * LN2
        best = float(widened_kl_nats(sq, n, 1 + sq / n))
        assert best == pytest.approx(n / 2 * math.log1p(sq / n), rel=1e-12)
        assert 1 - best / (sq / 2) == pytest.approx(saving, abs=0.002)
        for off in (0.99, 1.01):  # the optimum is a minimum
            assert widened_kl_nats(sq, n, (1 + sq / n) * off) > best
        assert widened_kl_nats(sq, n, 1.0) == pytest.approx(sq / 2, rel=1e-12)  # the model's prior: |d|^2 / 2
    # the count-derived variance sits at most 2 C ln 2 / n below the optimum in ln s^2, which costs
    # (n / 2) (e^delta - 1 - delta) nats, and never more than the model's prior, at any step size
    rng = np.random.default_rng(0)
    for dims in (768, 12288):
        for _ in range(200):
            d = (rng.standard_normal(dims) * rng.uniform(0.01, 3.0)).astype(np.float32)
            count, s2, kl_bits = step_prior(d, WIDE)
            sq = float(np.dot(d.astype(np.float64), d))
            best_bits = float(widened_kl_nats(sq, dims, 1 + sq / dims)) / LN2
            delta = 2 * 12 * LN2 / dims
            bound = best_bits + dims / 2 * (math.expm1(delta) - delta) / LN2
            assert best_bits <= kl_bits <= min(bound, 0.5 * sq / LN2) + 1e-9
            assert (count - 1) * 12 < best_bits <= count * 12 + 1e-6 and s2 == prior_s2(count, dims, WIDE)
            assert (s2 == 1.0) == (count == 1)
    assert step_prior(d, SMALL)[1] == 1.0 and prior_s2(5, 100, SMALL) == 1.0


def test_channel_round_trip_and_samples_are_scaled_candidates() -> None:
    rng = np.random.default_rng(1)
    d = (rng.standard_normal(3 * 16 * 16) * 0.6).astype(np.float32)
    count, indices, u = rcc_encode(d, 9, 3, WIDE, 2)
    assert np.array_equal(u, rcc_decode(count, indices, d.size, 9, 3, WIDE))
    s2 = prior_s2(count, d.size, WIDE)
    assert s2 > 1.1  # |d|^2 / n = 0.36: a real widening, so the test can tell the priors apart
    layout = step_layout(d.size, count, 9, 3, WIDE)
    c = _assemble(layout, _pool(3, WIDE, layout.pool_width)[0], indices, d.size)
    assert np.array_equal(u, c * np.float32(math.sqrt(s2)))
    assert count < step_prior(d, SMALL)[0]  # fewer chunks than against the model's prior
    with pytest.raises(AssertionError):  # the model's prior regenerates another sample from the same integers
        np.testing.assert_array_equal(u, rcc_decode(count, indices, d.size, 9, 3, SMALL))


def test_codec_round_trip_is_exact(gaussian_model: GaussianModel) -> None:
    """The decoder's latents equal the encoder's at every step, and the streams differ from the default's."""
    x = smooth_images(2, 16, 24, seed=11)
    codec = DiffcCodec(gaussian_model, WIDE)
    steps = range(WIDE.num_steps + 1)
    streams, sent = codec._encode(to_float(x), [3, 4], capture=steps)
    _, got = codec._decode_latents(streams, [WIDE.num_steps] * 2, capture=steps)
    assert all(torch.equal(sent[k], got[k]) for k in steps)
    default = DiffcCodec(gaussian_model, SMALL).compress(x, [3, 4])
    assert codec.fingerprint != DiffcCodec(gaussian_model, SMALL).fingerprint
    assert sum(len(c) for c in streams[0].chunks) < sum(len(c) for c in default[0].chunks)
    with pytest.raises(Exception, match="configuration"):  # a default codec refuses the widened streams
        DiffcCodec(gaussian_model, SMALL).decompress(streams)


def test_ideal_chain_unchanged_and_its_rate_is_the_widened_kl(gaussian_model: GaussianModel) -> None:
    x = smooth_images(2, 16, 16, seed=2)
    steps = range(SMALL.num_steps + 1)
    narrow = DiffcCodec(gaussian_model, SMALL, channel="ideal")._encode(to_float(x), [1, 2], capture=steps)
    wide = DiffcCodec(gaussian_model, WIDE, channel="ideal")._encode(to_float(x), [1, 2], capture=steps)
    assert all(torch.equal(narrow[1][k], wide[1][k]) for k in steps)  # exact samples do not see the prior
    for a, b in zip(narrow[0], wide[0], strict=True):
        assert all(w <= n + 1e-9 for n, w in zip(a.estimated_bits, b.estimated_bits, strict=True))
        assert sum(b.estimated_bits) < 0.9 * sum(a.estimated_bits)  # 16x16 at log-SNR 3: large per-dim KLs


def test_no_side_information_in_the_stream(gaussian_model: GaussianModel) -> None:
    """The widened stream is exactly the step code of its counts and indices - nothing else is sent."""
    x = smooth_images(1, 16, 24, seed=5)
    codec = DiffcCodec(gaussian_model, WIDE)
    codec.step_log = []
    stream = codec.compress(x, [7])[0]
    writer, previous = StepWriter(), 0
    for step in codec.step_log[0]:
        writer.write_step(step["count"], previous, step["indices"], codec.code(2))
        previous = step["count"]
        assert writer.bit_length() == step["end_bits"]
    assert writer.to_bytes() == b"".join(stream.chunks)


def test_pixels_independent_of_batch_and_process(gaussian_model: GaussianModel, tmp_path) -> None:
    x = smooth_images(3, 16, 16, seed=8)
    codec = DiffcCodec(gaussian_model, WIDE)
    batch = codec.compress(x, [10, 11, 12])
    alone = [codec.compress(x[i : i + 1], [10 + i])[0] for i in range(3)]
    assert [s.to_bytes() for s in batch] == [s.to_bytes() for s in alone]
    pixels = codec.decompress(batch)
    assert np.array_equal(pixels[1:2], codec.decompress(alone[1:2]))
    for i, s in enumerate(batch):
        (tmp_path / f"{i}.dfc").write_bytes(s.to_bytes())
    code = (
        "import hashlib, sys\n"
        "from diffc_pipeline.codecs.diffc.bitstream import EncodedImage\n"
        "from diffc_pipeline.codecs.diffc.codec import DiffcCodec\n"
        "from diffc_pipeline.codecs.diffc.config import CodecConfig\n"
        "from diffc_pipeline.models.gaussian import GaussianModel\n"
        f"cfg = CodecConfig.from_dict({WIDE.to_dict()!r})\n"
        "codec = DiffcCodec(GaussianModel.default(), cfg)\n"
        f"s = [EncodedImage.from_bytes(open(sys.argv[1] + f'/{{i}}.dfc', 'rb').read()) for i in (2, 0)]\n"
        "print(hashlib.sha256(codec.decompress(s).tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(pixels[[2, 0]].tobytes()).hexdigest()


def test_default_streams_unchanged(gaussian_model: GaussianModel) -> None:
    """Streams of the default configuration are bit-identical to the release before the option (hashes taken
    at commit 7877c51), and so are the fingerprints archives and the stream_v1 fixture carry."""
    assert CodecConfig().fingerprint() == "2b214d67a95b27b0f22587d0e64ace8d39d35885883fdde7e7b528b4e981e4bc"
    codec = DiffcCodec(gaussian_model, SMALL)
    assert codec.fingerprint == "ceefd704e08bff8b4604d9aaf47ec0cf7eb29d8d43d1668011a89f17b4b52635"  # stream_v1's
    streams = codec.compress(smooth_images(2, 16, 24, seed=11), [3, 4])
    digest = hashlib.sha256(b"".join(s.to_bytes() for s in streams)).hexdigest()
    assert digest == "5b76ad4be67cabadbb9f77515ab5beac60182240bb4a8307e82b3494238cc6b2"
    pixels = hashlib.sha256(codec.decompress(streams).tobytes()).hexdigest()
    assert pixels == "b6fd2b450dc93978d8ce493c5c950ee1e9881362395da5050508ebf1b378f7c4"
    assert EncodedImage.from_bytes(streams[0].to_bytes()).chunks == streams[0].chunks


def test_option_parsing_and_bad_values() -> None:
    codec = resolve("diffc", {"prior_variance": "count"}, "gaussian").build()
    assert codec.config == CodecConfig(prior_variance="count")
    with pytest.raises(InvalidInputError, match="prior_variance"):
        resolve("diffc", {"prior_variance": "sent"}, "gaussian").build()
    assert CodecConfig.from_dict(WIDE.to_dict()) == WIDE


def test_the_norm_term_acts_on_the_variance_across_d() -> None:
    """The exact score (norm weight 1, the codec's) leaves excess variance across ``d`` with 2**12 candidates
    (the prior's s^2 is wider there); weight 1.5 brings it back to ~1 (a 1,024-bit step, 4 seeds,
    deterministic). Without the norm term the variance across would sit near s^2 = 1.12."""
    rows = {r["variant"]: r for r in widened_fidelity(CodecConfig(), [1024.0], 4, (1.0, 1.5))}
    assert rows["default"]["var_across"] == pytest.approx(1.0, abs=0.015)
    assert rows["widened, norm gain 1.0"]["var_across"] > 1.02
    assert rows["widened, norm gain 1.5"]["var_across"] == pytest.approx(1.0, abs=0.015)
    assert rows["widened, norm gain 1.5"]["mean_count"] < rows["default"]["mean_count"]


def test_real_vs_ideal_side_by_side(gaussian_model: GaussianModel) -> None:
    """The benchmark's side-by-side curves: the widened ideal rate is the ideal curve's PSNR at fewer bits, and
    each widened real stream is compared with the ideal channel and with its default counterpart."""
    cfg = dataclasses.replace(SMALL, num_steps=12)
    x = smooth_images(2, 16, 16, seed=3)
    out = real_vs_ideal(gaussian_model, x, [2], cfg, prior_variance="count", ancestral_images=1)
    curves = out["curves"]
    assert set(curves) == {"ideal", "v2", "v2+count", "ideal+count"}
    assert curves["ideal+count"]["psnr"] == curves["ideal"]["psnr"]
    assert all(w <= n for w, n in zip(curves["ideal+count"]["bpp"], curves["ideal"]["bpp"], strict=True))
    assert curves["ideal+count"]["bpp"][-1] < curves["ideal"]["bpp"][-1]
    assert {"v2", "v2+count", "v2+count vs v2", "ideal+count"} == set(out["bd_rate"])
    assert set(out["flow_minus_ancestral"]) == {"ideal", "v2", "v2+count"}
