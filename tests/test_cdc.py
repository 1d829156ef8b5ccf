"""The CDC codec: streams, determinism, prefixes, errors, training. A tiny seeded random model keeps these fast
and independent of trained weights; the tests marked ``shipped`` run on the release weights when present."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from diffc_pipeline.codecs.base import Encoded
from diffc_pipeline.codecs.cdc.bitstream import Header, chunk_check
from diffc_pipeline.codecs.cdc.codec import BUILTIN, CdcCodec, load_model, network_model
from diffc_pipeline.codecs.cdc.config import CdcOptions, ModelConfig
from diffc_pipeline.codecs.cdc.model import CdcModel
from diffc_pipeline.errors import DiffcError, InvalidInputError, ModelLoadError, ModelMismatchError, StreamError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TINY_VAL = DATA / "tinyimagenet" / "val" / "part-00000.parquet"
TINY_CFG = ModelConfig(
    channels=16, latent=20, hyper=8, slices=4, context=16, unet=(8, 8, 8), lambdas=(0.001, 0.004, 0.016, 0.064)
)
SHIPPED = (BUILTIN / "config.json").is_file()
# The shipped release's model id (first 4 bytes of its weights' SHA-256, in every stream's header) and its
# default-options fingerprint (in every archive's manifest; an append compares it): pinned, so that a change of
# file layout or config fields that would orphan the streams and archives already written fails here.
SHIPPED_ID = "596d53fe"  # release 4
SHIPPED_FINGERPRINT = "e34d274ceaaf9bc7"


pytestmark = pytest.mark.usefixtures("one_thread")


def _jpeg(a: np.ndarray) -> bytes:
    """A training image as the trainer reads it: JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def tiny_net(seed: int = 0) -> CdcModel:
    torch.manual_seed(seed)
    net = CdcModel(TINY_CFG)
    with torch.no_grad():  # the zero-initialised output layers would make the U-Net ignore its noise
        torch.nn.init.normal_(net.unet.out.weight, std=0.05)
    return net


@pytest.fixture(scope="module")
def tiny_model():
    return network_model(tiny_net(0), "tiny-0")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    if TINY_VAL.is_file():
        import pyarrow.parquet as pq

        from diffc_pipeline.images import decode_image

        col = pq.read_table(TINY_VAL, columns=["image"]).column("image")
        return np.stack([decode_image(col[i].as_py()) for i in range(3)])
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def codec(model, **opts) -> CdcCodec:
    return CdcCodec(model, CdcOptions(**opts))


def test_options_and_package_import_without_torch():
    code = "import sys, diffc_pipeline.codecs.cdc, diffc_pipeline.codecs.cdc.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_stream_options_parse_from_strings(tiny_model):
    from diffc_pipeline.codecs.base import options_from_strings

    opts = options_from_strings(CdcOptions, {"rate": "2", "slices": "3"}, "cdc")
    assert opts == CdcOptions(rate=2, slices=3)
    with pytest.raises(InvalidInputError, match="valid options: rate, slices"):
        options_from_strings(CdcOptions, {"quality": "3"}, "cdc")
    json.dumps(CdcCodec(tiny_model, opts).describe())


@pytest.mark.parametrize("size", [(64, 64), (37, 53)])
def test_round_trip_shape_dtype(tiny_model, size):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    c = codec(tiny_model, rate=2)
    enc = c.compress(x, [5, 6])
    assert len(enc) == 2 and all(len(e.chunks) == c.num_chunks == 4 for e in enc)
    assert c.stream_size(enc[0]) == size
    for method in ("mean", "diffusion"):
        out = c.decompress(enc, method=method, steps=2)
        assert out.shape == x.shape and out.dtype == np.uint8
    d = c.describe()
    assert d["name"] == "cdc" and d["progressive"] and d["num_chunks"] == 4 and d["model"]["sha256"]
    assert d["fingerprint"] == c.fingerprint != codec(tiny_model, rate=1).fingerprint


def test_decode_identical_across_batch_sizes_and_threads(tiny_model, images):
    c = codec(tiny_model, rate=1)
    enc = c.compress(images, [1, 2, 3])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batch = c.decompress(enc, steps=2)
        torch.set_num_threads(1)
        single = np.concatenate([c.decompress([e], steps=2) for e in enc])
        one_mean = c.decompress(enc[1:2], method="mean")
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(batch, single)
    assert np.array_equal(c.decompress(enc, method="mean")[1:2], one_mean)


def test_large_image_decode_independent_of_threads(tiny_model):
    x = np.random.default_rng(3).integers(0, 256, (1, 200, 300, 3), dtype=np.uint8)
    c = codec(tiny_model, rate=3)
    enc = c.compress(x, [1])
    torch.set_num_threads(2)
    two = c.decompress(enc, steps=1)
    assert torch.get_num_threads() == 2  # the decoder restores the caller's setting
    torch.set_num_threads(1)
    assert np.array_equal(two, c.decompress(enc, steps=1))


def test_decode_identical_in_fresh_process(tiny_model, images, tmp_path):
    from diffc_pipeline.codecs.cdc.export import write_model_dir

    write_model_dir(tmp_path / "m", TINY_CFG, tiny_net(0).state_dict(), name="tiny-0")
    model = load_model(str(tmp_path / "m"))
    c = codec(model, rate=3)
    enc = c.compress(images, [7, 8, 9])
    expected = c.decompress(enc, steps=2)
    streams = [{"header": e.header.hex(), "chunks": [ch.hex() for ch in e.chunks]} for e in enc]
    (tmp_path / "streams.json").write_text(json.dumps(streams))
    code = f"""
import json, numpy as np, torch
torch.set_num_threads(1)
from diffc_pipeline.codecs.base import Encoded
from diffc_pipeline.codecs.cdc.codec import CdcCodec, load_model
from diffc_pipeline.codecs.cdc.config import CdcOptions
c = CdcCodec(load_model({str(tmp_path / "m")!r}), CdcOptions(rate=3))
items = [Encoded(bytes.fromhex(s["header"]), [bytes.fromhex(h) for h in s["chunks"]])
         for s in json.load(open({str(tmp_path / "streams.json")!r}))]
np.save({str(tmp_path / "out.npy")!r}, np.concatenate([c.decompress([it], steps=2) for it in items]))
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


def test_every_prefix_decodes(tiny_model, images):
    c = codec(tiny_model, rate=2)
    enc = c.compress(images[:2], [1, 2])
    for k in range(c.num_chunks + 1):
        out = c.decompress(enc, prefix=k, method="mean")
        assert out.shape == images[:2].shape
    out = c.decompress(enc, prefix=[1, 3], method="mean")
    assert out.shape == images[:2].shape
    with pytest.raises(StreamError, match="cannot decode 5 chunks"):
        c.decompress(enc, prefix=5)


def test_fewer_slices_option_is_a_prefix(tiny_model, images):
    full = codec(tiny_model, rate=2).compress(images[:1], [4])[0]
    short_codec = codec(tiny_model, rate=2, slices=2)
    short = short_codec.compress(images[:1], [4])[0]
    assert short.chunks == full.chunks[:2] and short_codec.num_chunks == 2
    assert np.array_equal(
        short_codec.decompress([short], method="mean"),
        codec(tiny_model, rate=2).decompress([full], prefix=2, method="mean"),
    )


def test_real_bits_close_to_estimate(tiny_model, images):
    for rate in (0, 3):
        enc = codec(tiny_model, rate=rate).compress(images, [1, 2, 3])
        for e in enc:
            for ch, est in zip(e.chunks, e.estimated_bits, strict=True):
                assert 8 * len(ch) <= est * 1.01 + 16  # range coder: ~1 byte of flush per chunk



def test_a_rate_charges_where_each_chunk_of_the_prefix_but_the_last_ends(tiny_model, images):
    """A chunk is a range-coder stream cut short: its end is information (moving one boundary decodes another
    image), so a rate charges the lengths, Elias-gamma coded and rounded up to bytes, besides shape and bytes."""
    c = codec(tiny_model, rate=3)
    (e,) = c.compress(images[:1], [1])
    sizes = [len(ch) for ch in e.chunks]
    assert len(sizes) >= 3 and min(sizes) >= 1
    for k in range(1, len(sizes) + 1):
        gamma = sum(2 * (n + 1).bit_length() - 1 for n in sizes[: k - 1])
        assert c.charged_bits(e, k) == 32 + 8 * sum(sizes[:k]) + 8 * -(-gamma // 8)
    assert c.charged_bits(e, 1) == 32 + 8 * sizes[0]  # one chunk ends where the prefix does: nothing more
    joined = b"".join(e.chunks[:2])
    moved = [joined[: sizes[0] + 1], joined[sizes[0] + 1 :]]  # one byte across the boundary, checks rebuilt
    header = Header.unpack(e.header)
    header = Header(header.model_id, header.rate, header.height, header.width, header.seed,
                    bytes(chunk_check(ch) for ch in [*moved, *e.chunks[2:]]))  # fmt: skip
    other = c.decompress([Encoded(header.pack(), [*moved, *e.chunks[2:]])], 2, method="mean")
    assert not np.array_equal(other, c.decompress([e], 2, method="mean"))

def test_corrupted_and_truncated_streams(tiny_model, images):
    c = codec(tiny_model)
    e = c.compress(images[:1], [1])[0]
    bad = bytearray(e.header)
    bad[12] ^= 0xFF
    with pytest.raises(StreamError, match="CRC"):
        c.decompress([replace(e, header=bytes(bad))])
    with pytest.raises(StreamError, match="magic"):
        c.decompress([replace(e, header=b"XYZ" + e.header[3:])])
    with pytest.raises(StreamError, match="too short"):
        c.stream_size(replace(e, header=e.header[:10]))
    truncated = [e.chunks[0], e.chunks[1][:-1], *e.chunks[2:]]
    with pytest.raises(StreamError, match="chunk 2 of 4 fails its check"):
        c.decompress([replace(e, chunks=truncated)])
    # a prefix that stops before the damaged chunk still decodes
    assert c.decompress([replace(e, chunks=truncated)], prefix=1, method="mean").shape == images[:1].shape


def test_wrong_model_and_bad_options(tiny_model, images):
    e = codec(tiny_model).compress(images[:1], [1])[0]
    other = codec(network_model(tiny_net(1), "tiny-1"))
    with pytest.raises(ModelMismatchError, match="model id"):
        other.decompress([e])
    c = codec(tiny_model)
    with pytest.raises(InvalidInputError, match="valid decode options: method, steps, temperature, time_power"):
        c.decompress([e], sampler="ddpm")
    with pytest.raises(InvalidInputError, match="not one of diffusion, mean"):
        c.decompress([e], method="flow")
    with pytest.raises(InvalidInputError, match="rate=9 out of range"):
        codec(tiny_model, rate=9)
    with pytest.raises(InvalidInputError, match="expected uint8"):
        c.compress(images.astype(np.float32), [1, 2, 3])


def test_builtin_or_missing_model_errors(tmp_path):
    if not SHIPPED:
        with pytest.raises(ModelLoadError, match=r"codecs\.cdc\.train"):
            load_model("builtin")
    with pytest.raises(ModelLoadError, match="not a directory, and CDC's only built-in model is 'builtin'"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="train-cdc"):
        load_model("photo")  # DiffC's photo model is no CDC model
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "model.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickled checkpoints are refused"):
        load_model(str(tmp_path / "pickle"))


def test_diffusion_decoder_follows_the_seed(tiny_model, images):
    c = codec(tiny_model, rate=1)
    a = c.compress(images[:1], [11])[0]
    b = c.compress(images[:1], [12])[0]
    assert a.chunks == b.chunks and a.header != b.header
    da1, da2, db = (c.decompress([s], steps=3) for s in (a, a, b))
    assert np.array_equal(da1, da2)
    assert not np.array_equal(da1, db)
    # temperature 0 ignores the seed
    assert np.array_equal(c.decompress([a], steps=3, temperature=0), c.decompress([b], steps=3, temperature=0))
    # the time grid (1 - i/steps)^p: one step evaluates t = 1 only, whatever p; two steps meet at 0.5^p
    one = [c.decompress([a], steps=1, time_power=p) for p in (1.0, 2.0)]
    two = [c.decompress([a], steps=2, time_power=p) for p in (1.0, 2.0)]
    assert np.array_equal(*one) and not np.array_equal(*two)
    assert np.array_equal(two[1], c.decompress([a], steps=2))  # the default grid is p = 2
    with pytest.raises(InvalidInputError, match="time_power"):
        c.decompress([a], time_power=0.5)


def test_training_loss_decreases_and_resume_is_exact(tmp_path, images):
    from diffc_pipeline.codecs.cdc.train import CdcTrainer, TrainConfig, run_training

    tiny = [_jpeg(im) for im in images]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_jpeg(np.concatenate([images[0], images[1]], axis=1)))
    cfg = TrainConfig(
        batch_size=4,
        crop=64,
        pool_photos=1,
        pool_crops=4,
        pool_refresh=5,
        lr=2e-3,
        warmup_steps=1,
        model=TINY_CFG.to_dict(),
        prefix_drop=0.5,
    )
    full = CdcTrainer(cfg, tiny, [photo])
    losses = [full.train_step()["loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    a = CdcTrainer(cfg, tiny, [photo])
    run_training(a, tmp_path / "run", minutes=5, max_steps=4, log=lambda _m: None)
    b = CdcTrainer(cfg, tiny, [photo])
    b.load(tmp_path / "run" / "checkpoint")
    assert b.state.step == 4
    run_training(b, tmp_path / "run", minutes=5, max_steps=8, log=lambda _m: None)
    ref = CdcTrainer(cfg, tiny, [photo])
    for _ in range(8):
        ref.train_step()
    for (k, v), (_, w) in zip(ref.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    # a checkpoint is a model: it encodes and decodes
    model = load_model(str(tmp_path / "run"))
    enc = CdcCodec(model, CdcOptions(rate=0)).compress(images[:1], [0])
    assert CdcCodec(model, CdcOptions(rate=0)).decompress(enc, method="mean").shape == images[:1].shape
    with pytest.raises(Exception, match="cannot resume with a different batch_size"):
        CdcTrainer(replace(cfg, batch_size=2), tiny, [photo]).load(tmp_path / "run" / "checkpoint")


def test_larger_photo_crops_keep_the_batch_pixels_and_resume(tmp_path, images):
    """``photo_crop`` 128 with 64x64 Tiny ImageNet images: the photo group is one 128x128 crop standing for
    four 64x64 ones (the same pixels), the step trains on both groups, and a run started with 64x64 photo
    crops resumes with larger ones (the data is adjustable on resume, the model is not)."""
    from diffc_pipeline.codecs.cdc.train import CdcBatches, CdcTrainer, TrainConfig, run_training

    tiny = [_jpeg(im) for im in images]
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_jpeg(np.tile(images[0], (3, 3, 1))))  # 192x192
    cfg = TrainConfig(batch_size=8, crop=64, pool_photos=1, pool_crops=2, model=TINY_CFG.to_dict())
    run_training(CdcTrainer(cfg, tiny, [photo]), tmp_path / "run", minutes=5, max_steps=2, log=lambda _m: None)

    big = replace(cfg, photo_crop=128)
    groups = CdcBatches(big, tiny, [photo], TINY_CFG.rates).batch(0)
    assert [tuple(x.shape) for x, _ in groups] == [(1, 3, 128, 128), (4, 3, 64, 64)]
    assert [tuple(r.shape) for _, r in groups] == [(1,), (4,)]
    same = CdcBatches(cfg, tiny, [photo], TINY_CFG.rates).batch(0)
    assert [tuple(x.shape) for x, _ in same] == [(8, 3, 64, 64)]  # equal sizes: one group, as before

    resumed = CdcTrainer(big, tiny, [photo])
    resumed.load(tmp_path / "run" / "checkpoint")
    terms = resumed.train_step()
    assert resumed.state.step == 3 and np.isfinite(terms["loss"])
    assert terms["bpp"].shape == (5,) and terms["rate"].shape == (5,)
    with pytest.raises(Exception, match="multiple of 64"):
        CdcBatches(replace(cfg, photo_crop=100), tiny, [photo], TINY_CFG.rates)


def test_a_fixed_rate_run_trains_one_rate_and_branches_from_a_checkpoint(tmp_path, images):
    """``train_rates=(2,)``: every image of every batch is coded at rate 2 (a fixed-rate model of the same
    architecture); a variable-rate checkpoint branches into such a run from the same step and data, and
    steps of both runs see the same images."""
    from diffc_pipeline.codecs.cdc.train import CdcBatches, CdcTrainer, TrainConfig, run_training

    tiny = [_jpeg(im) for im in images]
    cfg = TrainConfig(batch_size=4, crop=64, photo_fraction=0.0, model=TINY_CFG.to_dict())
    fixed = replace(cfg, train_rates=(2,))
    fixed_batches = [CdcBatches(fixed, tiny, [], TINY_CFG.rates).batch(s)[0] for s in range(20)]
    variable_batches = [CdcBatches(cfg, tiny, [], TINY_CFG.rates).batch(s)[0] for s in range(20)]
    assert torch.cat([r for _, r in fixed_batches]).unique().tolist() == [2]
    assert torch.cat([r for _, r in variable_batches]).unique().tolist() == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(fixed_batches, variable_batches, strict=True))
    run_training(CdcTrainer(cfg, tiny, []), tmp_path / "run", minutes=5, max_steps=1, log=lambda _m: None)
    branch = CdcTrainer(fixed, tiny, [])
    branch.load(tmp_path / "run" / "checkpoint")
    assert branch.train_step()["rate"].unique().tolist() == [2] and branch.state.step == 2
    with pytest.raises(Exception, match="outside the model's rate indices"):
        CdcBatches(replace(cfg, train_rates=(4,)), tiny, [], TINY_CFG.rates)


def test_rho_trains_against_a_user_lpips_network(tmp_path, images, stand_in_lpips):
    """rho > 0: the LPIPS term of a user's torch.export network enters the loss and its gradient reaches the
    decoder (not the frozen metric); the run records the network's hash and refuses another on resume."""
    from diffc_pipeline.codecs.cdc.train import CdcTrainer, TrainConfig, cdc_loss, main

    side = {"min": 8, "max": 512}
    dims = {0: torch.export.Dim("b"), 2: torch.export.Dim("h", **side), 3: torch.export.Dim("w", **side)}
    example = torch.rand(2, 3, 32, 32)
    net_file = tmp_path / "lpips.pt2"
    exported = torch.export.export(stand_in_lpips(), (example, example.clone()), dynamic_shapes={"x": dims, "y": dims})
    torch.export.save(exported, str(net_file))
    lpips = torch.export.load(str(net_file)).module()

    cfg = TrainConfig(batch_size=2, crop=64, model=TINY_CFG.to_dict(), prefix_drop=0.0, rho=0.5)
    with pytest.raises(Exception, match="needs the LPIPS network"):
        CdcTrainer(cfg, [], [])
    trainer = CdcTrainer(cfg, [], [], lpips)
    x = torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    rate = torch.tensor([0, 1])
    with_term = cdc_loss(trainer.net, x, rate, torch.Generator().manual_seed(0), 0.5, lpips=lpips)
    without = cdc_loss(trainer.net, x, rate, torch.Generator().manual_seed(0), 0.0)
    assert (with_term["lpips"] > 0).all() and (without["lpips"] == 0).all()
    assert float(with_term["loss"].detach()) != float(without["loss"].detach())
    with_term["loss"].backward()
    assert all(p.grad is None for p in lpips.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.net.unet.parameters())

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [_jpeg(im) for im in images]}), tiny / "part-0.parquet")
    args = ["--out", str(tmp_path / "run"), "--tiny", str(tiny), "--photos", "", "--threads", "1"]
    args += ["--batch-size", "2", "--model-config", json.dumps(TINY_CFG.to_dict())]
    assert main([*args, "--max-steps", "1", "--rho", "0.5", "--lpips", str(net_file)]) == 0
    saved = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["config"]
    assert saved["rho"] == 0.5 and saved["lpips_sha256"] == hashlib.sha256(net_file.read_bytes()).hexdigest()
    other = tmp_path / "other.pt2"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(Exception, match=r"not a torch\.export archive"):
        main([*args, "--max-steps", "2", "--lpips", str(other)])
    with pytest.raises(Exception, match="needs the LPIPS network"):
        main([*args, "--max-steps", "2"])


def test_export_writes_fp16_release(tmp_path, images):
    from diffc_pipeline.codecs.cdc.export import export
    from diffc_pipeline.codecs.cdc.train import CdcTrainer, TrainConfig

    cfg = TrainConfig(batch_size=2, crop=64, photo_fraction=0.0, model=TINY_CFG.to_dict())

    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, "PNG")
    t = CdcTrainer(cfg, [buf.getvalue()], [])
    t.train_step()
    t.save(tmp_path / "ckpt")
    info = export(tmp_path / "ckpt", tmp_path / "rel")
    assert info["trained_steps"] == 1
    from safetensors.torch import load_file, save_file

    rel = tmp_path / "rel"
    parts = {f: load_file(str(rel / f)) for f in ("encoder.safetensors", "decoder.safetensors")}
    assert all(v.dtype == torch.float16 for part in parts.values() for v in part.values())
    assert {k.split(".")[0] for k in parts["encoder.safetensors"]} == {"g_a", "h_a", "h_s", "z_prior"}
    assert not (rel / "model.safetensors").exists()
    split = load_model(str(rel))
    c = CdcCodec(split, CdcOptions(rate=1))
    enc = c.compress(images[:1], [0])
    assert c.decompress(enc, method="mean").shape == images[:1].shape
    # a directory in the one-file layout of earlier exports: same weights, same model id, same decode
    one = tmp_path / "one"
    one.mkdir()
    for f in ("config.json", "tables.safetensors"):
        (one / f).write_bytes((rel / f).read_bytes())
    save_file({**parts["encoder.safetensors"], **parts["decoder.safetensors"]}, str(one / "model.safetensors"))
    single = load_model(str(one))
    assert single.sha256 == split.sha256 == hashlib.sha256((one / "model.safetensors").read_bytes()).hexdigest()
    again = CdcCodec(single, CdcOptions(rate=1))
    assert np.array_equal(again.decompress(enc, method="mean"), c.decompress(enc, method="mean"))
    # a tensor in both files is refused by name, not silently overwritten
    save_file(parts["encoder.safetensors"], str(rel / "decoder.safetensors"))
    with pytest.raises(ModelLoadError, match="repeats tensors"):
        load_model(str(rel))


def test_a_run_starts_from_a_trained_model(tmp_path, images):
    """``--init-from``: a new run whose weights and EMA are the model's, recorded in the checkpoint; resuming
    with another source is refused by name."""
    from diffc_pipeline.codecs.cdc.export import export
    from diffc_pipeline.codecs.cdc.train import CdcTrainer, TrainConfig, run_training
    from diffc_pipeline.codecs.cdc.train import main as train_main

    cfg = TrainConfig(batch_size=2, crop=64, photo_fraction=0.0, model=TINY_CFG.to_dict())
    tiny = [_jpeg(im) for im in images]
    first = CdcTrainer(cfg, tiny, [])
    run_training(first, tmp_path / "a", minutes=5, max_steps=2, log=lambda _m: None)
    export(tmp_path / "a" / "checkpoint", tmp_path / "rel")
    (tmp_path / "tiny").mkdir()
    pq.write_table(pa.table({"image": pa.array(tiny, pa.binary())}), tmp_path / "tiny" / "part-00000.parquet")
    args = ["--max-steps", "0", "--tiny", str(tmp_path / "tiny"), "--photos", "", "--threads", "1", "--batch-size", "2"]
    assert train_main(["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "rel"), *args]) == 0
    started = load_model(str(tmp_path / "b"))
    released = load_model(str(tmp_path / "rel"))
    assert all(torch.equal(started.net.state_dict()[k], v) for k, v in released.net.state_dict().items())
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    assert state["config"]["init_from"] == {"name": "cdc-builtin", "sha256": released.sha256}
    assert state["model"] == TINY_CFG.to_dict() and state["step"] == 0
    with pytest.raises(DiffcError, match="only starts new runs"):
        train_main(["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a"), *args])


# ---- on the shipped weights -------------------------------------------------------------------------------
shipped = pytest.mark.skipif(not SHIPPED, reason="no shipped CDC weights")


def test_new_rates_start_from_the_nearest_trained_rate(tiny_model, images):
    """``--lambdas`` with ``--init-from``: the trained rates keep their rows (a kept rate writes the very same
    chunks under its new index), a new lower rate starts below its neighbour, and the default rate keeps its
    lambda."""
    from diffc_pipeline.codecs.cdc.train import remap_rates

    src = tiny_model.cfg
    lambdas = (src.lambdas[0] / 4, *src.lambdas)
    weights, cfg = remap_rates(dict(tiny_model.net.state_dict()), src, lambdas)
    assert cfg.lambdas == lambdas and cfg.lambdas[cfg.default_rate] == src.lambdas[src.default_rate]
    gains = weights["log_gain"]
    assert torch.allclose(gains[1:], tiny_model.net.log_gain)
    assert torch.allclose(gains[0], tiny_model.net.log_gain[0] + 0.5 * np.log(0.25))
    net = CdcModel(cfg)
    net.load_state_dict(weights)
    grown = network_model(net, "grown")
    for old in range(src.rates):
        a = CdcCodec(tiny_model, CdcOptions(rate=old)).compress(images[:1], [0])[0]
        b = CdcCodec(grown, CdcOptions(rate=old + 1)).compress(images[:1], [0])[0]
        assert a.chunks == b.chunks
    low = CdcCodec(grown, CdcOptions(rate=0)).compress(images[:1], [0])[0]
    assert sum(map(len, low.chunks)) < sum(map(len, a.chunks))
    assert CdcCodec(grown).options.rate == src.default_rate + 1
    with pytest.raises(DiffcError, match="strictly ascending"):
        remap_rates(weights, src, tuple(reversed(lambdas)))


@shipped
def test_shipped_bits_match_estimate_and_prefixes_improve(images):
    model = load_model("builtin")
    for rate in range(model.cfg.rates):
        c = CdcCodec(model, CdcOptions(rate=rate))
        enc = c.compress(images, [0, 1, 2])
        real = sum(8 * sum(len(ch) for ch in e.chunks) for e in enc)
        est = sum(sum(e.estimated_bits) for e in enc)
        assert real <= est * 1.01 + 8 * c.num_chunks * len(enc), (rate, real, est)
        if rate == model.cfg.rates - 1:
            mse = [
                ((c.decompress(enc, prefix=k, method="mean").astype(float) - images) ** 2).mean()
                for k in range(1, c.num_chunks + 1)
            ]
            assert mse[-1] < mse[0]


@shipped
def test_shipped_weights_keep_their_id_and_fit_the_file_limit():
    """Streams and archives name the shipped model by id and fingerprint; each shipped file stays under the 10 MB
    a tracked file may be."""
    model = load_model("builtin")
    assert model.sha256.startswith(SHIPPED_ID)
    assert CdcCodec(model).fingerprint.startswith(SHIPPED_FINGERPRINT)
    assert CdcCodec(model, CdcOptions(rate=model.cfg.default_rate)).fingerprint == CdcCodec(model).fingerprint
    assert all(p.stat().st_size < 10_000_000 for p in BUILTIN.iterdir())


def test_refinement_is_a_bounded_stream_option(tiny_model):
    plain = codec(tiny_model, rate=1)
    assert codec(tiny_model, rate=1, refine_steps=0).fingerprint == plain.fingerprint
    assert codec(tiny_model, rate=1, refine_steps=5).fingerprint != plain.fingerprint  # archives record it
    for bad in (-1, 2001):
        with pytest.raises(InvalidInputError, match="refine_steps"):
            codec(tiny_model, refine_steps=bad)


def test_refinement_distortion_on_tiles_equals_the_whole_image():
    """Refinement's memory bound: the synthesis runs on tiles of the latent grid with a halo of context; with
    the default halo the loss and its gradient are the untiled ones, while too narrow a halo changes them (the
    halo is what makes tiling exact, not an accident of this image)."""
    from diffc_pipeline.codecs.cdc.refine import HALO, distortion_and_gradient

    net = tiny_net(0).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 192, 256, generator=gen) * 2 - 1
    y = torch.randn(1, TINY_CFG.latent, 12, 16, generator=gen)
    whole, g_whole = distortion_and_gradient(net, y, x, 150, 250, 0.01, tile=100)
    tiled, g_tiled = distortion_and_gradient(net, y, x, 150, 250, 0.01, tile=3, halo=HALO)
    assert tiled == pytest.approx(whole, rel=1e-5)
    assert torch.allclose(g_tiled, g_whole, rtol=1e-4, atol=1e-5 * g_whole.abs().max().item())
    _, g_narrow = distortion_and_gradient(net, y, x, 150, 250, 0.01, tile=3, halo=0)
    assert (g_narrow - g_whole).abs().max() > 0.1 * g_whole.abs().max()


def test_large_image_networks_run_on_windows_of_the_latent_grid():
    """Bounded memory on large images: with a halo of 4 latent positions, the encoder's analysis and the mean
    decoder's synthesis computed window by window are the whole-image ones (their receptive fields fit in the
    halo); without a halo they are not, so the halo is what makes it exact."""
    from diffc_pipeline.codecs.cdc.tiles import analysis, synthesise
    from diffc_pipeline.models.tiling import Tiling

    net = tiny_net(0).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 192, 256, generator=gen) * 2 - 1
    small, narrow, whole = Tiling(tile=3, halo=4, above=16), Tiling(tile=3, halo=0, above=16), Tiling(above=10**9)
    assert len(small.windows(12, 16)) == 4 * 6 and len(whole.windows(12, 16)) == 1
    with torch.no_grad():
        y = analysis(net, x, whole)
        assert torch.allclose(analysis(net, x, small), y, atol=1e-5 * y.abs().max().item())
        assert (analysis(net, x, narrow) - y).abs().max() > 1e-2 * y.abs().max()

        def mean(y_window, _where):
            return net.synthesis(y_window)["mean"]

        m = synthesise(y, mean, whole)
        assert m.shape == x.shape
        assert torch.allclose(synthesise(y, mean, small), m, atol=1e-5 * m.abs().max().item())
        assert (synthesise(y, mean, narrow) - m).abs().max() > 1e-2 * m.abs().max()
        two = torch.cat([x, -x])  # a batch of large images: window by window, image by image
        both = torch.cat([analysis(net, x, whole), analysis(net, -x, whole)])
        assert torch.allclose(analysis(net, two, small), both, atol=1e-5 * y.abs().max().item())
        batch = x[:, :, :64, :64].repeat(3, 1, 1, 1) * torch.tensor([1.0, 0.5, -0.5])[:, None, None, None]
        per_image = torch.cat([analysis(net, batch[i : i + 1], small) for i in range(3)])
        assert torch.allclose(analysis(net, batch, small), per_image, atol=1e-5 * y.abs().max().item())


def test_an_image_over_one_megapixel_is_coded_on_the_grid(tiny_model):
    """Above 1 MP (1088 x 1024 here: 68 x 64 latent positions, two windows of 34 + 4 rows) the codec encodes and
    decodes window by window (the networks' inputs are windows, seen through hooks): the mean decoder gives the
    whole-image synthesis of the stream's latent (to a rounding), and each window's DDIM chain starts from that
    window's part of the image's seeded noise. Images up to 1 MP are one window, whose chain starts from the
    whole noise as before the grid existed; and a decode gives the same pixels again."""
    from diffc_pipeline.codecs.cdc.codec import _padded, ddim
    from diffc_pipeline.codecs.cdc.tiles import GRID
    from diffc_pipeline.codecs.tensors import to_uint8

    # what large images decode to depends on these: pinned (a change needs a new model identity)
    assert (GRID.tile, GRID.halo, GRID.above, GRID.balanced) == (64, 4, 4096, True)
    windows = GRID.windows(68, 64)
    assert [(w[0], w[2]) for w in windows] == [(slice(0, 38), slice(0, 34)), (slice(30, 68), slice(4, 38))]
    assert len(GRID.windows(64, 64)) == 1
    yy, xx = np.mgrid[0:1088, 0:1024]
    img = np.stack([(yy * 0.2) % 256, (xx * 0.3) % 256, ((xx + yy) * 0.1) % 256], -1).astype(np.uint8)[None]
    net, c = tiny_model.net, codec(tiny_model, rate=3)
    seen: dict[str, list] = {"g_a": [], "start": []}

    def first_step(_module, args):
        if float(args[1][0]) == 1.0:  # t = 1: the chain's starting noise
            seen["start"].append(args[0].clone())

    hooks = [
        net.g_a.register_forward_pre_hook(lambda _m, args: seen["g_a"].append(tuple(args[0].shape[-2:]))),
        net.unet.register_forward_pre_hook(first_step),
    ]
    try:
        enc = c.compress(img, [5])
        decoded = c.decompress(enc, steps=2)
    finally:
        for h in hooks:
            h.remove()
    assert seen["g_a"] == [(608, 1024), (608, 1024)]  # 38 positions of 16 px: a window, not the image
    noise = torch.randn((1, 3, 1088, 1024), generator=torch.Generator().manual_seed(5))  # temperature 1
    assert len(seen["start"]) == 2
    for (rows, cols, _, _), start in zip(windows, seen["start"], strict=True):
        assert torch.equal(start, noise[:, :, rows.start * 16 : rows.stop * 16, cols.start * 16 : cols.stop * 16])
    assert decoded.shape == img.shape and np.array_equal(decoded, c.decompress(enc, steps=2))
    y_hat = c._decode_latent(c._header(enc[0]), enc[0].chunks)
    with torch.no_grad():
        whole = to_uint8(net.synthesis(y_hat.float())["mean"])
    assert np.abs(c.decompress(enc, method="mean").astype(int) - whole.astype(int)).max() <= 1
    # one window: the chain of the whole image, from the whole image's noise
    small = img[:, :200, :300]
    enc = c.compress(small, [9])
    y_hat = c._decode_latent(c._header(enc[0]), enc[0].chunks)
    noise = torch.randn((1, 3, _padded(200), _padded(300)), generator=torch.Generator().manual_seed(9)) * 0.7
    with torch.no_grad():
        direct = to_uint8(ddim(net, net.synthesis(y_hat.float()), 3, noise, 2, 2.0)[:, :, :200, :300])
    assert np.array_equal(c.decompress(enc, steps=2, temperature=0.7), direct)


@shipped
def test_refinement_lowers_the_rate_distortion_loss_of_real_streams():
    """The loss the model was trained on, on real bytes and real pixels (bpp charged as eval charges it, MSE of
    the mean decoder): 60 refinement steps lower it on the bundled 64x64 samples (measured: -3.5%; 100 steps
    -4.4%). Refinement changes only which latents the encoder writes: the streams decode with a codec built
    without the option, and an image's stream does not depend on its batch."""
    from diffc_pipeline.samples import SAMPLES_DIR

    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(SAMPLES_DIR.glob("val_*.jpg"))])
    model = load_model("builtin")
    lam = model.cfg.lambdas[2]
    plain, refined = CdcCodec(model, CdcOptions(rate=2)), CdcCodec(model, CdcOptions(rate=2, refine_steps=60))
    seeds = list(range(len(x)))

    def loss(c: CdcCodec, enc: list) -> float:
        bits = sum(c.image_header_bits(e) + 8 * sum(map(len, e.chunks)) for e in enc)
        mse = ((c.decompress(enc, method="mean").astype(float) - x) ** 2).mean()
        return bits / x[..., 0].size + lam * mse

    enc = refined.compress(x, seeds)
    assert loss(refined, enc) < 0.98 * loss(plain, plain.compress(x, seeds))
    assert refined.compress(x[1:2], seeds[1:2])[0] == enc[1]
    assert np.array_equal(plain.decompress(enc[:2], steps=2), refined.decompress(enc[:2], steps=2))


@shipped
def test_shipped_decode_is_identical_across_batch_and_threads(images):
    c = CdcCodec(load_model("builtin"), CdcOptions(rate=2))
    enc = c.compress(images, [0, 1, 2])
    torch.set_num_threads(2)
    batch = c.decompress(enc, steps=2)
    torch.set_num_threads(1)
    assert np.array_equal(batch, np.concatenate([c.decompress([e], steps=2) for e in enc]))


def test_diffc_train_cdc_hands_its_options_to_the_cdc_trainer():
    from typer.testing import CliRunner

    from diffc_pipeline.cli import app

    result = CliRunner().invoke(app, ["train-cdc", "--help"])
    assert result.exit_code == 0 and "--diffusion-fraction" in result.output and "--out" in result.output
    result = CliRunner().invoke(app, ["train-cdc"])  # --out is required: argparse's usage error, exit 2
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["train-cdc", "--out", "/nonexistent/run", "--lambdas", "0.1,0.01"])
    assert result.exit_code == 2 and "strictly ascending" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not SHIPPED, reason="no shipped CDC weights")
def test_a_gpu_actor_builds_the_same_cpu_codec():
    """Model actors on GPU nodes ask for device='cuda'; CDC runs on the CPU there (same streams everywhere)."""
    from diffc_pipeline.codecs import CodecSpec, resolve

    assert CodecSpec("cdc", {}, "builtin").build("cuda").fingerprint == resolve("cdc").build().fingerprint


# ---- the trainer and export as a user runs them: interrupted swaps, other data, bad options ---------------
def _tiny_parquet(folder: Path, images: np.ndarray) -> Path:
    """A Tiny ImageNet-like Parquet folder (column ``image``, JPEG bytes) of ``images``."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image": pa.array([_jpeg(im) for im in images], pa.binary())})
    pq.write_table(table, folder / "part-00000.parquet")
    return folder


def _train_args(out: Path, tiny: Path, *extra: str, model: dict | None = None) -> list[str]:
    """The trainer's options for a tiny model on tiny data, as cheap as a real run gets."""
    model_json = json.dumps(model or TINY_CFG.to_dict())
    base = ["--out", str(out), "--tiny", str(tiny), "--photos", "", "--threads", "1", "--batch-size", "2"]
    return [*base, "--model-config", model_json, *extra]


def _start_event(stdout: str) -> dict:
    """The trainer's first log line: whether it resumed, and at which step."""
    return next(e for e in map(json.loads, stdout.splitlines()) if e.get("event") == "start")


@pytest.fixture(scope="module")
def cdc_run(tmp_path_factory, images) -> tuple[Path, Path]:
    """A real one-step run of the trainer (its Tiny ImageNet folder, its run folder); tests copy the run."""
    from diffc_pipeline.codecs.cdc.train import main as train_main

    root = tmp_path_factory.mktemp("cdc_run")
    tiny = _tiny_parquet(root / "tiny", images)
    assert train_main(_train_args(root / "run", tiny, "--max-steps", "1")) == 0
    return tiny, root / "run"


def _copy_run(cdc_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    tiny, run = cdc_run
    shutil.copytree(run, tmp_path / "run")
    return tiny, tmp_path / "run"


def _step(run: Path) -> int:
    return json.loads((run / "checkpoint" / "state.json").read_text())["step"]


def test_a_kill_between_the_checkpoint_renames_resumes_where_it_stopped(tmp_path, cdc_run, capsys):
    """A kill between the swap's renames leaves ``checkpoint.old`` and a complete ``checkpoint.tmp``, no
    ``checkpoint``: the next run resumes from the newer one (it started from step 0 and deleted both); with only
    ``.old`` and a ``.tmp`` cut short, from the older one."""
    from diffc_pipeline.codecs.cdc.train import main as train_main

    tiny, run = _copy_run(cdc_run, tmp_path)
    shutil.copytree(run / "checkpoint", tmp_path / "step1")
    assert train_main(_train_args(run, tiny, "--max-steps", "2")) == 0
    (run / "checkpoint").rename(run / "checkpoint.tmp")  # written whole, not yet swapped in
    (tmp_path / "step1").rename(run / "checkpoint.old")
    capsys.readouterr()
    assert train_main(_train_args(run, tiny, "--max-steps", "3")) == 0
    start = _start_event(capsys.readouterr().out)
    assert start["resume"] and start["step"] == 2
    assert _step(run) == 3 and sorted(p.name for p in run.iterdir()) == ["checkpoint"]

    (run / "checkpoint").rename(run / "checkpoint.old")  # killed while writing the next one
    (run / "checkpoint.tmp").mkdir()
    (run / "checkpoint.tmp" / "weights.safetensors").write_bytes(b"cut short")
    assert train_main(_train_args(run, tiny, "--max-steps", "4")) == 0
    start = _start_event(capsys.readouterr().out)
    assert start["resume"] and start["step"] == 3 and _step(run) == 4


def test_export_refuses_an_out_whose_replacement_would_delete_what_it_should_not(tmp_path, cdc_run, capsys):
    """``export RUN/checkpoint RUN`` deleted the checkpoint and the user's files: an OUT that holds the
    checkpoint, lies inside it, or holds files but no CDC model is refused (one line, exit 2, nothing deleted);
    a CDC model folder is replaced whole, with nothing left beside it."""
    from diffc_pipeline.codecs.cdc.export import export
    from diffc_pipeline.codecs.cdc.export import main as export_main

    _, run = _copy_run(cdc_run, tmp_path)
    ckpt = run / "checkpoint"
    (run / "notes.txt").write_text("mine")
    before = sorted(p.name for p in ckpt.iterdir())
    assert export_main([str(ckpt), str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds the checkpoint" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (run / "notes.txt").read_text() == "mine" and sorted(p.name for p in ckpt.iterdir()) == before
    with pytest.raises(InvalidInputError, match="lies inside the checkpoint"):
        export(ckpt, ckpt / "release")
    assert not (ckpt / "release").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"mine")
    with pytest.raises(InvalidInputError, match="not a CDC model folder"):
        export(ckpt, other)
    assert [p.name for p in other.iterdir()] == ["photo.png"]

    rel = tmp_path / "rel"
    export(ckpt, rel)
    (rel / "model.safetensors").write_bytes((rel / "encoder.safetensors").read_bytes())  # an older layout
    assert export(ckpt, rel, raw=True)["weights"] == "raw"
    assert sorted(p.name for p in rel.iterdir()) == [
        "config.json",
        "decoder.safetensors",
        "encoder.safetensors",
        "tables.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "rel", "run"]  # no temporary folder left
    assert json.loads((rel / "config.json").read_text())["weights"] == "raw"
    load_model(str(rel))
    (rel / "README.md").write_text("mine")
    with pytest.raises(InvalidInputError, match=r"also holds README\.md"):
        export(ckpt, rel)
    assert (rel / "README.md").read_text() == "mine"


def test_export_reports_a_missing_foreign_or_damaged_checkpoint_in_one_line(tmp_path, cdc_run, capsys):
    """A missing path, a DiffC checkpoint (a KeyError traceback before) and a truncated EMA file: one line
    each, exit 2, and no OUT written."""
    from diffc_pipeline.codecs.cdc.export import main as export_main
    from diffc_pipeline.models.unet import UNetConfig
    from diffc_pipeline.training.trainer import TrainConfig as DiffcConfig
    from diffc_pipeline.training.trainer import Trainer

    _, run = _copy_run(cdc_run, tmp_path)
    unet = UNetConfig(widths=(8,), blocks_per_level=1, emb_dim=16, groups=4).to_dict()
    Trainer(DiffcConfig(unet=unet), images=[]).save(tmp_path / "diffc" / "checkpoint")
    ema = run / "checkpoint" / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:1000])
    for checkpoint, message in [
        (tmp_path / "nope", "no such folder"),
        (tmp_path / "diffc" / "checkpoint", "not a CDC training checkpoint"),
        (run / "checkpoint", "cannot be read"),
    ]:
        assert export_main([str(checkpoint), str(tmp_path / "rel")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not (tmp_path / "rel").exists()


@pytest.mark.timeout(120)
def test_training_images_that_do_not_decode_are_an_error_not_an_endless_loop(tmp_path, images):
    """A Parquet ``image`` column of garbage drew images forever (at full CPU, deaf to SIGTERM), and photos
    that all fail to decode ended in numpy's 'need at least one array to stack': each is one error now, while
    a few broken images among good ones are still skipped."""
    from diffc_pipeline.codecs.cdc.train import CdcBatches, TrainConfig
    from diffc_pipeline.codecs.cdc.train import main as train_main

    cfg = TrainConfig(batch_size=4, photo_fraction=0.0, model=TINY_CFG.to_dict())
    garbage = [b"not an image"] * 3
    with pytest.raises(InvalidInputError, match="training images do not decode"):
        CdcBatches(cfg, garbage, [], TINY_CFG.rates).batch(0)
    assert CdcBatches(cfg, [*garbage, _jpeg(images[0])], [], TINY_CFG.rates).batch(0)[0][0].shape == (4, 3, 64, 64)
    bad_photo = tmp_path / "bad.jpg"
    bad_photo.write_bytes(b"not an image either")
    with_photos = replace(cfg, photo_fraction=0.5, pool_photos=1)
    with pytest.raises(InvalidInputError, match="none of the 1 photos drawn for the crop pool decodes"):
        CdcBatches(with_photos, [_jpeg(images[0])], [bad_photo], TINY_CFG.rates).batch(0)

    (tmp_path / "tiny").mkdir()
    pq.write_table(pa.table({"image": pa.array(garbage, pa.binary())}), tmp_path / "tiny" / "part-0.parquet")
    with pytest.raises(InvalidInputError, match="training images do not decode"):
        train_main(_train_args(tmp_path / "run", tmp_path / "tiny", "--max-steps", "1"))
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_a_resume_on_other_data_is_refused_by_name(tmp_path, cdc_run, images):
    """The checkpoint records its data (Tiny ImageNet folder, limit and count, photo folder and count): a resume
    on another is refused naming what changed (it went on with photo crops in half of each batch); a checkpoint
    from before the record resumes on the data given, and records it."""
    from diffc_pipeline.codecs.cdc.train import main as train_main

    tiny, run = _copy_run(cdc_run, tmp_path)
    elsewhere = _tiny_parquet(tmp_path / "val", images)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_jpeg(np.tile(images[0], (2, 2, 1))))
    with pytest.raises(InvalidInputError, match=r"different data: tiny \(checkpoint '.*tiny', requested '.*val'\)"):
        train_main(_train_args(run, elsewhere, "--max-steps", "2"))
    with pytest.raises(InvalidInputError, match=r"photo_files \(checkpoint 0, requested 1\), photos \(checkpoint ''"):
        train_main([*_train_args(run, tiny, "--max-steps", "2"), "--photos", str(photos)])
    with pytest.raises(InvalidInputError, match=r"tiny_images \(checkpoint 3, requested 2\), tiny_limit"):
        train_main(_train_args(run, tiny, "--max-steps", "2", "--tiny-limit", "2"))
    assert _step(run) == 1

    state_file = run / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["config"]["data"] == {
        "tiny": str(tiny),
        "tiny_limit": None,
        "tiny_images": 3,
        "photos": "",
        "photo_files": 0,
    }
    del state["config"]["data"]  # as a checkpoint written before runs recorded their data
    state_file.write_text(json.dumps(state))
    assert train_main(_train_args(run, elsewhere, "--max-steps", "2")) == 0
    assert _step(run) == 2 and json.loads(state_file.read_text())["config"]["data"]["tiny"] == str(elsewhere)


def test_rho_and_model_config_given_on_resume_must_match_the_run(tmp_path, cdc_run):
    """``--rho`` and ``--model-config`` were dropped without a word on resume: another value is refused by
    name, the run's own is accepted."""
    from diffc_pipeline.codecs.cdc.train import main as train_main

    tiny, run = _copy_run(cdc_run, tmp_path)
    with pytest.raises(InvalidInputError, match=r"--rho 0\.5: .* trains with rho 0\.0"):
        train_main(_train_args(run, tiny, "--max-steps", "2", "--rho", "0.5"))
    wider = {**TINY_CFG.to_dict(), "channels": 32}
    with pytest.raises(InvalidInputError, match=r"trains a model with channels 16 \(requested 32\)"):
        train_main(_train_args(run, tiny, "--max-steps", "2", model=wider))
    with pytest.raises(InvalidInputError, match="unknown model config keys: nosuch"):
        train_main(_train_args(run, tiny, "--max-steps", "2", model={"nosuch": 1}))
    assert _step(run) == 1
    assert train_main(_train_args(run, tiny, "--max-steps", "2", "--rho", "0")) == 0 and _step(run) == 2


def test_bad_options_and_unreadable_checkpoints_are_one_line_errors(tmp_path, cdc_run):
    """Each of these was a traceback (ZeroDivisionError, JSONDecodeError, ArrowInvalid, SafetensorError...):
    through ``diffc train-cdc`` each is one line naming the problem, exit 2, and the checkpoint is untouched."""
    from typer.testing import CliRunner

    from diffc_pipeline.cli import app

    tiny, run = _copy_run(cdc_run, tmp_path)
    no_image = tmp_path / "no_image"
    no_image.mkdir()
    pq.write_table(pa.table({"label": ["n01443537"]}), no_image / "part-0.parquet")
    new = tmp_path / "new"
    cases = [
        (_train_args(new, tiny, "--batch-size", "0"), "--batch-size must be at least 1, got 0"),
        (_train_args(new, tiny, "--tiny-limit", "0"), "--tiny-limit must be at least 1, got 0"),
        (_train_args(new, tiny, "--minutes", "-1"), "--minutes must be at least 0, got -1.0"),
        ([*_train_args(new, tiny), "--model-config", "{bad"], "--model-config is not valid JSON"),
        (_train_args(new, tiny, model={"nosuch": 1}), "unknown model config keys: nosuch"),
        (_train_args(new, no_image), "has no 'image' column (columns: label)"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["train-cdc", *args])
        output = " ".join(result.output.split())
        assert result.exit_code == 2 and message in output and "Traceback" not in output, (args, result.output)
    assert not new.exists()

    ckpt = run / "checkpoint"
    for name in ("state.json", "ema.safetensors"):
        damaged = tmp_path / name
        shutil.copytree(ckpt, damaged / "checkpoint")
        blob = (damaged / "checkpoint" / name).read_bytes()
        (damaged / "checkpoint" / name).write_bytes(blob[: len(blob) // 2])
        result = CliRunner().invoke(app, ["train-cdc", *_train_args(damaged, tiny, "--max-steps", "2")])
        output = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in output, result.output
        assert f"checkpoint {damaged / 'checkpoint'} cannot be read" in output and "--fresh --overwrite" in output
        assert (damaged / "checkpoint" / name).read_bytes() == blob[: len(blob) // 2]


def test_fresh_replaces_an_existing_run_only_with_overwrite(tmp_path, cdc_run, capsys):
    """``--fresh`` replaced a checkpoint without a word: alone it is refused naming the checkpoint, with
    ``--overwrite`` a new run starts (and replaces it at its first checkpoint); ``--overwrite`` alone is refused."""
    from diffc_pipeline.codecs.cdc.train import main as train_main

    tiny, run = _copy_run(cdc_run, tmp_path)
    weights = (run / "checkpoint" / "weights.safetensors").read_bytes()
    with pytest.raises(InvalidInputError, match=r"--fresh: .*checkpoint holds a training run.*add --overwrite"):
        train_main(_train_args(run, tiny, "--max-steps", "1", "--fresh"))
    with pytest.raises(InvalidInputError, match="--overwrite only goes with --fresh"):
        train_main(_train_args(run, tiny, "--max-steps", "1", "--overwrite"))
    assert (run / "checkpoint" / "weights.safetensors").read_bytes() == weights and _step(run) == 1
    capsys.readouterr()
    assert train_main(_train_args(run, tiny, "--max-steps", "0", "--fresh", "--overwrite")) == 0
    start = _start_event(capsys.readouterr().out)
    assert not start["resume"] and start["step"] == 0 and _step(run) == 0
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]


def test_train_cdc_help_describes_every_option():
    """``train-cdc --help`` said nothing about --minutes, --tiny-limit, --batch-size, --fresh."""
    from typer.testing import CliRunner

    from diffc_pipeline.cli import app

    result = CliRunner().invoke(app, ["train-cdc", "--help"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    for phrase in (
        "stop after this many minutes of this session (a checkpoint is written at the end; default: 60.0)",
        "train on the first N Tiny ImageNet images only (default: all",
        "images per step (default: 16, or the checkpoint's",
        "start a new run instead of resuming OUT/checkpoint; where one exists, only with --overwrite",
        "with --fresh: let the new run replace the existing OUT/checkpoint",
    ):
        assert phrase in text, phrase
