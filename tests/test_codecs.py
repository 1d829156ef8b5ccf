"""The codec contract and registry, for every registered codec; archive format 2 and the format-1 fixture.

The format-1 fixture (tests/fixtures/format1) was written by the release before the codec registry
(commit acf60d4): `diffc compress SRC ARCH --model gaussian --steps 6 --shard-size 2 --incremental`, and its
decodes at --step 3 (flow, denoise) and --step 6 were hashed then; this release must reproduce them bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pipeline_data.make import rgb, write_images
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.codecs import CODECS, Codec, Encoded, resolve
from diffc_pipeline.errors import InvalidInputError, StreamError
from diffc_pipeline.pipeline.manifest import MANIFEST_NAME

FIXTURE = Path(__file__).parent / "fixtures" / "format1"


def _has_jxl() -> bool:
    try:
        import pillow_jxl  # noqa: F401
    except ImportError:
        return False
    return True


def _available(name: str) -> bool:
    """JPEG XL needs its optional plugin; CDC here needs its shipped weights (tests/test_cdc.py covers it with a
    small random model either way)."""
    if name == "jxl":
        return _has_jxl()
    if name == "cdc":
        return (Path(__file__).parents[1] / "diffc_pipeline" / "codecs" / "cdc" / "weights" / "config.json").is_file()
    return True


AVAILABLE = [n for n in CODECS if _available(n)]
# Small, fast settings per codec; the Gaussian model stands in for DiffC's network.
SETTINGS = {"diffc": ({"num_steps": "3", "flow_steps": "3"}, "gaussian")}


def _build(name: str) -> Codec:
    options, model = SETTINGS.get(name, ({}, None))
    return resolve(name, options, model).build()


def _images(b: int = 3, h: int = 20, w: int = 28) -> np.ndarray:
    return np.stack([rgb(i, h, w) for i in range(b)])


def _pixel_hash(path: Path) -> str:
    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_codec_keeps_the_contract(name: str) -> None:
    codec = _build(name)
    x = _images()
    items = codec.compress(x, [1, 2, 3])
    assert len(items) == 3 and all(len(it.chunks) == codec.num_chunks for it in items)
    d = codec.describe()
    assert d["name"] == name and d["fingerprint"] == codec.fingerprint and d["num_chunks"] == codec.num_chunks
    assert d["progressive"] == codec.progressive and json.loads(json.dumps(d)) == d  # JSON for the manifest
    y = codec.decompress(items)
    assert y.shape == x.shape and y.dtype == np.uint8
    def psnr(z: np.ndarray) -> float:
        return float(10 * np.log10(255**2 / ((z.astype(float) - x) ** 2).mean()))

    # a decode that ignored the stream would be no better than each image's mean colour (~14 dB here); the
    # codecs measured 18 (CDC) to 26 dB (WebP) on these images at their default settings
    flat = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True).round(), x.shape)
    assert psnr(y) > psnr(flat) + 3, (psnr(y), psnr(flat))
    # bits are counted from bytes: the header plus the chunks
    assert items[0].prefix_bits() == 8 * (len(items[0].header) + sum(map(len, items[0].chunks)))
    # another batch size decodes the same pixels (bit-identical for these codecs)
    alone = np.concatenate([codec.decompress([it]) for it in items])
    assert np.array_equal(alone, y)
    # ... and encodes the same bytes, with another thread count too (exact encoders; DiffC here runs the
    # analytic model: with a network its streams depend on both, docs/reliability.md)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        singles = [codec.compress(x[i : i + 1], [i + 1])[0] for i in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert [(s.header, s.chunks) for s in singles] == [(it.header, it.chunks) for it in items]
    with pytest.raises(InvalidInputError, match="decode option"):
        codec.decompress(items, bogus=1)
    if not codec.progressive:
        with pytest.raises(InvalidInputError, match="is not progressive"):
            codec.decompress(items, 0)
    with pytest.raises(StreamError, match=f"cannot decode {codec.num_chunks + 1} chunks"):
        codec.decompress(items, codec.num_chunks + 1)
    # one seed check for all: a float or a string seed was truncated by one codec and failed deep in another
    for seed in (1.5, "7", -1, 1 << 64, True):
        with pytest.raises(InvalidInputError, match="is not an unsigned 64-bit integer"):
            codec.compress(x[:1], [seed])
    with pytest.raises(InvalidInputError, match="no streams to decode"):
        codec.decompress([])
    with pytest.raises(InvalidInputError, match="empty batch or image"):
        codec.compress(np.zeros((1, 0, 5, 3), np.uint8), [0])


def test_classical_codecs_name_their_largest_side_and_diffc_seeds_past_2_63_stay_apart() -> None:
    """A 1x70000 image made JPEG fail with "broken data stream"; DiffC's shared randomness rounded seeds of
    2**63 and above to float64, so neighbouring seeds drew the same candidates (and 2**64 - 1 those of 0)."""
    for name, side in (("jpeg", 65_500), ("webp", 16_383), ("avif", 65_536)):
        with pytest.raises(InvalidInputError, match=f"its sides are at most {side} pixels"):
            resolve(name, {}, None).build().compress(np.zeros((1, 1, side + 1, 3), np.uint8), [0])
    codec = _build("diffc")
    x = _images(1)
    chunks = {seed: codec.compress(x, [seed])[0].chunks for seed in (0, 2**63 + 1, 2**63 + 2, 2**64 - 1)}
    assert len({tuple(c) for c in chunks.values()}) == 4


# What eval charges of each codec's header: the image's own shape (DiffC v2: a one-byte varint for a side
# <= 64 plus one for the width when not square; CDC: two u16), a classical codec's whole (empty) header.
CHARGED_HEADER_BITS = {"diffc": 16, "cdc": 32}


@pytest.mark.parametrize("name", AVAILABLE)
def test_eval_charges_each_codec_the_shape_its_header_codes(name: str) -> None:
    codec = _build(name)
    item = codec.compress(_images(1), [5])[0]
    assert codec.image_header_bits(item) == CHARGED_HEADER_BITS.get(name, 0)
    for k in range(1, len(item.chunks) + 1):  # a prefix: that shape plus the bytes of its chunks, exactly
        lengths = 0  # CDC: where each chunk but the last ends (Elias-gamma, whole bytes; its chunks do not say)
        if name == "cdc":
            lengths = 8 * -(-sum(2 * (len(c) + 1).bit_length() - 1 for c in item.chunks[: k - 1]) // 8)
        shape = CHARGED_HEADER_BITS.get(name, 0)
        assert codec.charged_bits(item, k) == shape + 8 * sum(map(len, item.chunks[:k])) + lengths
    if item.header:  # the rest of the header (magic, ids, seed, checks) is what every image shares or derives
        assert 8 * len(item.header) > codec.image_header_bits(item)
        with pytest.raises(StreamError):
            codec.image_header_bits(Encoded(item.header[:5], item.chunks))


@pytest.mark.parametrize("name", [n for n in AVAILABLE if n not in ("diffc", "cdc")])
def test_classical_codecs_decode_the_same_in_a_fresh_process(name: str, tmp_path: Path) -> None:
    codec = _build(name)
    x = _images(2)
    items = codec.compress(x, [0, 0])
    for i, it in enumerate(items):
        (tmp_path / f"{i}.bin").write_bytes(it.chunks[0])
    script = textwrap.dedent(f"""
        import numpy as np
        from diffc_pipeline.codecs import Encoded, resolve
        codec = resolve({name!r}).build()
        items = [Encoded(b"", [open(f"{tmp_path}/{{i}}.bin", "rb").read()]) for i in range(2)]
        np.save("{tmp_path}/out.npy", codec.decompress(items))
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert np.array_equal(np.load(tmp_path / "out.npy"), codec.decompress(items))
    # the quality option moves the rate the right way
    low = resolve(name, {"quality": "10"}).build().compress(x, [0, 0])
    assert sum(it.prefix_bits() for it in low) < sum(it.prefix_bits() for it in items)


def test_registry_errors_name_the_valid_choices() -> None:
    with pytest.raises(InvalidInputError, match="unknown codec 'heic'; available: diffc, cdc, jpeg, webp, avif"):
        resolve("heic")
    with pytest.raises(InvalidInputError, match="codec 'webp' has no option qualty; valid options: quality"):
        resolve("webp", {"qualty": "3"})
    with pytest.raises(InvalidInputError, match="quality='high' of 'avif' is not a valid int"):
        resolve("avif", {"quality": "high"})
    with pytest.raises(InvalidInputError, match=r"quality must be in \[1, 100\], got 0"):
        resolve("jpeg", {"quality": "0"})
    with pytest.raises(InvalidInputError, match="takes no model"):
        resolve("jpeg", {}, "builtin")
    assert resolve("diffc").model == "builtin" and resolve("webp").model is None


def test_a_stream_codec_is_one_module_and_one_registry_line() -> None:
    """What a new codec needs: a Codec subclass with its options dataclass, and one CodecEntry."""
    classical = Path(__file__).parents[1] / "diffc_pipeline" / "codecs" / "classical.py"
    assert "import torch" not in classical.read_text()  # classical archives need no torch at all
    entry = CODECS["avif"]
    assert entry.codec_class().name == "avif" and dataclasses.is_dataclass(entry.options_class())


def test_the_cli_imports_no_torch_or_ray() -> None:
    code = "import sys; from diffc_pipeline.cli import app; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_codecs_command_lists_options_and_decode_options() -> None:
    result = CliRunner().invoke(app, ["codecs", "--json"])
    assert result.exit_code == 0, result.output
    info = {c["name"]: c for c in json.loads(result.output)}
    assert info["diffc"]["options"]["num_steps"] == 40 and info["diffc"]["progressive"] is True
    assert info["diffc"]["decode_options"]["method"]["choices"] == ["flow", "ancestral", "denoise"]
    assert info["webp"]["options"] == {"quality": 75} and info["webp"]["decode_options"] == {}
    # the human listing, in a narrow terminal, still shows every option's name and default whole
    env = {**os.environ, "COLUMNS": "60"}
    listing = subprocess.run(
        [sys.executable, "-m", "diffc_pipeline", "codecs"], capture_output=True, text=True, env=env, check=True
    ).stdout  # a listing is a result: stdout, so that it pipes
    assert max(map(len, listing.splitlines())) <= 60
    words = set(listing.replace(",", " ").split())
    for c in info.values():
        assert {f"{k}={v}" for k, v in c["options"].items()} <= words, c["name"]
        decode = {f"{k}={v['default']}" for k, v in c["decode_options"].items() if isinstance(v, dict)}
        assert decode <= words, c["name"]


# ---- archives ------------------------------------------------------------------------------------------
def _copy_fixture(tmp_path: Path) -> tuple[Path, Path]:
    """The format-1 archive and its source folder, moved under tmp_path (its manifest names the source)."""
    arc, src = tmp_path / "arc", tmp_path / "src"
    shutil.copytree(FIXTURE / "archive", arc)
    shutil.copytree(FIXTURE / "source", src)
    manifest = json.loads((arc / MANIFEST_NAME).read_text())
    manifest["source"]["url"] = str(src)
    (arc / MANIFEST_NAME).write_text(json.dumps(manifest))
    return arc, src


def test_format1_archive_decodes_bit_identically_and_inspects(ray_cluster, tmp_path: Path) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    runner = CliRunner()
    fast = ["--threads", "1", "--actors", "1"]
    for name, args in (
        ("dec_flow", ["--step", "3"]),
        ("dec_denoise", ["--step", "3", "--method", "denoise"]),
        ("dec_full", []),  # neither --bpp nor --step: the whole stream
    ):
        out = tmp_path / name
        # no --model: the format-1 manifest names the Gaussian model, which every installation has
        result = runner.invoke(app, ["decode", str(FIXTURE / "archive"), str(out), *args, *fast])
        assert result.exit_code == 0, result.output
        assert {p.name: _pixel_hash(p) for p in sorted(out.glob("*.png"))} == expected[name], name
    result = runner.invoke(app, ["inspect", str(FIXTURE / "archive"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format_version"] == 1 and info["codec"]["name"] == "diffc" and info["codec"]["num_chunks"] == 6
    assert [c["chunk"] for c in info["bpp_per_chunk"]] == [1, 2, 3, 4, 5, 6] and info["ok"] == 4


def test_format1_archive_extends_incrementally_as_format2(ray_cluster, tmp_path: Path) -> None:
    arc, src = _copy_fixture(tmp_path)
    before = {p.name: p.read_bytes() for p in (arc / "shards").iterdir()}
    Image.fromarray(rgb(77, 16, 16)).save(src / "new.png")
    args = ["compress", str(src), str(arc), "--incremental", "--model", "gaussian", "--steps", "6"]
    result = CliRunner().invoke(app, [*args, "--shard-size", "2", "--threads", "1", "--actors", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((arc / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == 2 and manifest["codec"]["name"] == "diffc"
    assert [r["new"] for r in manifest["runs"]] == [4, 1] and manifest["model"]["spec"] == "gaussian"
    assert all((arc / "shards" / name).read_bytes() == data for name, data in before.items())  # untouched
    out = tmp_path / "dec"
    result = CliRunner().invoke(app, ["decode", str(arc), str(out), "--step", "3", "--threads", "1", "--actors", "1"])
    assert result.exit_code == 0, result.output
    expected = json.loads((FIXTURE / "expected.json").read_text())["dec_flow"]
    assert {n: _pixel_hash(out / n) for n in expected} == expected and (out / "new.png").is_file()


def test_classical_archive_round_trips_through_the_pipeline(ray_cluster, tmp_path: Path) -> None:
    ids = write_images(tmp_path / "in", 4, 24, 32)
    arc = tmp_path / "arc"
    runner = CliRunner()
    args = ["compress", str(tmp_path / "in"), str(arc), "--codec", "webp", "--codec-opt", "quality=40"]
    result = runner.invoke(app, [*args, "--threads", "1", "--actors", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((arc / MANIFEST_NAME).read_text())
    assert manifest["codec"]["name"] == "webp" and manifest["codec"]["options"] == {"quality": 40}
    assert manifest["model"] is None and manifest["codec"]["num_chunks"] == 1
    rows = {r["id"]: r for r in pq.read_table(arc / "shards").to_pylist()}
    codec = resolve("webp", {"quality": "40"}).build()
    for i, image_id in enumerate(ids):
        (item,) = codec.compress(rgb(i, 24, 32)[None], [rows[image_id]["seed"]])
        assert rows[image_id]["chunk_001"] == item.chunks[0] and rows[image_id]["cum_bits"] == [item.prefix_bits()]
    out = tmp_path / "dec"
    result = runner.invoke(app, ["decode", str(arc), str(out), "--threads", "1", "--actors", "1"])
    assert result.exit_code == 0, result.output
    for image_id in ids:
        want = codec.decompress([Encoded(b"", [rows[image_id]["chunk_001"]])])[0]
        assert np.array_equal(np.asarray(Image.open(out / image_id)), want)
    # a non-progressive codec refuses a prefix, naming the problem, and decode options it does not have
    result = runner.invoke(app, ["decode", str(arc), str(tmp_path / "d2"), "--step", "0"])
    assert result.exit_code == 2 and "not progressive" in " ".join(result.output.split())
    result = runner.invoke(app, ["decode", str(arc), str(tmp_path / "d3"), "--method", "flow"])
    assert result.exit_code == 2 and "has no decode option method" in " ".join(result.output.split())
    result = runner.invoke(app, ["decode", str(arc), str(tmp_path / "d4"), "--model", "builtin"])
    assert result.exit_code == 2 and "takes no model" in " ".join(result.output.split())
