"""The reverse-channel coder on its own: round trips, the candidate pool, and the selected sample's law."""

from __future__ import annotations

import numpy as np
import pytest

from diffc_pipeline.codecs.diffc.channel import _assemble, _pool, rcc_decode, rcc_encode, step_layout
from diffc_pipeline.codecs.diffc.config import CodecConfig
from diffc_pipeline.errors import DiffcError, InvalidInputError, ModelMismatchError

SPARSE = CodecConfig(chunk_bits=8, candidate_log2=12, target_gain=1.0, pool_rows_log2=8, pool_width=64)
FULL = CodecConfig(chunk_bits=8, candidate_log2=12, target_gain=1.0)


def _target(dims: int, kl_bits: float, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).standard_normal(dims)
    return (d * np.sqrt(2 * kl_bits * np.log(2)) / np.linalg.norm(d)).astype(np.float32)


@pytest.mark.parametrize("config", [FULL, SPARSE], ids=["one-row-per-candidate", "fewer-rows"])
def test_round_trip(config: CodecConfig) -> None:
    d = _target(3000, 40.0, 0)
    num_chunks, indices, u = rcc_encode(d, 99, 3, config)
    assert num_chunks == 5 and indices.shape == (5,) and indices.max() < 1 << config.candidate_log2
    assert np.array_equal(rcc_decode(num_chunks, indices, d.size, 99, 3, config), u)


def test_fewer_rows_keeps_candidates_distinct() -> None:
    """Every chunk combines rows of >= 2 segments, so its 2**12 candidates are (almost all) distinct although
    the pool holds only 2**8 rows."""
    dims, n = 400, 1 << SPARSE.candidate_log2
    layout = step_layout(dims, 2, seed=5, step=1, config=SPARSE)
    assert np.bincount(layout.seg_chunk).min() >= 2
    pool = _pool(1, SPARSE, layout.pool_width)[0]
    assert pool.shape[0] == 256
    first_chunk = np.stack([_assemble(layout, pool, np.array([i, 0]), dims) for i in range(n)])
    chunk_dims = layout.seg_dims[layout.seg_chunk == 0][layout.seg_mask[layout.seg_chunk == 0]]
    distinct = len(np.unique(first_chunk[:, chunk_dims].round(5), axis=0))
    assert distinct > 0.99 * n
    # marginally N(0, I): moments of all candidates' coordinates
    values = first_chunk[:, chunk_dims]
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02


def _selected_projection(config: CodecConfig, trials: int) -> np.ndarray:
    """Projection of the communicated sample on d, minus |d|: exactly N(0, 1) for an exact sampler."""
    out = []
    for t in range(trials):
        d = _target(256, 7.0, t)
        _, _, u = rcc_encode(d, t, 0, config)
        out.append(float(u @ d) / float(np.linalg.norm(d)) - float(np.linalg.norm(d)))
    return np.array(out)


def test_fewer_rows_samples_like_iid_candidates() -> None:
    """A 7-bit chunk with 2**12 candidates: the selected sample falls short of the target by the same amount
    whether candidates have their own pool rows or combine rows of a 2**8-row pool (1-D simulation of
    ordered random coding, 3,000 trials: mean -0.28, standard deviation 0.83)."""
    full, sparse = _selected_projection(FULL, 300), _selected_projection(SPARSE, 300)
    for got in (full, sparse):  # standard error of each mean ~0.05
        assert abs(got.mean() + 0.28) < 0.15 and 0.65 < got.std() < 1.0


def test_pool_rows_validated_and_old_streams_keep_their_fingerprint() -> None:
    with pytest.raises(InvalidInputError, match="pool_rows_log2"):
        CodecConfig(candidate_log2=12, pool_rows_log2=13)
    assert CodecConfig().pool_rows == 4096 and SPARSE.pool_rows == 256
    # the default configuration's fingerprint before pool_rows_log2 existed (commit 3bbd878): archives and
    # streams written then still decode
    assert CodecConfig().fingerprint() == "2b214d67a95b27b0f22587d0e64ace8d39d35885883fdde7e7b528b4e981e4bc"
    assert CodecConfig(pool_rows_log2=12).fingerprint() != CodecConfig().fingerprint()


def test_codec_round_trip_with_fewer_pool_rows_and_the_cli_override() -> None:
    """The dense opt-in channel end to end (standalone streams, Gaussian model), as `--codec-opt` spells it."""
    import numpy as np

    from diffc_pipeline.cli._common import parse_pairs
    from diffc_pipeline.codecs import resolve

    keys = ["chunk_bits=10", "candidate_log2=14", "pool_rows_log2=10", "pool_width=128", "target_gain=1.15"]
    spec = resolve("diffc", {**parse_pairs(keys, "--codec-opt"), "num_steps": "5"}, "gaussian")
    assert spec.options == {
        "chunk_bits": 10, "candidate_log2": 14, "pool_rows_log2": 10, "pool_width": 128, "target_gain": 1.15,
        "num_steps": 5,
    }
    with pytest.raises(DiffcError, match="not a valid int"):
        resolve("diffc", {"pool_rows_log2": "many"})
    with pytest.raises(DiffcError, match="no option pool_rows; valid options: num_steps, logsnr_start"):
        resolve("diffc", {"pool_rows": "3"})
    options = {**spec.options, "logsnr_end": 3.0, "flow_steps": 4}
    codec = resolve("diffc", options, "gaussian").build()
    x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    streams = codec.compress(x, [1, 2])
    again = resolve("diffc", options, "gaussian").build().decompress(streams, method="denoise")
    assert np.array_equal(again, codec.decompress(streams, method="denoise"))
    with pytest.raises(ModelMismatchError):  # another pool is another stream format
        resolve("diffc", {**options, "pool_rows_log2": 11}, "gaussian").build().decompress(streams)
