"""The DiffC codec through its public API: round trips, progressive prefixes, stream errors, and the Gaussian
theory of the paper."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from diffc_pipeline.codecs import Encoded, resolve
from diffc_pipeline.codecs.diffc.bitstream import EncodedImage
from diffc_pipeline.codecs.diffc.codec import DiffcCodec
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.codecs.diffc.reconstruct import reconstruct
from diffc_pipeline.errors import InvalidInputError, ModelMismatchError, StreamError
from diffc_pipeline.models.gaussian import GaussianModel
from diffc_pipeline.models.storage import load_unet_model, save_unet_model
from diffc_pipeline.models.unet import UNet, UNetConfig

SMALL = CodecConfig(num_steps=6, logsnr_start=-5.0, logsnr_end=3.0, flow_steps=4, ancestral_steps=4)


def _images(b: int = 3, h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    """``(b, h, w, 3)`` uint8: a random low-resolution field upsampled, plus a little noise (smooth-ish)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 3, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(b, 3, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


@pytest.fixture(scope="module")
def codec() -> DiffcCodec:
    return DiffcCodec(GaussianModel.default(), SMALL)


@pytest.fixture(scope="module")
def tiny_unet_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = UNet(UNetConfig(widths=(16, 16), blocks_per_level=1, emb_dim=32, groups=8))
    for p in net.parameters():  # an untrained but non-trivial network: its outputs depend on z and log-SNR
        torch.nn.init.normal_(p, std=0.05)
    directory = tmp_path_factory.mktemp("tiny-unet")
    save_unet_model(directory, net, {"kind": "linear", "gamma_min": -13.3, "gamma_max": 5.0}, name="tiny")
    return str(directory)


def test_the_registry_builds_the_same_codec(codec: DiffcCodec) -> None:
    built = resolve("diffc", {k: str(v) for k, v in dataclasses.asdict(SMALL).items()}, "gaussian").build()
    assert isinstance(built, DiffcCodec) and built.fingerprint == codec.fingerprint
    d = built.describe()
    assert d["name"] == "diffc" and d["num_chunks"] == SMALL.num_steps and d["progressive"]
    assert d["model"]["sha256"] == codec.model.identity.sha256 and len(d["details"]["logsnrs"]) == 7


def test_progressive_prefixes_decode(codec: DiffcCodec) -> None:
    x = _images()
    streams = codec.compress(x, [7, 8, 9])
    sizes = [streams[0].prefix_bits(k) for k in range(codec.num_chunks + 1)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0] == 8 * len(streams[0].header)
    for k in range(codec.num_chunks + 1):
        # a stream cut to k chunks (what an archive reader fetches) decodes as the first k chunks of the whole
        truncated = [Encoded(header=s.header, chunks=s.chunks[:k]) for s in streams]
        got = codec.decompress(truncated, method="denoise")
        assert got.shape == x.shape and got.dtype == np.uint8
        assert np.array_equal(got, codec.decompress(streams, k, method="denoise"))
    # more bits, better reconstruction
    errors = [_mse(codec.decompress(streams, k, method="denoise"), x) for k in (1, 3, codec.num_chunks)]
    assert errors[0] > errors[1] > errors[2]


def test_sweep_reconstructs_what_decompress_decodes(codec: DiffcCodec) -> None:
    x = _images()
    result = codec.sweep(x, [7, 8, 9], prefixes=[2, codec.num_chunks], methods=("denoise", "flow"))
    for method in ("denoise", "flow"):
        for k in (2, codec.num_chunks):
            assert np.array_equal(result.recon[method][k], codec.decompress(result.streams, k, method=method))


def test_per_image_prefix_lengths(codec: DiffcCodec) -> None:
    x = _images()
    streams = codec.compress(x, [4, 5, 6])
    mixed = codec.decompress(streams, [1, 3, 6], method="flow")
    for i, k in enumerate([1, 3, 6]):
        alone = codec.decompress([streams[i]], k, method="flow")
        assert np.abs(mixed[i].astype(int) - alone[0].astype(int)).max() <= 1


@pytest.mark.parametrize("precision", [None, "bfloat16"])
def test_fresh_process_different_batch_size(tiny_unet_dir: str, tmp_path, precision: str | None) -> None:
    """Also with the network under bfloat16 autocast: the precision travels in the config, so the decoder's
    network runs at the encoder's."""
    model = load_unet_model(tiny_unet_dir)
    config = dataclasses.replace(SMALL, network_precision=precision)
    codec = DiffcCodec(model, config)
    x = _images(b=4, h=16, w=16, seed=3)
    streams = codec.compress(x, [11, 12, 13, 14])
    here = codec.decompress(streams, method="flow")
    for i, s in enumerate(streams):
        (tmp_path / f"{i}.dfc").write_bytes(s.to_bytes())
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from diffc_pipeline.codecs.diffc.bitstream import EncodedImage
        from diffc_pipeline.codecs.diffc.codec import DiffcCodec
        from diffc_pipeline.codecs.diffc.config import CodecConfig
        from diffc_pipeline.models.storage import load_unet_model
        torch.set_num_threads(1)
        codec = DiffcCodec(load_unet_model({tiny_unet_dir!r}), CodecConfig.from_dict({config.to_dict()!r}))
        out = [codec.decompress([EncodedImage.from_bytes(open(f"{tmp_path}/{{i}}.dfc", "rb").read())], method="flow")
               for i in range(4)]
        np.save("{tmp_path}/out.npy", np.concatenate(out))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    there = np.load(tmp_path / "out.npy")

    def psnr(a: np.ndarray) -> float:
        return 10 * math.log10(255**2 / _mse(a, x))

    assert abs(psnr(here) - psnr(there)) < 0.05


def test_bfloat16_network_is_a_stream_option(tiny_unet_dir: str) -> None:
    """``network_precision=bfloat16`` runs the network under autocast (eps close to, not equal to, float32),
    is part of the configuration id (a float32 decoder refuses its streams by name), and "float32" spelled
    out is the default: the same fingerprint as streams made before the option existed."""
    model = load_unet_model(tiny_unet_dir)
    fast = DiffcCodec(model, dataclasses.replace(SMALL, network_precision="bfloat16"))
    plain = DiffcCodec(model, SMALL)
    z, lam = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.full((2,), 1.0)
    eps32, eps16 = plain.model.predict_eps(z, lam), fast.model.predict_eps(z, lam)
    assert eps16.dtype == torch.float32 and not torch.equal(eps16, eps32)
    assert float((eps16 - eps32).abs().max()) < 0.05 * float(eps32.abs().max())
    assert fast.model.identity == plain.model.identity and fast.fingerprint != plain.fingerprint
    spelled = CodecConfig(**{**dataclasses.asdict(SMALL), "network_precision": "float32"})
    assert spelled.network_precision is None and spelled.fingerprint() == SMALL.fingerprint()
    streams = fast.compress(_images(b=1, h=16, w=16), [3])
    with pytest.raises(ModelMismatchError, match="config"):
        plain.decompress(streams)
    with pytest.raises(InvalidInputError, match="network_precision"):
        CodecConfig(network_precision="float16")


def test_real_bits_track_kl(codec: DiffcCodec) -> None:
    streams = codec.compress(_images(b=2, h=32, w=32), [1, 2])
    kl = sum(sum(s.estimated_bits) for s in streams)
    bits = sum(s.prefix_bits() - 8 * len(s.header) for s in streams)
    assert kl > 500
    # with the default 2**12 candidates for 12-bit chunks an index carries at most 12 bits, so chunks above
    # their budget are sent approximately and the bits can fall a little below the trajectory's KL
    assert 0.8 * kl < bits < 1.6 * kl


def test_ideal_channel_charges_kl_and_cannot_be_decoded() -> None:
    ideal = DiffcCodec(GaussianModel.default(), SMALL, channel="ideal")
    streams = ideal.compress(_images(b=1), [5])
    assert all(c == b"" for c in streams[0].chunks) and sum(streams[0].estimated_bits) > 0
    with pytest.raises(StreamError, match="ideal"):
        ideal.decompress(streams)


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("images", "seeds", "message"),
    [
        (np.zeros((1, 8, 8, 3)), [1], "uint8"),
        (np.zeros((1, 8, 8, 1), np.uint8), [1], "shape"),
        (np.zeros((8, 8, 3), np.uint8), [1], "shape"),
        (np.zeros((1, 0, 8, 3), np.uint8), [1], "empty"),
        (np.zeros((2, 8, 8, 3), np.uint8), [1], "seeds"),
        (np.zeros((1, 8, 8, 3), np.uint8), [-1], "64-bit"),
    ],
)
def test_bad_images_rejected(codec: DiffcCodec, images, seeds, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        codec.compress(images, seeds)


def test_nan_rejected(codec: DiffcCodec) -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        codec.compress_float(x, [1])


def test_truncated_stream(codec: DiffcCodec) -> None:
    s = codec.compress(_images(b=1, h=32, w=32), [3])[0]
    cut = EncodedImage(header=s.header, chunks=[*s.chunks[:-1], s.chunks[-1][: len(s.chunks[-1]) // 2]])
    with pytest.raises(StreamError, match="truncated"):
        codec.decompress([cut])
    with pytest.raises(StreamError, match="container"):
        EncodedImage.from_bytes(s.to_bytes()[:-3])


def test_corrupted_header_and_container(codec: DiffcCodec) -> None:
    s = codec.compress(_images(b=1), [3])[0]
    bad = bytearray(s.header)
    bad[10] ^= 0xFF
    with pytest.raises(StreamError, match="checksum"):
        EncodedImage(header=bytes(bad), chunks=s.chunks)
    blob = bytearray(s.to_bytes())
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(StreamError, match="checksum"):
        EncodedImage.from_bytes(bytes(blob))
    with pytest.raises(StreamError, match="magic"):
        EncodedImage.from_bytes(b"garbage" * 10)


def test_other_model_or_config_refused(codec: DiffcCodec) -> None:
    s = codec.compress(_images(b=1), [3])
    other_model = DiffcCodec(GaussianModel.unit(), SMALL)
    with pytest.raises(ModelMismatchError, match="model"):
        other_model.decompress(s)
    other_config = DiffcCodec(codec.model, CodecConfig(num_steps=7, logsnr_end=3.0))
    with pytest.raises(ModelMismatchError, match="configuration"):
        other_config.decompress(s)
    with pytest.raises(StreamError, match="cannot decode 9 chunks"):
        codec.decompress(s, 9)
    # reconstruction step counts are the receiver's business: a codec that differs only there decodes the
    # same latents, and its denoised output is bit-identical
    receiver = DiffcCodec(codec.model, dataclasses.replace(SMALL, flow_steps=9, ancestral_steps=11))
    assert np.array_equal(receiver.decompress(s, method="denoise"), codec.decompress(s, method="denoise"))
    with pytest.raises(InvalidInputError, match="method"):
        codec.decompress(s, method="magic")
    with pytest.raises(InvalidInputError, match="no decode option steps; valid decode options: method, recon_steps"):
        codec.parse_decode_options({"steps": 3})


# ---- Gaussian theory (Theis et al. 2022) with the real channel ---------------------------------------------
# A high-fidelity channel setting (8-bit chunks, 2**14 candidates, gain 1.15), cheap on these 3,456-dimension
# images; the default (12-bit chunks, 2**12 candidates) trades fidelity for bits (docs/benchmarks.md).
THEORY = CodecConfig(
    num_steps=48, logsnr_start=-5.0, logsnr_end=4.0, chunk_bits=8, candidate_log2=14, target_gain=1.15
)


@pytest.fixture(scope="module")
def gaussian_chain():
    """Unit-variance Gaussian data sent to log-SNR 4 through the real channel."""
    model = GaussianModel.unit()
    codec = DiffcCodec(model, THEORY)
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    streams = codec.compress_float(x, [21, 22])  # 3,456 dimensions per image
    return model, codec, x, streams


def test_gaussian_theory_distortions_with_real_channel(gaussian_chain) -> None:
    _model, codec, x, streams = gaussian_chain
    s2 = 1.0 / (1.0 + math.exp(THEORY.logsnr_end))  # noise variance at the last step
    d_a = float(((codec.decompress_float(streams, method="ancestral", recon_steps=100) - x) ** 2).mean())
    d_f = float(((codec.decompress_float(streams, method="flow", recon_steps=60) - x) ** 2).mean())
    # DiffC-A sits ~5% below theory: the target gain's overshoot makes z slightly more informative than
    # nominal (docs/benchmarks.md); measured -6.6%, -4.1%, -4.4% for seed pairs (21, 22), (1, 2), (5, 6)
    assert -0.09 < d_a / (2 * s2) - 1 < 0.02
    assert d_f == pytest.approx(2 * (1 - math.sqrt(1 - s2)), rel=0.05)
    assert 10 * math.log10(d_a / d_f) >= 2.5  # DiffC-F gains ~3 dB over DiffC-A at high rate


def test_gaussian_rate_close_to_kl(gaussian_chain) -> None:
    _, _codec, x, streams = gaussian_chain
    kl = sum(sum(s.estimated_bits) for s in streams)
    bits = sum(s.prefix_bits() - 8 * len(s.header) for s in streams)
    # discrete-time chain rate of exact sampling, sum_k 0.5 dSNR mmse_k, for unit-variance Gaussian data
    lams = torch.tensor(THEORY.logsnrs())
    snr = lams.exp()
    exact = float((0.5 * (snr[1:] - snr[:-1]) / (1 + snr[:-1])).sum()) * x.numel() / math.log(2)
    assert kl == pytest.approx(exact, rel=0.05)  # the chain carries what the exact chain would
    assert bits < 1.5 * exact  # measured: 1.41x (index code overhead of ~3 bits per 8-bit chunk)


def test_reconstruct_rejects_bad_method(codec: DiffcCodec) -> None:
    z = torch.zeros(1, 3, 4, 4)
    with pytest.raises(InvalidInputError):
        reconstruct(codec.model, z, torch.zeros(1), "magic", 3, [1], 13.3)


def test_stream_version_1_fixture_decodes_bit_identically() -> None:
    """Streams written by the release before stream version 2 (tests/fixtures/stream_v1) decode to the very
    pixels they decoded to then: old archives keep their meaning."""
    import hashlib
    import json
    from pathlib import Path

    from diffc_pipeline.models import load_model

    folder = Path(__file__).parent / "fixtures" / "stream_v1"
    expected = json.loads((folder / "expected.json").read_text())
    codec = DiffcCodec(load_model(expected["model"]), CodecConfig.from_dict(expected["config"]))
    assert codec.fingerprint == expected["fingerprint"]
    for name, rec in expected["streams"].items():
        stream = EncodedImage.from_bytes((folder / f"{name}.dfc").read_bytes())
        assert [len(c) for c in stream.chunks] == rec["chunk_bytes"]
        for key, digest in rec.items():
            if "@" in key:
                method, k = key.split("@")
                got = codec.decompress([stream], int(k), method=method)
                assert hashlib.sha256(got.tobytes()).hexdigest() == digest, (name, key)
