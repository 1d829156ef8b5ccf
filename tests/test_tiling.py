"""Tiled network evaluation: the grid covers every pixel once, a halo at least the receptive field changes
nothing, and a DiffC stream of a tiled image decodes exactly in another codec instance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffc_pipeline.codecs.diffc.codec import DiffcCodec
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.models import load_model
from diffc_pipeline.models.tiling import Tiling, evaluate_tiled
from diffc_pipeline.pipeline.stages import split_by_pixels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("height,width", [(40, 56), (48, 48), (8, 200), (64, 16)])
def test_the_cores_cover_every_pixel_exactly_once(height: int, width: int) -> None:
    tiling = Tiling(tile=16, halo=8, above=0)
    hits = np.zeros((height, width), dtype=int)
    for rows, cols, core_rows, core_cols in tiling.windows(height, width):
        assert 0 <= rows.start < rows.stop <= height and 0 <= cols.start < cols.stop <= width
        assert rows.stop - rows.start <= 16 + 2 * 8 and cols.stop - cols.start <= 16 + 2 * 8
        hits[rows, cols][core_rows, core_cols] += 1
    assert (hits == 1).all()


def test_small_images_are_one_window() -> None:
    assert Tiling(tile=16, halo=8, above=48 * 48).windows(48, 48) == [(slice(0, 48),) * 2 + (slice(0, 48),) * 2]
    assert len(Tiling(tile=16, halo=8, above=48 * 48 - 1).windows(48, 48)) == 9


def test_a_halo_as_wide_as_the_receptive_field_changes_nothing() -> None:
    torch.manual_seed(0)
    # three 3x3 convolutions: receptive field radius 3 <= halo 4 (zero padding only at the image border)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)]).double()

    def fn(z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        return net(z) * logsnr.view(-1, 1, 1, 1)

    z, lam = torch.randn(3, 3, 40, 56, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    with torch.no_grad():
        whole = fn(z, lam)
        tiled = evaluate_tiled(fn, z, lam, Tiling(tile=16, halo=4, above=0))
        # a halo narrower than the field does change the seams: the test can tell
        narrow = evaluate_tiled(fn, z, lam, Tiling(tile=16, halo=1, above=0))
        # groups of images, each call at most 2 x 40 x 56 pixels
        grouped = evaluate_tiled(fn, z, lam, Tiling(tile=16, halo=4, above=2 * 40 * 56))
    assert torch.allclose(tiled, whole, atol=1e-12)
    assert not torch.allclose(narrow, whole, atol=1e-6)
    assert torch.allclose(grouped, whole, atol=1e-12)


def test_split_by_pixels() -> None:
    assert split_by_pixels(list(range(5)), 100, 250) == [[0, 1], [2, 3], [4]]
    assert split_by_pixels(list(range(3)), 1000, 10) == [[0], [1], [2]]  # larger than the budget: one each


def test_a_tiled_image_decodes_exactly_in_another_codec() -> None:
    """The built-in model tiled on a small grid: a fresh codec (another process's view: nothing shared but the
    stream) decodes the same pixels as the encoder's own, and tiling costs little rate."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 6, 6, 3)).astype(np.float64)
    img = np.kron(base, np.ones((1, 8, 8, 1))) + rng.normal(0, 6, (1, 48, 48, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    config = CodecConfig(num_steps=8)
    tiled_model = load_model("builtin")
    tiled_model.tiling = Tiling(tile=16, halo=8, above=32 * 32)
    assert len(tiled_model.tiling.windows(48, 48)) == 9
    streams = DiffcCodec(tiled_model, config).compress(img, [7])
    other = load_model("builtin")
    other.tiling = Tiling(tile=16, halo=8, above=32 * 32)
    a = DiffcCodec(tiled_model, config).decompress(streams, method="denoise")
    b = DiffcCodec(other, config).decompress(streams, method="denoise")
    np.testing.assert_array_equal(a, b)
    untiled = DiffcCodec(load_model("builtin"), config).compress(img, [7])
    bits = [sum(len(c) for c in s.chunks) * 8 for s in (streams[0], untiled[0])]
    assert abs(bits[0] - bits[1]) <= 0.05 * bits[1], bits


def test_per_pixel_algebra_in_pieces_is_bit_identical_to_whole_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The denoiser, the chain's update and the reconstructions run in float64 pieces (bounded temporaries on
    large photos): cutting them must not change a single bit, for one large image or a batch of small ones."""
    from diffc_pipeline.codecs.diffc import reconstruct as rec
    from diffc_pipeline.models import base

    model = load_model("gaussian")
    gen = torch.Generator().manual_seed(3)
    for shape in [(1, 3, 56, 72), (5, 3, 16, 16)]:
        z = torch.randn(shape, generator=gen)
        lam = torch.linspace(-2.0, 3.0, shape[0])
        results = []
        for piece in (1 << 20, 1000):  # whole images, then pieces of 1,000 elements (several per image)
            monkeypatch.setattr(base, "PIECE_ELEMENTS", piece)
            results.append(
                [rec.reconstruct(model, z, lam, method, 3, list(range(shape[0])), 4.0) for method in rec.METHODS]
            )
        for whole, pieces in zip(*results, strict=True):
            assert whole.dtype == torch.float32 and torch.equal(whole, pieces)


def test_chunk_and_step_kl_in_blocks_match_the_whole_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffc_pipeline.codecs.diffc import channel

    d = np.random.default_rng(5).standard_normal(3 * 40 * 56).astype(np.float32)
    config = CodecConfig()
    layout = channel.step_layout(d.size, 17, seed=9, step=3, config=config)
    assert layout.seg_dims.dtype == np.int32 and sorted(layout.seg_dims[layout.seg_mask]) == list(range(d.size))
    whole, whole_step = channel.chunk_kl_bits(d, layout), channel.step_kl_bits(d)
    monkeypatch.setattr(channel, "_WORK_ENTRIES", 640)  # 10 segment rows, 640 values per block
    assert np.array_equal(channel.chunk_kl_bits(d, layout), whole)
    assert channel.step_kl_bits(d) == pytest.approx(whole_step, rel=1e-12)
    assert whole.sum() == pytest.approx(whole_step, rel=1e-9)
    assert whole_step == pytest.approx(0.5 * float(np.sum(d.astype(np.float64) ** 2)) / np.log(2), rel=1e-12)
