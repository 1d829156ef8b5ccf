"""Archives from elsewhere (issue 19, item 4): a row edited so that its CRCs and checksums still hold.

CRCs catch accidents, not edits. A `--model gaussian` archive gets rows whose stream headers claim 9000x9000
pixels (the row's size and checksum recomputed: what was tried on 2026-12-01, where decode ran for minutes)
or another size than the row's; decode must make them error rows before any decoding, quickly, and decode
the other rows bit-identically. Also: `Codec.stream_size` of every codec, and manifests or shards that claim
more chunks than an archive may hold or than they have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile
from pipeline_data.make import rgb, write_images
from typer.testing import CliRunner

import diffc_pipeline as dp
from diffc_pipeline.cli import app
from diffc_pipeline.codecs import CODECS, Codec, Encoded, cumulative_bits, resolve
from diffc_pipeline.codecs.base import MAX_CHUNKS
from diffc_pipeline.codecs.diffc.bitstream import Header
from diffc_pipeline.errors import ArchiveError, DiffcError, InvalidInputError, ModelLoadError, StreamError
from diffc_pipeline.images import DEFAULT_MAX_PIXELS
from diffc_pipeline.pipeline import archive as A
from diffc_pipeline.pipeline.manifest import MANIFEST_NAME

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--threads", "1", "--actors", "1"]
STEPS = 2
BOMB, SMALLER, NO_PIXELS = "img000.png", "img001.png", "img002.png"


def _codec(name: str) -> Codec:
    """A small build of codec ``name`` (DiffC on the Gaussian model); skipped where it cannot be built here
    (JPEG XL without its plugin, CDC without its shipped weights)."""
    options, model = ({"num_steps": "2", "flow_steps": "2"}, "gaussian") if name == "diffc" else ({}, None)
    try:
        return resolve(name, options, model).build()
    except ModelLoadError as exc:
        pytest.skip(f"{name}: {exc}")


def _shard(arc: Path) -> Path:
    (shard,) = (arc / "shards").glob("*.parquet")
    return shard


def _edit_rows(arc: Path, edits: dict[str, dict]) -> None:
    """Rewrite rows of the archive's one shard as an editor would: the given fields (``size`` rewrites the
    stream header's height and width, its CRC recomputed), then the row's bit counts and checksum."""
    shard = _shard(arc)
    table = pq.read_table(shard)
    rows = table.to_pylist()
    for row in rows:
        edit = dict(edits.get(row["id"], {}))
        if not edit:
            continue
        if "size" in edit:
            h, w = edit.pop("size")
            row["header"] = dataclasses.replace(Header.unpack(row["header"]), height=h, width=w).pack()
        row.update(edit)
        chunks = [row[A.chunk_column(k)] for k in range(1, STEPS + 1)]
        row["cum_bits"] = cumulative_bits(row["header"], chunks)
        row["checksum"] = A.row_checksum(row["header"], chunks)
    shard.write_bytes(A.shard_to_parquet_bytes(type(table).from_pylist(rows, schema=table.schema)))


@pytest.fixture(scope="module")
def archives(ray_cluster, tmp_path_factory) -> dict:
    """A 2-step Gaussian-model DiffC archive of five 16x16 images, written by `diffc compress`; its pixels
    decoded at step 2 before any edit; and an edited copy: one row claiming 9000x9000 pixels (header and row),
    one whose header claims 32x32 where its row says 16x16, one whose row says 16x0 (header unchanged)."""
    root = tmp_path_factory.mktemp("untrusted")
    write_images(root / "in", 5)
    arc = root / "arc"
    cmd = ["compress", str(root / "in"), str(arc), "--model", "gaussian", "--steps", str(STEPS), *FAST]
    result = CliRunner().invoke(app, cmd)
    assert result.exit_code == 0, result.output
    before = dict(dp.open_archive(str(arc)).decode(step=STEPS))
    edited = root / "edited"
    shutil.copytree(arc, edited)
    _edit_rows(
        edited,
        {
            BOMB: {"size": (9000, 9000), "height": 9000, "width": 9000},
            SMALLER: {"size": (32, 32)},
            NO_PIXELS: {"width": 0},
        },
    )
    return {"root": root, "arc": arc, "edited": edited, "before": before}


def test_edited_rows_are_error_rows_and_the_rest_decodes_as_before(archives, tmp_path) -> None:
    row = next(r for r in pq.read_table(_shard(archives["edited"])).to_pylist() if r["id"] == BOMB)
    assert Header.unpack(row["header"]).height == 9000  # the edit holds up to every CRC and checksum
    assert row["checksum"] == A.row_checksum(row["header"], [row["chunk_001"], row["chunk_002"]])
    out = tmp_path / "out"
    t0 = time.monotonic()
    args = ["decode", str(archives["edited"]), str(out), "--step", str(STEPS), "--format", "parquet", *FAST]
    result = CliRunner().invoke(app, args)
    wall = time.monotonic() - t0
    assert result.exit_code == 3, result.output  # some images failed; the job went on
    assert wall < 120, f"decode took {wall:.0f} s"  # before the check it ran for more than 5 minutes
    got = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert set(got) == set(archives["before"])
    errors = {k: r["error"] for k, r in got.items() if r["status"] == "error"}
    assert set(errors) == {BOMB, SMALLER, NO_PIXELS}
    assert "9000x9000 = 81000000 pixels exceeds the limit of 64000000" in errors[BOMB]
    assert "stream header claims 32x32 pixels, its row says 16x16" in errors[SMALLER]
    assert "its row says 0x16 pixels" in errors[NO_PIXELS]
    assert all(e.startswith("archive: ") and got[k]["png"] is None for k, e in errors.items())
    for image_id, r in got.items():
        if image_id not in errors:
            assert r["status"] == "ok"
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(r["png"]))), archives["before"][image_id])


def test_inspect_counts_a_row_without_pixels_as_malformed(archives) -> None:
    """inspect reads only the index: the row whose width says 0 is counted, not divided by (the 9000x9000 and
    32x32 rows are consistent there; decode refuses them)."""
    info = dp.inspect(str(archives["edited"]))
    assert (info["malformed"], info["ok"]) == (1, 4)
    assert all(math.isfinite(c["bpp"]) for c in info["bpp_per_chunk"])
    result = CliRunner().invoke(app, ["inspect", str(archives["edited"])])
    assert result.exit_code == 0 and "malformed 1 (left out of bpp)" in " ".join(result.output.split())


def test_the_python_api_refuses_edited_rows_before_decoding(archives) -> None:
    edited = dp.open_archive(str(archives["edited"]))
    with pytest.raises(DiffcError, match="exceeds the limit of 64000000"):
        dict(edited.decode(step=STEPS, ids=[BOMB]))
    with pytest.raises(DiffcError, match="its row says 0x16 pixels"):  # by bitrate too: no division by 0
        dict(edited.decode(bpp=100.0, ids=[NO_PIXELS]))
    # --max-pixels (max_pixels=) is the limit: an honest 16x16 row over a limit of 255 pixels is refused
    with pytest.raises(DiffcError, match="16x16 = 256 pixels exceeds the limit of 255"):
        dict(dp.open_archive(str(archives["arc"])).decode(step=1, ids=["img003.png"], max_pixels=255))
    for fn in (dp.decode, dp.read_archive, dp.open_archive(str(archives["arc"])).decode):
        assert inspect.signature(fn).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS


def test_more_chunks_than_an_archive_holds_are_refused_before_any_work(archives, tmp_path) -> None:
    claims = tmp_path / "claims"
    shutil.copytree(archives["arc"], claims)
    manifest = json.loads((claims / MANIFEST_NAME).read_text())
    (claims / MANIFEST_NAME).write_text(json.dumps({**manifest, "codec": {**manifest["codec"], "num_chunks": 10**9}}))
    with pytest.raises(ArchiveError, match=f"names 1000000000 chunks per image; an archive holds 1 to {MAX_CHUNKS}"):
        dp.open_archive(str(claims))
    # the codec options are what builds the codec: a step count past the bound is refused, not allocated
    options = {**manifest["codec"]["options"], "num_steps": 10**9}
    (claims / MANIFEST_NAME).write_text(json.dumps({**manifest, "codec": {**manifest["codec"], "options": options}}))
    t0 = time.monotonic()
    with pytest.raises(InvalidInputError, match=f"num_steps must be in \\[1, {MAX_CHUNKS}\\]"):
        dict(dp.open_archive(str(claims)).decode(step=1))
    assert time.monotonic() - t0 < 10
    options = {**manifest["codec"]["options"], "flow_steps": 10**9}  # the decoder's ODE steps, from the manifest
    (claims / MANIFEST_NAME).write_text(json.dumps({**manifest, "codec": {**manifest["codec"], "options": options}}))
    with pytest.raises(InvalidInputError, match=f"flow_steps must be in \\[1, {MAX_CHUNKS}\\]"):
        dict(dp.open_archive(str(claims)).decode(step=1))
    # a shard without the chunk columns its manifest names: refused on the driver, not in a read task
    (claims / MANIFEST_NAME).write_text(json.dumps(manifest))
    shard = _shard(claims)
    pq.write_table(pq.read_table(shard).drop_columns([A.chunk_column(STEPS), A.crc_column(STEPS)]), shard)
    with pytest.raises(ArchiveError, match=f"lacks 2 payload columns \\(chunk_002, crc_002, ...\\) of the {STEPS}"):
        dp.open_archive(str(claims)).rows()


def test_cli_decode_has_compress_s_pixel_limit() -> None:
    from diffc_pipeline.cli.compress import compress
    from diffc_pipeline.cli.decode import decode

    limits = {inspect.signature(fn).parameters["max_pixels"].default.default for fn in (compress, decode)}
    assert limits == {DEFAULT_MAX_PIXELS}


# ---- Codec.stream_size, codec by codec ---------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CODECS))
def test_stream_size_reads_the_claimed_size_without_decoding(name: str) -> None:
    codec = _codec(name)
    item = codec.compress(np.stack([rgb(3, 20, 28)]), [7])[0]
    assert codec.stream_size(item) == (20, 28)
    if item.header:  # DiffC, CDC: the size is in the codec's own header, behind its CRC; no chunk is needed
        assert codec.stream_size(Encoded(item.header, [])) == (20, 28)
        with pytest.raises(StreamError):
            codec.stream_size(Encoded(item.header[:-1] + bytes([item.header[-1] ^ 1]), item.chunks))
        with pytest.raises(StreamError):
            codec.stream_size(Encoded(item.header[:5], item.chunks))
    else:  # classical: the size is in the image file's own header
        with pytest.raises(StreamError, match="holds no image file"):
            codec.stream_size(Encoded(b"", []))
        with pytest.raises(StreamError, match="does not parse"):
            codec.stream_size(Encoded(b"", [b"not an image file"]))


def test_a_classical_file_s_claimed_size_is_read_from_its_header_only(monkeypatch) -> None:
    """A JPEG whose frame header (SOF0, no CRC) is edited to claim 9000x9000: its size, at once."""
    codec = _codec("jpeg")
    data = bytearray(codec.compress(np.stack([rgb(4, 16, 16)]), [0])[0].chunks[0])
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (9000).to_bytes(2, "big") + (9000).to_bytes(2, "big")

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("stream_size decoded the pixels")

    # "at once" as no pixel decoded (every pixel access of an opened file loads it first), rather than a wall-time
    # bound that a loaded machine can overrun and that a decode stopping at the truncated data stays under
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert codec.stream_size(Encoded(b"", [bytes(data)])) == (9000, 9000)


def test_a_shard_with_damaged_pages_gives_error_rows_and_the_other_shard_decodes(ray_cluster, tmp_path) -> None:
    """Damage inside a shard's data pages (footer intact, so listing and planning pass) is found by the read
    task: that shard's rows become error rows naming the file, the other shard decodes bit for bit, and the
    CLI names the failed images (PNG output has no error column). It used to abort the whole job with a Ray
    traceback."""
    fixture = Path(__file__).parent / "fixtures" / "format1"
    arc = tmp_path / "arc"
    shutil.copytree(fixture / "archive", arc)
    shard = arc / "shards" / "shard-000000.parquet"
    meta = pq.ParquetFile(shard).metadata
    damaged_ids = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
    header = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                  if meta.row_group(0).column(i).path_in_schema == "header")  # fmt: skip
    data = bytearray(shard.read_bytes())
    start = header.data_page_offset
    data[start : start + header.total_compressed_size] = b"\xab" * header.total_compressed_size
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["decode", str(arc), str(out), *FAST])  # the whole stream reads `header`
    assert result.exit_code == 3, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert f"{len(damaged_ids)} image(s) could not be decoded:" in text
    for image_id in damaged_ids:
        assert f"{image_id}: archive: shard file file://{shard} is truncated or corrupt: " in text
    expected = json.loads((fixture / "expected.json").read_text())["dec_full"]
    decoded = {p.name: hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in out.glob("*.png")}
    assert decoded == {name: h for name, h in expected.items() if name not in damaged_ids} and decoded
    with pytest.raises(DiffcError, match=f"image '{damaged_ids[0]}' .* shard file .* is truncated or corrupt"):
        dict(dp.open_archive(str(arc)).decode(ids=[damaged_ids[0]]))


def test_image_bytes_are_read_only_as_the_formats_we_accept() -> None:
    """Pillow would otherwise try every plugin it has: EPS bytes go to Ghostscript where it is installed. An
    input file or a classical archive's chunk is read as the formats we list (an archive's: its codec's own)."""
    from diffc_pipeline.errors import InvalidImageError, StreamError
    from diffc_pipeline.images import decode_image

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"
    with pytest.raises(InvalidImageError, match="not a decodable image"):
        decode_image(eps)
    buf = io.BytesIO()
    Image.fromarray(rgb(0, 16, 16)).save(buf, "PNG")
    codec = resolve("jpeg", {}).build()
    for chunk in (eps, buf.getvalue()):  # not JPEG: neither is read, whatever Pillow could make of it
        item = Encoded(b"", [chunk], [0.0])
        with pytest.raises(StreamError, match="does not parse"):
            codec.stream_size(item)
        with pytest.raises(StreamError, match="does not decode"):
            codec.decompress([item])
    assert decode_image(buf.getvalue()).shape == (16, 16, 3)
