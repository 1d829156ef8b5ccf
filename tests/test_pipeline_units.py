"""Pipeline parts that need neither Ray nor the codec: listing, planning, archive rows, commit, manifest."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_data.make import bad_files, bomb_png, odd_layouts, write_images, write_parquet
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.codecs import cumulative_bits
from diffc_pipeline.errors import ArchiveError, DiffcError, ModelMismatchError
from diffc_pipeline.pipeline import archive as A
from diffc_pipeline.pipeline.commit import (
    commit_shard,
    committed_shards,
    data_path,
    discard_uncommitted,
    marker_path,
)
from diffc_pipeline.pipeline.incremental import compare
from diffc_pipeline.pipeline.manifest import (
    Manifest,
    check_same_codec,
    check_same_plan,
    read_manifest,
    write_manifest,
)
from diffc_pipeline.pipeline.plan import make_plan
from diffc_pipeline.pipeline.reader import read_prefixes
from diffc_pipeline.pipeline.runtime import check_reachable, size_actors
from diffc_pipeline.pipeline.sources import (
    SourceError,
    list_source,
    open_fs,
    parse_storage_options,
    public_url,
    read_bytes,
)
from diffc_pipeline.pipeline.stages import read_and_decode
from diffc_pipeline.pipeline.where import FilterError, filter_rows, parse_where
from diffc_pipeline.seeds import image_seed


def test_folder_listing_is_recursive_sorted_and_skips_other_files(tmp_path):
    ids = write_images(tmp_path, 3) + write_images(tmp_path, 2, sub="nested/deeper")
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    src = list_source(str(tmp_path), {})
    assert src.kind == "images"
    assert src.items.column("id").to_pylist() == sorted(ids)
    assert src.skipped == 1
    assert all(u.startswith("file://") for u in src.items.column("source_uri").to_pylist())
    assert src.items.column("source_mtime").null_count == 0


def test_glob_ids_are_relative_to_the_glob_root(tmp_path):
    write_images(tmp_path, 2, sub="a")
    write_images(tmp_path, 2, sub="b")
    src = list_source(f"{tmp_path}/*/img000.png", {})
    assert src.items.column("id").to_pylist() == ["a/img000.png", "b/img000.png"]


def test_parquet_listing_uses_id_column_and_row_groups(tmp_path):
    ids = write_parquet(tmp_path / "d" / "part-0.parquet", 10, row_group_size=4)
    src = list_source(str(tmp_path / "d"), {})
    assert src.kind == "parquet"
    assert src.items.column("id").to_pylist() == ids
    assert src.items.column("row_group").to_pylist() == [0] * 4 + [1] * 4 + [2] * 2
    assert src.items.column("source_uri")[3].as_py().endswith("part-0.parquet#row=3")


def test_parquet_rows_stream_through_a_large_row_group(tmp_path):
    """A read task holds a few rows of a row group, not the group: a dataset written as one huge group (pyarrow
    writes a group per million rows) must not cost every read task the whole dataset."""
    rng = np.random.default_rng(0)
    values = [rng.bytes(256 << 10) for _ in range(128)]  # 32 MB in one row group, pages of 4 rows
    pq.write_table(pa.table({"image": values}), tmp_path / "f.parquet", row_group_size=128, write_batch_size=4)
    items = list_source(str(tmp_path / "f.parquet"), {}).items
    assert set(items.column("row_group").to_pylist()) == {0}
    unit = items.take([40, 41, 42, 3, 127])  # mid-group, then back to the start (a restart), then the end
    got, peak = [], 0
    for data in read_bytes(unit, {}, "image"):
        peak = max(peak, pa.total_allocated_bytes())
        got.append(data)
    assert got == [values[i] for i in (40, 41, 42, 3, 127)]
    assert peak < 12 << 20, f"{peak} bytes of Arrow memory held while reading 5 rows of a 32 MB group"

    missing = pa.Table.from_pylist([{**items.slice(0, 1).to_pylist()[0], "row": 999}], schema=items.schema)
    (error,) = read_bytes(missing, {}, "image")
    assert isinstance(error, SourceError) and "has no row 999 in row group 0" in str(error)


def test_parquet_without_id_column_and_wrong_image_column(tmp_path):
    pq.write_table(pa.table({"image": [b"x", b"y"]}), tmp_path / "f.parquet")
    src = list_source(str(tmp_path / "f.parquet"), {})
    assert src.items.column("id").to_pylist() == ["f:0", "f:1"]
    with pytest.raises(SourceError, match="no column 'pixels'"):
        list_source(str(tmp_path), {}, image_column="pixels")


@pytest.mark.parametrize("make", ["missing", "empty", "only_text"])
def test_missing_or_empty_input_is_a_clear_error(tmp_path, make):
    target = tmp_path / "in"
    if make != "missing":
        target.mkdir()
    if make == "only_text":
        (target / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="does not exist" if make == "missing" else "no images found"):
        list_source(str(target), {})


def test_duplicate_ids_are_refused(tmp_path):
    pq.write_table(pa.table({"id": ["a", "a"], "image": [b"x", b"y"]}), tmp_path / "f.parquet")
    with pytest.raises(SourceError, match="'a' occurs more than once"):
        list_source(str(tmp_path), {})


def test_storage_options_and_urls_hide_secrets():
    opts = parse_storage_options(["key=AKIA", "client_kwargs.endpoint_url=http://h:1", "anon=false"])
    assert opts == {"key": "AKIA", "client_kwargs": {"endpoint_url": "http://h:1"}, "anon": False}
    # numbers reach the client as numbers (botocore compares retries with an int), credentials stay strings
    typed = parse_storage_options(
        ["config_kwargs.retries.max_attempts=3", "block_size=1e6", "secret=0123", "token=42", 'region="7"', "x=nan"]
    )
    assert typed == {
        "config_kwargs": {"retries": {"max_attempts": 3}},
        "block_size": 1e6,
        "secret": "0123",
        "token": "42",
        "region": "7",
        "x": "nan",
    }
    assert public_url("s3://user:secret@bucket/x") == "s3://bucket/x"
    with pytest.raises(SourceError):
        parse_storage_options(["novalue"])


def test_plan_is_deterministic_and_units_stay_inside_shards_and_row_groups(tmp_path):
    write_parquet(tmp_path / "part-0.parquet", 10, row_group_size=4)
    src = list_source(str(tmp_path), {})
    plan = make_plan(src, shard_size=3, seed=5)
    again = make_plan(list_source(str(tmp_path), {}), shard_size=3, seed=5)
    assert [s.name for s in plan.shards] == ["shard-000000", "shard-000001", "shard-000002", "shard-000003"]
    assert [s.ids_sha256 for s in plan.shards] == [s.ids_sha256 for s in again.shards]
    assert plan.items.column("seed").to_pylist() == again.items.column("seed").to_pylist()
    assert image_seed(5, "p0000") != image_seed(6, "p0000")
    units = plan.read_units(plan.shards)
    assert sum(u.num_rows for u in units) == 10
    for u in units:
        assert len(set(u.column("shard").to_pylist())) == 1
        assert len(set(u.column("row_group").to_pylist())) == 1


def _decode_rows(items: pa.Table, **kw) -> list[dict]:
    args = dict(storage_options={}, image_column="image", max_pixels=10_000_000, batch_size=4)
    args.update(kw)
    return [r for t in read_and_decode(items, **args) for r in t.to_pylist()]


def test_decode_stage_turns_bad_files_into_error_rows_and_converts_layouts(tmp_path):
    bad = bad_files(tmp_path)
    layouts = odd_layouts(tmp_path)
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    write_images(tmp_path, 1)
    plan = make_plan(list_source(str(tmp_path), {}), shard_size=100, seed=0)
    rows = {r["id"]: r for r in _decode_rows(plan.items, max_pixels=1_000_000)}
    for name in bad:
        assert rows[name]["status"] == "error" and rows[name]["error"].startswith("decode:"), rows[name]
    assert "exceeds the limit" in rows["bomb.png"]["error"]
    for name, channels in layouts.items():
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["channels"] == channels
        assert len(r["pixels"]) == r["height"] * r["width"] * 3
    ok = rows["img000.png"]
    assert (ok["height"], ok["width"], len(ok["pixels"])) == (16, 16, 16 * 16 * 3)


def test_16_bit_images_scale_by_their_bit_depth_not_their_content():
    """A dark 16-bit scan is 16-bit: 200/65535 is near black, not 200/255 (78% grey)."""
    import io

    from PIL import Image

    from diffc_pipeline.images import decode_image

    def png16(value: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((4, 5), value, np.uint16)).save(buf, "PNG")
        return buf.getvalue()

    assert Image.open(io.BytesIO(png16(200))).mode == "I;16"
    for value, expected in ((200, 1), (60000, 233), (65535, 255), (0, 0)):
        out = decode_image(png16(value))
        assert out.shape == (4, 5, 3) and out.dtype == np.uint8
        assert (out == expected).all(), (value, out[0, 0])


def test_animations_and_out_of_range_float_images_are_refused_not_cut():
    """Silently wrong output is worse than an error: an animation or a multi-page TIFF coded as its first frame,
    a float image with values past 1 clipped to white, negative 32-bit values clipped to black."""
    import io

    from PIL import Image

    from diffc_pipeline.errors import InvalidImageError
    from diffc_pipeline.images import decode_image

    def save(frames: list[Image.Image], fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=len(frames) > 1, append_images=frames[1:], **kw)
        return buf.getvalue()

    frames = [Image.new("RGB", (8, 6), (10 * i, 50, 90)) for i in range(3)]
    for fmt in ("GIF", "PNG", "WEBP", "TIFF"):
        with pytest.raises(InvalidImageError, match=rf"{fmt} image has 3 frames .* extract the frames"):
            decode_image(save(frames, fmt))
        assert decode_image(save(frames[:1], fmt)).shape == (6, 8, 3)  # one frame: coded as before
    # a camera's or scanner's TIFF whose other pages are reduced-resolution previews (NewSubfileType 1)
    preview = save([frames[0], frames[1].resize((4, 3))], "TIFF", tiffinfo={254: 1})
    assert decode_image(preview)[0, 0].tolist() == [0, 50, 90]

    def single_band(values: np.ndarray) -> bytes:
        return save([Image.fromarray(values)], "TIFF")

    half = decode_image(single_band(np.full((4, 5), 0.5, np.float32)))
    assert (half == 128).all()  # 0..1 is read as it always was
    edges = decode_image(single_band(np.array([[-1e-7, 1.0000001]], np.float32)))  # float rounding's overshoot
    assert edges[0, :, 0].tolist() == [0, 255]
    for values, shown in (
        (np.full((4, 5), 3.5, np.float32), "from 3.5 to 3.5, outside 0..1"),
        (np.full((4, 5), np.nan, np.float32), "floating-point image with values all NaN or infinite"),
        (np.full((4, 5), -7, np.int32), "32-bit integer image with values from -7 to -7, outside 0..65535"),
    ):
        with pytest.raises(InvalidImageError, match=re.escape(shown)):
            decode_image(single_band(values))
    assert (decode_image(single_band(np.full((4, 5), 300, np.int32))) == 1).all()  # 16-bit range: as before


def test_decode_stage_reads_parquet_rows(tmp_path):
    write_parquet(tmp_path / "part-0.parquet", 6, row_group_size=4)
    plan = make_plan(list_source(str(tmp_path), {}), shard_size=100, seed=0)
    rows = []
    for unit in plan.read_units(plan.shards):
        rows += _decode_rows(unit)
    assert [r["id"] for r in rows] == [f"p{i:04d}" for i in range(6)]
    assert all(r["status"] == "ok" and r["source_size"] > 0 for r in rows)


def _encoded_rows(n: int, steps: int, error_at: int | None = None) -> pa.Table:
    rows = []
    for i in range(n):
        header, chunks = bytes([i]) * 5, [bytes([i, k]) * (k + 1) for k in range(steps)]
        row = dict(
            id=f"i{i}",
            source_uri=f"file:///x/i{i}",
            source_size=10,
            height=4,
            width=4,
            channels=3,
            seed=i,
            status="ok",
            header=header,
            chunks=chunks,
            shard=0,
            cum_bits=cumulative_bits(header, chunks),
            crcs=A.chunk_crcs(chunks),
            checksum=A.row_checksum(header, chunks),
        )
        if i == error_at:
            row = {k: row[k] for k in ("id", "source_uri", "seed", "shard")} | {
                "status": "error",
                "error": "decode: x",
            }
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=A.ENCODED_SCHEMA)


def test_shard_layout_one_uncompressed_column_per_step_with_metadata(tmp_path):
    table = A.encoded_to_shard(_encoded_rows(5, 3, error_at=2), 3, {"format_version": 1, "shard": "s"})
    path = tmp_path / "s.parquet"
    path.write_bytes(A.shard_to_parquet_bytes(table))
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    assert names[-7:] == ["header", "chunk_001", "crc_001", "chunk_002", "crc_002", "chunk_003", "crc_003"]
    for i, name in enumerate(names):
        expected = "UNCOMPRESSED" if name.startswith(("chunk_", "crc_", "header")) else "ZSTD"
        assert meta.row_group(0).column(i).compression == expected, name
    back = pq.read_table(path)
    assert A.shard_metadata(str(path))["shard"] == "s"
    assert back.column("chunk_002").to_pylist()[1] == bytes([1, 1]) * 2
    assert back.column("status").to_pylist()[2] == "error" and back.column("chunk_001")[2].as_py() is None
    assert back.column("cum_bits")[1].as_py() == [8 * 7, 8 * 11, 8 * 17]


def test_prefix_read_fetches_about_the_bytes_it_needs(tmp_path):
    n, steps = 300, 8
    rows = []
    for i in range(n):
        header, chunks = b"h" * 20, [np.random.default_rng(i * 10 + k).bytes(200) for k in range(steps)]
        rows.append(
            dict(
                id=f"i{i}",
                source_uri="u",
                seed=i,
                status="ok",
                header=header,
                chunks=chunks,
                shard=0,
                height=8,
                width=8,
                channels=3,
                cum_bits=cumulative_bits(header, chunks),
                crcs=A.chunk_crcs(chunks),
                checksum=A.row_checksum(header, chunks),
            )
        )
    table = A.encoded_to_shard(pa.Table.from_pylist(rows, schema=A.ENCODED_SCHEMA), steps, {"format_version": 1})
    (tmp_path / "s.parquet").write_bytes(A.shard_to_parquet_bytes(table))
    fs, p = open_fs(str(tmp_path / "s.parquet"), {})
    got, nbytes = read_prefixes(fs, p, list(range(n)), 2)
    needed = n * (20 + 2 * 200)
    total = (tmp_path / "s.parquet").stat().st_size
    assert got.column("chunk_002").to_pylist()[7] == rows[7]["chunks"][1]
    assert needed <= nbytes < 1.3 * needed < total / 2
    few, nbytes_few = read_prefixes(fs, p, [296, 290], 2)
    assert few.column("chunk_001").to_pylist() == [rows[296]["chunks"][0], rows[290]["chunks"][0]]
    assert few.column("crc_002").to_pylist() == [rows[296]["crcs"][1], rows[290]["crcs"][1]]
    assert nbytes_few < nbytes / 2  # only the row group of rows 256..299


def test_verify_prefix_flags_a_corrupted_chunk():
    chunks = [b"abc", b"def"]
    A.verify_prefix("x", b"h", chunks, A.chunk_crcs(chunks))
    with pytest.raises(ArchiveError, match="chunk 2 fails its checksum"):
        A.verify_prefix("x", b"h", [b"abc", b"deX"], A.chunk_crcs(chunks))


def test_commit_marker_is_the_commit(tmp_path):
    fs, root = open_fs(str(tmp_path / "arc"), {})
    commit_shard(fs, root, "shard-000000", b"data0", {"rows": 1})
    # a killed run: data file in place, marker never written, plus a temp file
    fs.pipe_file(data_path(root, "shard-000001"), b"partial")
    fs.pipe_file(f"{root}/shards/.tmp-abc-shard-000002.parquet", b"partial")
    committed = committed_shards(fs, root)
    assert list(committed) == ["shard-000000"]
    assert committed["shard-000000"]["file_bytes"] == 5
    assert discard_uncommitted(fs, root, set(committed)) == 2
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/shards")] == ["shard-000000.parquet"]
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/commits")] == ["shard-000000.stats.json"]
    fs.pipe_file(marker_path(root, "shard-000003"), b"{broken")
    with pytest.raises(ArchiveError, match="not valid JSON"):
        committed_shards(fs, root)


def _manifest(**kw) -> Manifest:
    base = dict(
        codec={
            "name": "diffc",
            "fingerprint": "f" * 64,
            "options": {"num_steps": 4},
            "num_chunks": 4,
            "progressive": True,
            "details": {},
        },
        model={"name": "m", "sha256": "a" * 64, "spec": None},
        source={"url": "/x", "kind": "images"},
        seed=0,
        shard_size=10,
        num_images=3,
    )
    return Manifest(**(base | kw))


def test_manifest_roundtrip_and_refusals(tmp_path):
    fs, root = open_fs(str(tmp_path), {})
    assert read_manifest(fs, root) is None
    write_manifest(fs, root, _manifest())
    m = read_manifest(fs, root)
    assert m.model["sha256"] == "a" * 64 and m.num_chunks == 4 and m.codec_name == "diffc"
    with pytest.raises(ModelMismatchError, match="made with model m@aaaaaaaaaaaa, not n@bbbbbbbbbbbb"):
        check_same_codec(m, {**m.codec, "model": {"name": "n", "sha256": "b" * 64}}, "X", "hint")
    with pytest.raises(ModelMismatchError, match="other codec options"):
        check_same_codec(m, {**m.codec, "model": m.model, "fingerprint": "0" * 64}, "X", "hint")
    steps = {**m.codec, "model": m.model, "fingerprint": "0" * 64, "options": {**m.codec["options"], "num_steps": 3}}
    with pytest.raises(ModelMismatchError, match=r"other codec options \(num_steps: archive has \d+, this run 3;"):
        check_same_codec(m, steps, "X", "hint")  # the option that differs, not the archive's whole list
    with pytest.raises(ModelMismatchError, match="made with codec 'diffc', not 'avif'"):
        check_same_codec(m, {**m.codec, "name": "avif", "model": None}, "X", "hint")
    with pytest.raises(ModelMismatchError, match="from a model directory; pass --model"):
        m.codec_spec()  # no named model recorded: the user must say where the model is
    assert m.codec_spec("/models/m").model == "/models/m"
    with pytest.raises(ArchiveError, match="seed: archive has 0, this run 1"):
        check_same_plan(m, m.source, 1, 10, "X")
    d = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(d | {"format_version": 99}))
    with pytest.raises(ArchiveError, match="format version 99"):
        read_manifest(fs, root)


def test_where_filters_and_rejects_code():
    t = pa.table({"id": ["val_1", "val_12", "b"], "width": [1, 3, 5], "error": [None, "x", None]})
    assert t.filter(parse_where("width >= 3 AND id LIKE 'val_1%'", t.column_names))["id"].to_pylist() == ["val_12"]
    assert t.filter(parse_where("id IN ('b', 'val_1') or error IS NOT NULL", t.column_names)).num_rows == 3
    assert t.filter(parse_where("width IN (3)", t.column_names))["id"].to_pylist() == ["val_12"]  # one value
    assert t.filter(parse_where("id NOT LIKE 'val%'", t.column_names))["id"].to_pylist() == ["b"]  # did not parse
    odd = pa.table({"id": ["dir\\file", 'a"b', "it's"]})
    for where, kept in (('id = "dir\\file"', "dir\\file"), ('id = "a""b"', 'a"b'), ("id = 'it''s'", "it's")):
        assert odd.filter(parse_where(where, ["id"]))["id"].to_pylist() == [kept], where  # no Python escapes
    for bad, message in [
        ("width >", "cannot parse"),
        ("nope = 1", "nope"),
        ("__import__('os').system('x')", "unsupported syntax"),
        ("width + 1 > 2", "must be a column name"),
    ]:
        with pytest.raises(FilterError, match=message):
            parse_where(bad, t.column_names)
    with pytest.raises(FilterError, match="does not fit the columns' types"):
        filter_rows(t, "width IN (3, 'a')", t.column_names)


def test_actor_sizing_leaves_cpus_for_read_tasks():
    two = size_actors({"CPU": 2.0})
    assert (two.actors, two.num_cpus, two.threads, two.num_gpus) == (2, 0.5, 1, None)
    big = size_actors({"CPU": 16.0})
    assert big.actors == 16 and big.actors * big.num_cpus == 14
    four_threads = size_actors({"CPU": 16.0}, threads=4)
    assert four_threads.actors == 4 and four_threads.num_cpus == 3.5
    assert size_actors({"CPU": 1.0}).num_cpus == 0.0
    # three 1-CPU nodes: whole-CPU actors, so one node stays free for reads (not 0.33 CPU on each)
    spread = size_actors({"CPU": 3.0}, nodes=3)
    assert (spread.actors, spread.num_cpus) == (2, 1.0)
    assert size_actors({"CPU": 64.0}, threads=2, nodes=8).actors == 28  # 8 CPUs kept: 64 / 8
    gpu = size_actors({"CPU": 8.0, "GPU": 2.0})
    assert (gpu.actors, gpu.num_gpus) == (2, 1.0)


def test_an_unreachable_cluster_address_is_a_clear_error_not_a_wait():
    """ray.init would wait on a missing GCS for minutes (5+ measured); the probe answers at once."""
    # A port held bound but never listening: connections are refused at once, and no other process can take it
    # meanwhile (a port closed before use could be, or be the kernel's pick for the client's own source port).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        start = time.monotonic()
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
            with pytest.raises(DiffcError, match=f"cannot reach the Ray cluster at {re.escape(address)}"):
                check_reachable(address)
    assert time.monotonic() - start < 30  # not ray.init's minutes; generous for a loaded machine
    with pytest.raises(DiffcError, match="not host:port"):
        check_reachable("headnode")
    with socket.socket() as server:  # something listening: accepted
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    check_reachable("auto")  # left to Ray


def test_compress_against_an_unreachable_cluster_exits_1_with_the_address(tmp_path):
    """Exit code 1 (the run failed, worth a retry), not 2 (bad input): a scheduler can tell them apart; and the
    archive is not touched (a manifest left behind would make the next run a resume of nothing)."""
    samples = Path(__file__).resolve().parents[1] / "diffc_pipeline" / "samples"
    with socket.socket() as probe:  # held bound, never listening, for the run (as above)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        args = ["compress", str(samples), str(tmp_path / "archive"), "--address", f"127.0.0.1:{port}"]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in " ".join(result.output.split())
    assert not (tmp_path / "archive").exists()


def test_replayed_rows_are_dropped_once_seen():
    from collections import defaultdict

    from diffc_pipeline.pipeline.compress_job import _new_rows

    seen: dict[int, set[str]] = defaultdict(set)
    first = pa.table({"shard": pa.array([0, 0, 1], pa.int32()), "id": ["a", "b", "c"]})
    assert _new_rows(first, seen).num_rows == 3
    replay = pa.table({"shard": pa.array([0, 1, 1], pa.int32()), "id": ["b", "c", "d"]})
    assert _new_rows(replay, seen).column("id").to_pylist() == ["d"]
    assert seen == {0: {"a", "b"}, 1: {"c", "d"}}


def test_exif_orientation_is_applied():
    """A camera stores a portrait photo landscape plus an orientation tag; viewers (and now the codecs) show it
    upright. It was coded sideways."""
    import io

    from PIL import Image

    from diffc_pipeline.images import decode_image

    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :8] = 255  # a white band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(buf.getvalue())
    assert out.shape == (64, 32, 3)
    assert out[:8].mean() > 200 and out[-8:].mean() < 50  # the band is now the top edge


def test_incremental_compare_ignores_an_unknown_row_size_only_where_the_file_is_versioned():
    import datetime as dt

    from diffc_pipeline.pipeline.incremental import compare

    when = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def table(size: int, mtime: dt.datetime | None) -> pa.Table:
        return pa.table(
            {
                "id": ["r0"],
                "source_uri": ["s3://b/d.parquet#row=0"],
                "source_size": pa.array([size], pa.int64()),
                "source_mtime": pa.array([mtime], pa.timestamp("us", tz="UTC")),
                "source_etag": pa.array([None], pa.string()),
            }
        )

    held = table(603, when)  # an archive row holds the bytes it read
    assert compare(table(-1, when), held).unchanged == 1  # a Parquet row: the file's mtime says it is the same
    assert compare(table(-1, when + dt.timedelta(seconds=1)), held).changed == 1
    unversioned = table(603, None)
    assert compare(table(-1, None), unversioned).changed == 1  # nothing could tell a replaced file
    tagged = table(603, when).set_column(4, "source_etag", pa.array(['"e1542ff6"']))
    uploaded_again = table(603, when + dt.timedelta(days=1)).set_column(4, "source_etag", pa.array(['"e1542ff6"']))
    assert compare(uploaded_again, tagged).unchanged == 1  # the same bytes re-synced: a new mtime, the same ETag
    other = table(603, when + dt.timedelta(days=1)).set_column(4, "source_etag", pa.array(['"0a0a0a0a"']))
    assert compare(other, tagged).changed == 1


def test_incremental_compare_tries_unreadable_sources_again_and_other_error_rows_when_asked():
    """A night the source could not be read (a storage outage) must not leave the image out for good; an image
    refused for itself (undecodable, too large) is tried again only with retry_errors."""
    import datetime as dt

    from diffc_pipeline.pipeline.incremental import compare

    when = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    ids = ["ok", "unread", "refused"]
    items = pa.table(
        {
            "id": ids,
            "source_uri": [f"file:///in/{i}.png" for i in ids],
            "source_size": pa.array([100] * 3, pa.int64()),
            "source_mtime": pa.array([when] * 3, pa.timestamp("us", tz="UTC")),
            "source_etag": pa.array([None] * 3, pa.string()),
        }
    )
    outcome = {
        "status": ["ok", "error", "error"],
        "error": [None, "read: [Errno 5] Input/output error", "decode: image of 16x16 pixels exceeds the limit"],
    }
    held = items.append_column("status", pa.array(outcome["status"])).append_column("error", pa.array(outcome["error"]))
    delta = compare(items, held)
    assert (delta.new, delta.changed, delta.retried, delta.unchanged) == (0, 0, 1, 2)
    assert delta.todo.column("id").to_pylist() == ["unread"]
    every = compare(items, held, retry_errors=True)
    assert (every.retried, every.unchanged, every.todo.column("id").to_pylist()) == (2, 1, ["unread", "refused"])


def test_an_empty_listing_against_a_held_archive_reports_every_id_deleted():
    from diffc_pipeline.pipeline.incremental import compare
    from diffc_pipeline.pipeline.sources import ITEM_SCHEMA

    strings = {k: pa.array(["u", None], pa.string()) for k in ("source_uri", "source_etag")}
    held = pa.table({"id": ["a", "b"], **strings})
    held = held.append_column("source_size", pa.array([1, 1], pa.int64()))
    held = held.append_column("source_mtime", pa.array([None, None], pa.timestamp("us", tz="UTC")))
    delta = compare(ITEM_SCHEMA.empty_table(), held)
    assert (delta.new, delta.unchanged, delta.deleted) == (0, 0, ["a", "b"])


def test_the_latest_version_is_in_the_highest_numbered_shard_past_a_million():
    from diffc_pipeline.pipeline.incremental import latest_rows

    index = pa.table(
        {
            "id": ["a", "a", "b", "a"],
            "shard": ["shard-000002", "shard-1000000", "shard-000001", "shard-999999"],
            "row": [0, 1, 2, 3],
        }
    )
    latest = latest_rows(index)
    assert dict(zip(latest.column("id").to_pylist(), latest.column("shard").to_pylist(), strict=True)) == {
        "a": "shard-1000000",
        "b": "shard-000001",
    }


def test_names_with_fsspec_syntax_read_their_own_file(tmp_path):
    """fsspec reads '::' in a URL as a chain ('a::b.png' would open 'a') and '[1]' as a glob: a listed file or
    an input folder so named is still that file or folder."""
    src = tmp_path / "shots[1]"
    write_images(src, 1)
    (src / "img000.png").rename(src / "a::b.png")
    write_images(src, 2, h=8, w=24)  # img000.png (another image) and img001.png: 'a' itself is absent
    (src / "img000.png").rename(src / "a")
    write_images(tmp_path / "shots1", 1)  # what the pattern 'shots[1]' would match
    source = list_source(str(src), {})
    assert source.items.column("id").to_pylist() == ["a::b.png", "img001.png"]
    data = list(read_bytes(source.items, {}, "image"))
    assert data[0] == (src / "a::b.png").read_bytes() != (src / "a").read_bytes()


def test_a_limited_listing_keeps_every_id_for_the_deleted_count(tmp_path):
    write_images(tmp_path / "in", 4)
    limited = list_source(str(tmp_path / "in"), {}, limit=2)
    assert limited.items.num_rows == 2
    assert limited.listed_ids.to_pylist() == [f"img00{i}.png" for i in range(4)]
    held = list_source(str(tmp_path / "in"), {}).items
    delta = compare(limited.items, held, limited.listed_ids)
    assert (delta.new, delta.unchanged, delta.deleted) == (0, 2, [])
    assert compare(limited.items, held).deleted == ["img002.png", "img003.png"]  # without them: wrongly lost


def test_an_archive_without_committed_shards_has_typed_rows(tmp_path):
    import shutil

    import diffc_pipeline as dp
    from diffc_pipeline.pipeline.decode_job import DecodeTargetError

    fixture = Path(__file__).parent / "fixtures" / "format1" / "archive"
    arch = tmp_path / "arch"
    shutil.copytree(fixture, arch)
    shutil.rmtree(arch / "commits")  # a first run killed before its first commit
    reader = dp.open_archive(str(arch))
    rows = reader.rows()
    assert rows.num_rows == 0 and rows.schema.field("id").type == pa.string()
    assert rows.schema.field("cum_bits").type == pa.list_(pa.int64())
    with pytest.raises(DecodeTargetError, match=r"ids not in .*img000\.png"):
        list(reader.decode(ids=["img000.png"]))


def test_a_file_name_that_is_not_utf8_is_named_before_anything_runs(tmp_path):
    import os

    write_images(tmp_path / "in", 1)
    bad = os.path.join(os.fsencode(tmp_path / "in"), b"bad\xff.png")
    with open(bad, "wb") as f:
        f.write((tmp_path / "in" / "img000.png").read_bytes())
    with pytest.raises(SourceError, match=r"file name .*bad.* is not valid UTF-8"):
        list_source(str(tmp_path / "in"), {})


def test_read_units_never_split_a_row_group():
    """A read fetches whole row groups: a group split between units was fetched once per unit."""
    from diffc_pipeline.pipeline.archive import ROW_GROUP_SIZE
    from diffc_pipeline.pipeline.decode_job import ROWS_PER_READ, read_units
    from diffc_pipeline.pipeline.reader import open_archive

    archive = open_archive(str(Path(__file__).parent / "fixtures" / "format1" / "archive"), {})
    n = 2 * ROW_GROUP_SIZE + 88
    sparse = [3, 4, ROW_GROUP_SIZE + 1, 2 * ROW_GROUP_SIZE + 5]  # a few rows in each of three groups
    for rows in (list(range(n)), sparse):
        selection = pa.table(
            {"shard": ["shard-000000"] * len(rows), "row": rows, "id": [str(r) for r in rows],
             "height": [8] * len(rows), "width": [8] * len(rows), "step": [1] * len(rows)}
        )  # fmt: skip
        units = read_units(archive, selection)
        assert [r for u in units for r in u.column("row").to_pylist()] == rows  # every row once, in order
        groups = [{r // ROW_GROUP_SIZE for r in u.column("row").to_pylist()} for u in units]
        assert all(not a & b for i, a in enumerate(groups) for b in groups[i + 1 :])  # no group in two units
    assert [u.num_rows for u in read_units(archive, selection)] == [4]  # sparse rows: one read
    assert ROWS_PER_READ <= ROW_GROUP_SIZE


def test_inspect_groups_errors_that_differ_in_numbers_and_never_cuts_a_number():
    from diffc_pipeline.pipeline.inspect_archive import MESSAGE_CHARS, _error_counts

    big = "decode: image of {}x9000 pixels exceeds the limit of 64000000 pixels"
    long = "read: " + " ".join(f"part{i:04d}" for i in range(40))  # 355 characters
    counts, examples = _error_counts(
        ["a", "b", "c", "d", "e"], [big.format(9000), None, big.format(12345), long, big.format(9000)]
    )
    shown = big.format(9000) + " (numbers vary)"
    assert counts == {shown: 3, long[: long.rfind(" ", 0, MESSAGE_CHARS)] + " ...": 1}
    assert examples[shown] == ["a", "c", "e"]
    assert all(m.endswith((" ...", ")", "pixels")) and len(m) <= MESSAGE_CHARS + 20 for m in counts)
    counts, _ = _error_counts(["a", "b"], [big.format(9000), big.format(9000)])
    assert counts == {big.format(9000): 2}  # identical messages: shown whole, not marked


def test_pixel_limits_count_the_area_a_codec_pads_to():
    """A 1-pixel-high strip costs CDC 64 rows of work: ``--max-pixels`` and the per-call budget count the
    padded area, in compress (an error row, the other images coded) and in decode (an error row)."""
    from diffc_pipeline.codecs.registry import resolve
    from diffc_pipeline.pipeline.decode_job import check_stream_size
    from diffc_pipeline.pipeline.stages import Encoder

    spec = resolve("cdc")
    codec = spec.build()
    assert codec.padded_size(1, 70) == (64, 128) and codec.work_pixels(1, 70) == 64 * 128
    assert resolve("webp").build().work_pixels(1, 70) == 70  # no padding: the contract's default
    diffc = resolve("diffc", model="gaussian").build()
    assert diffc.padded_size(5, 7) == (5, 7)  # the Gaussian model pads to 1

    encoder = Encoder(spec.to_dict(), codec.fingerprint, threads=1, device="cpu", max_pixels=5000)
    rng = np.random.default_rng(0)
    strip, square = rng.integers(0, 256, (1, 70, 3), np.uint8), rng.integers(0, 256, (32, 32, 3), np.uint8)
    rows = [
        {"id": name, "status": "ok", "height": x.shape[0], "width": x.shape[1], "pixels": x.tobytes(), "seed": 1}
        for name, x in (("strip", strip), ("square", square))
    ]
    out = {r["id"]: r for r in encoder(pa.Table.from_pylist(rows)).to_pylist()}
    assert out["strip"]["status"] == "error"
    assert out["strip"]["error"] == (
        "encode: image of 70x1 pixels is coded padded to 128x64 = 8192 pixels, over the limit of 5000 pixels "
        "(--max-pixels)"
    )
    assert out["square"]["status"] == "ok" and out["square"]["chunks"]  # 64x64 = 4096 padded: within

    row = {"id": "strip", "height": 1, "width": 70, "header": codec.compress(strip[None], [1])[0].header, "chunks": []}
    check_stream_size(codec, row, max_pixels=8192)
    with pytest.raises(ArchiveError, match=r"70x1 = 70 pixels \(coded padded to 128x64 = 8192\) exceeds the limit"):
        check_stream_size(codec, row, max_pixels=8191)


def test_hugging_face_image_structs_are_read_and_other_column_types_refused_up_front(tmp_path):
    """Hugging Face ``datasets`` store an Image feature as a struct {bytes, path}: every row failed with "a
    bytes-like object is required, not 'dict'"; a text column failed every row the same way."""
    import io

    from PIL import Image

    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    layout = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": png(40 * i), "path": f"{i}.png"} for i in range(3)]
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.table({"image": pa.array(cells, layout)}), tmp_path / "hf" / "train-00000.parquet")
    rows = _decode_rows(make_plan(list_source(str(tmp_path / "hf"), {}), shard_size=100, seed=0).items)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [np.frombuffer(r["pixels"], np.uint8)[0] for r in rows] == [0, 40, 80]

    by_path = [{"bytes": None, "path": "elsewhere/3.png"}, cells[0]]  # the image not embedded, then one that is
    pq.write_table(pa.table({"image": pa.array(by_path, layout)}), tmp_path / "hf" / "train-00001.parquet")
    rows = _decode_rows(make_plan(list_source(str(tmp_path / "hf"), {}), shard_size=100, seed=0).items)
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error", "ok"]
    assert "holds no image bytes, only a path ('elsewhere/3.png')" in rows[3]["error"]
    assert rows[3]["error"].startswith("source: ")  # the input's own state: not retried as a failed read

    (tmp_path / "text").mkdir()
    pq.write_table(pa.table({"image": ["a.png", "b.png"]}), tmp_path / "text" / "x.parquet")
    with pytest.raises(SourceError, match=r"column 'image' holds string, not encoded image bytes"):
        list_source(str(tmp_path / "text"), {})


def test_the_name_folding_probe_leaves_nothing_behind(tmp_path):
    import fsspec

    from diffc_pipeline.pipeline.png_output import folds_names

    fs = fsspec.filesystem("file")
    assert isinstance(folds_names(fs, str(tmp_path / "new" / "out")), bool)  # probed where OUTPUT will be
    assert not list(tmp_path.iterdir())  # no probe file left, no folder made
    assert folds_names(fsspec.filesystem("memory"), "/out") is False  # object stores: case-sensitive


def test_decode_choices_at_their_edges():
    """From a review of `diffc decode`: a --bpp equal to a row's own bits per pixel was refused (the float
    product rounded below the bits); names that are one file on macOS/Windows, or a file and a folder at once,
    passed; a 24-digit integer or `= NULL` in --where gave a traceback or matched nothing; numpy numbers from
    `rows()` were refused as steps and bpps, `limit=1.5` failed deep inside; an empty selection through
    `open_archive().decode` was a silent empty loop where every other path says so."""
    from diffc_pipeline.pipeline.decode_job import DecodeOptions, DecodeTargetError, _steps_within
    from diffc_pipeline.pipeline.png_output import check_distinct_names

    assert 440 / 307200 * 307200 < 440  # the rounding the old comparison hit
    assert _steps_within([440, 1000], 307200, 440 / 307200, 2) == 1
    assert _steps_within([1664], 770, 1664 / 770, 1) == 1
    assert _steps_within([1664], 770, 1663 / 770, 1) == 0
    for ids, shown in (
        (["Case.png", "case.png"], "'Case.png' and 'case.png'"),
        (["\u00e9.png", "e\u0301.png"], "-> "),  # NFC and NFD spellings of one name
        (["a.png", "a.png/b"], "would be both a file and a folder"),
    ):
        with pytest.raises(DecodeTargetError, match=re.escape(shown)):
            check_distinct_names(ids)
    check_distinct_names(["x/y.png", "x/z.png", "X.png"])  # x/ is a folder, X.png a file: no clash
    check_distinct_names(["Case.png", "case.png"], folds=False)  # two files on Linux and object stores
    with pytest.raises(DecodeTargetError, match="both a file and a folder"):
        check_distinct_names(["a.png", "a.png/b"], folds=False)

    table = pa.table({"seed": pa.array([1, 2], pa.uint64()), "error": [None, "x"]})
    for where, shown in (
        ("seed > 99999999999999999999999", "out of the signed 64-bit integer range"),
        ("error = NULL", "IS NULL or IS NOT NULL"),
        ("error != NULL", "IS NULL or IS NOT NULL"),
    ):
        with pytest.raises(FilterError, match=shown):
            filter_rows(table, where, table.column_names)

    opts = DecodeOptions("a", "b", step=np.int64(3), bpp=np.float32(0.5), limit=np.int32(2))
    assert (opts.step, opts.bpp, opts.limit) == (3, 0.5, 2) and type(opts.step) is int
    with pytest.raises(DecodeTargetError, match=r"limit must be a whole number, got 1\.5"):
        DecodeOptions("a", "b", limit=1.5)

    import diffc_pipeline as dp

    fixture = Path(__file__).parent / "fixtures" / "format1" / "archive"
    with pytest.raises(DiffcError, match="no decodable image selected"):
        list(dp.open_archive(str(fixture)).decode(where="id = 'nope'"))
