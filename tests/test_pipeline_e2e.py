"""End to end on a tmp dir through the session Ray cluster: compress, inspect, decode, resume, bad input.

The analytic Gaussian model and 2 coding steps keep each Ray job to seconds; images are 16x16.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_data.make import bad_files, rgb, write_images
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.codecs import Encoded, cumulative_bits, resolve
from diffc_pipeline.errors import ArchiveError, ModelMismatchError
from diffc_pipeline.pipeline import archive as A
from diffc_pipeline.pipeline.compress_job import CompressOptions, prepare, run_compress
from diffc_pipeline.pipeline.decode_job import DecodeOptions, DecodeTargetError, run_decode
from diffc_pipeline.pipeline.faults import KILL_AT_COMMIT_ENV
from diffc_pipeline.pipeline.inspect_archive import inspect_archive
from diffc_pipeline.pipeline.manifest import MANIFEST_NAME
from diffc_pipeline.pipeline.progress import JobProgress

CODEC = {"num_steps": 2}
QUIET = JobProgress("test", enabled=False)


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def _opts(inp: Path | str, out: Path | str, **kw) -> CompressOptions:
    base = dict(model="gaussian", codec_options=CODEC, shard_size=3, batch_size=4)
    return CompressOptions(input=str(inp), output=str(out), **(base | kw))


class CountingProgress(JobProgress):
    """Counts the batches the driver receives: the pipeline must stream them, not deliver one block."""

    def __init__(self) -> None:
        super().__init__("test", enabled=False)
        self.batches = 0

    def add(self, images: int, failures: int, bits: int, pixels: int) -> None:
        self.batches += 1
        super().add(images, failures, bits, pixels)


@pytest.fixture(scope="module")
def archive(ray_cluster, tmp_path_factory) -> dict:
    """5 good 16x16 images, one 24x16 image, 3 bad files -> an archive of 3 shards (9 rows)."""
    root = tmp_path_factory.mktemp("e2e")
    good = write_images(root / "in", 5)
    Image.fromarray(rgb(50, 24, 16)).save(root / "in" / "tall.png")
    bad = bad_files(root / "in")
    progress = CountingProgress()
    summary = run_compress(_opts(root / "in", root / "arc"), progress)
    return {
        "root": root,
        "arc": root / "arc",
        "good": [*good, "tall.png"],
        "bad": bad,
        "summary": summary,
        "batches": progress.batches,
    }


def test_compress_writes_committed_shards_with_error_rows(archive):
    s = archive["summary"]
    assert (s.images, s.failures, s.shards_written, s.shards_skipped) == (9, 3, 3, 0)
    assert s.bpp > 0 and s.bytes_written > 0
    assert archive["batches"] >= 3  # 9 images in codec batches of 4 arrive as they are coded
    manifest = json.loads((archive["arc"] / MANIFEST_NAME).read_text())
    assert [m["shard"] for m in manifest["shards"]] == ["shard-000000", "shard-000001", "shard-000002"]
    assert manifest["format_version"] == 2 and manifest["codec"]["name"] == "diffc"
    assert manifest["model"] == {"name": "gaussian-rgb", "sha256": manifest["model"]["sha256"], "spec": "gaussian"}
    assert manifest["codec"]["num_chunks"] == 2 and manifest["codec"]["progressive"] is True
    codec = resolve("diffc", CODEC, "gaussian").build()
    assert manifest["codec"]["fingerprint"] == codec.fingerprint
    assert manifest["codec"]["options"] == codec.describe()["options"]


def test_archive_is_plain_parquet(archive):
    table = pq.read_table(archive["arc"] / "shards")  # no diffc code involved
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(archive["good"] + archive["bad"])
    rows = {r["id"]: r for r in table.to_pylist()}
    for name in archive["bad"]:
        assert rows[name]["status"] == "error" and rows[name]["error"].startswith("decode:")
        assert rows[name]["chunk_001"] is None
    for name in archive["good"]:
        r = rows[name]
        chunks = [r["chunk_001"], r["chunk_002"]]
        assert r["status"] == "ok" and r["error"] is None
        assert r["checksum"] == A.row_checksum(r["header"], chunks)
        assert r["cum_bits"] == cumulative_bits(r["header"], chunks)
        assert r["source_uri"].startswith("file://") and r["source_size"] > 0
    assert (rows["tall.png"]["height"], rows["tall.png"]["width"]) == (24, 16)
    meta = json.loads(pq.read_schema(archive["arc"] / "shards" / "shard-000000.parquet").metadata[A.METADATA_KEY])
    assert meta["shard"] == "shard-000000" and meta["num_chunks"] == 2 and meta["codec"] == "diffc"
    con = duckdb.connect()
    query = f"select count(*) from '{archive['arc']}/shards/*.parquet' where status = 'ok'"
    ((n_ok,),) = con.execute(query).fetchall()
    assert n_ok == len(archive["good"])


def test_rerun_resumes_without_duplicates(archive):
    before = {p.name: p.stat().st_mtime_ns for p in (archive["arc"] / "shards").iterdir()}
    again = run_compress(_opts(archive["root"] / "in", archive["arc"]), QUIET)
    assert (again.images, again.shards_written, again.shards_skipped) == (0, 0, 3)
    assert before == {p.name: p.stat().st_mtime_ns for p in (archive["arc"] / "shards").iterdir()}


def test_inspect_reports_counts_and_bpp_per_chunk(archive):
    info = inspect_archive(str(archive["arc"]), {})
    assert (info["images"], info["ok"], info["failures"]) == (9, 6, 3)
    chunks = info["bpp_per_chunk"]
    assert [s["chunk"] for s in chunks] == [1, 2]
    assert 0 < chunks[0]["bpp"] < chunks[1]["bpp"]
    assert chunks[0]["p10"] <= chunks[0]["p50"] <= chunks[0]["p90"]
    # total bits over total pixels, not a mean of per-image bpp
    rows = [r for r in pq.read_table(archive["arc"] / "shards").to_pylist() if r["status"] == "ok"]
    total = sum(r["cum_bits"][-1] for r in rows) / sum(r["height"] * r["width"] for r in rows)
    assert chunks[-1]["bpp"] == pytest.approx(total)
    assert info["codec"]["name"] == "diffc" and info["codec"]["num_chunks"] == 2
    result = CliRunner().invoke(app, ["inspect", str(archive["arc"])])
    assert result.exit_code == 0 and "failures 3" in _flat(result.output)


def _mse(png: bytes, original: np.ndarray) -> float:
    return float(((np.asarray(Image.open(io.BytesIO(png)), np.float64) - original) ** 2).mean())


def test_decode_at_a_step_matches_the_codec_and_improves_with_steps(archive, tmp_path):
    out = tmp_path / "png"
    s = run_decode(DecodeOptions(str(archive["arc"]), str(out), step=2), QUIET)  # the manifest names the model
    assert (s.images, s.failures, s.skipped_error_rows) == (6, 0, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted([*archive["good"], "_diffc_decode.json"])
    # the pipeline's PNG equals the codec's own decode of the stored row
    row = next(r for r in pq.read_table(archive["arc"] / "shards").to_pylist() if r["id"] == "img001.png")
    codec = resolve("diffc", CODEC, "gaussian").build()
    direct = codec.decompress([Encoded(row["header"], [row["chunk_001"], row["chunk_002"]])], 2)[0]
    assert (np.asarray(Image.open(out / "img001.png")) == direct).all()
    assert Image.open(out / "tall.png").size == (16, 24)
    # fewer steps: worse reconstructions on average
    coarse = tmp_path / "coarse"
    run_decode(DecodeOptions(str(archive["arc"]), str(coarse), step=0, model="gaussian"), QUIET)
    originals = {f"img{i:03d}.png": rgb(i).astype(np.float64) for i in range(5)}
    fine_mse = np.mean([_mse((out / k).read_bytes(), v) for k, v in originals.items()])
    coarse_mse = np.mean([_mse((coarse / k).read_bytes(), v) for k, v in originals.items()])
    assert fine_mse < coarse_mse


def test_decode_by_bpp_to_parquet_flags_a_corrupted_row(archive, tmp_path):
    # corrupt one chunk of one image in a copy of the archive (checksums must catch it)
    arc = tmp_path / "arc"
    subprocess.run(["cp", "-r", str(archive["arc"]), str(arc)], check=True)
    shard = arc / "shards" / "shard-000001.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    victim = next(r for r in rows if r["status"] == "ok")
    victim["chunk_001"] = bytes([victim["chunk_001"][0] ^ 0xFF]) + victim["chunk_001"][1:]
    shard.write_bytes(A.shard_to_parquet_bytes(type(table).from_pylist(rows, schema=table.schema)))

    index = pq.read_table(arc / "shards", columns=["id", "cum_bits", "height", "width", "status"]).to_pylist()
    firsts = [r["cum_bits"][0] / (r["height"] * r["width"]) for r in index if r["status"] == "ok"]
    # below some image's first chunk: refused, naming the range (DiffC would otherwise decode the seed alone)
    with pytest.raises(DecodeTargetError, match=r"below the first chunk of \d+ of 6 selected images"):
        run_decode(DecodeOptions(str(arc), str(tmp_path / "no"), bpp=float(np.median(firsts))), QUIET)
    target = max(firsts)
    out = tmp_path / "out"
    s = run_decode(
        DecodeOptions(
            str(arc),
            str(out),
            bpp=float(target),
            format="parquet",
            model="gaussian",
            where="status = 'ok' AND width = 16",
        ),
        QUIET,
    )
    assert s.images == 6 and s.failures == 1
    assert s.bytes_needed <= s.bytes_read
    got = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert "checksum" in got[victim["id"]]["error"] and got[victim["id"]]["png"] is None
    for r in got.values():
        assert r["bpp"] <= target + 1e-9
        assert r["step"] in (1, 2)
        if r["status"] == "ok":
            assert Image.open(io.BytesIO(r["png"])).size[1] == r["height"]


def test_decode_refuses_another_model(archive, tmp_path):
    from diffc_pipeline.models import LinearSchedule
    from diffc_pipeline.models.storage import save_unet_model
    from diffc_pipeline.models.unet import UNet, UNetConfig

    model_dir = tmp_path / "tiny"
    save_unet_model(
        model_dir,
        UNet(UNetConfig(widths=(8,), blocks_per_level=1, emb_dim=8, groups=4)),
        LinearSchedule().to_dict(),
        "tiny",
    )
    with pytest.raises(ModelMismatchError, match="made with model gaussian-rgb"):
        run_decode(DecodeOptions(str(archive["arc"]), str(tmp_path / "o"), step=1, model=str(model_dir)), QUIET)
    result = CliRunner().invoke(
        app, ["decode", str(archive["arc"]), str(tmp_path / "o"), "--step", "1", "--model", str(model_dir)]
    )
    assert result.exit_code == 2 and "made with model gaussian-rgb" in _flat(result.output)


def test_output_of_another_model_or_version_is_left_alone(archive, tmp_path):
    arc = tmp_path / "arc"
    subprocess.run(["cp", "-r", str(archive["arc"]), str(arc)], check=True)
    before = sorted((p.name, p.stat().st_size) for p in arc.rglob("*"))
    three = _opts(archive["root"] / "in", arc, codec_options={"num_steps": 3})
    with pytest.raises(ModelMismatchError, match="other codec options"):
        prepare(three, resolve("diffc", {"num_steps": 3}, "gaussian").build())
    webp = _opts(archive["root"] / "in", arc, codec="webp", codec_options={}, model=None)
    with pytest.raises(ModelMismatchError, match="made with codec 'diffc', not 'webp'"):
        prepare(webp, resolve("webp").build())
    gaussian = resolve("diffc", CODEC, "gaussian").build()
    with pytest.raises(ArchiveError, match="seed: archive has 0, this run 7"):
        prepare(_opts(archive["root"] / "in", arc, seed=7), gaussian)
    original = (arc / MANIFEST_NAME).read_bytes()
    (arc / MANIFEST_NAME).write_text(json.dumps(json.loads(original) | {"format_version": 3}))
    result = CliRunner().invoke(
        app,
        ["compress", str(archive["root"] / "in"), str(arc), "--model", "gaussian", "--steps", "2", "--shard-size", "3"],
    )
    assert result.exit_code == 2 and "format version 3" in _flat(result.output)
    assert json.loads((arc / MANIFEST_NAME).read_text())["format_version"] == 3  # left as it was
    (arc / MANIFEST_NAME).write_bytes(original)
    assert before == sorted((p.name, p.stat().st_size) for p in arc.rglob("*"))
    (tmp_path / "notarchive").mkdir()
    (tmp_path / "notarchive" / "keep.txt").write_text("x")
    with pytest.raises(ArchiveError, match="holds no diffc archive"):
        prepare(_opts(archive["root"] / "in", tmp_path / "notarchive"), gaussian)


def test_cli_dry_run_and_bad_input_messages(archive, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "compress",
            str(archive["root"] / "in"),
            str(archive["arc"]),
            "--dry-run",
            "--model",
            "gaussian",
            "--steps",
            "2",
            "--shard-size",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["images"], plan["shards"], plan["already_committed"], plan["to_do"]) == (9, 3, 3, [])
    missing = runner.invoke(app, ["compress", str(tmp_path / "nope"), str(tmp_path / "o"), "--model", "gaussian"])
    assert missing.exit_code == 2 and "does not exist" in _flat(missing.output)
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["compress", str(tmp_path / "empty"), str(tmp_path / "o"), "--model", "gaussian"])
    assert empty.exit_code == 2 and "no images found" in _flat(empty.output)


def test_resume_after_a_killed_run_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    ids = write_images(tmp_path / "in", 6)
    arc = tmp_path / "arc"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "diffc_pipeline",
        "compress",
        str(tmp_path / "in"),
        str(arc),
        "--model",
        "gaussian",
        "--steps",
        "2",
        "--shard-size",
        "1",
        "--batch-size",
        "1",
        "--address",
        address,
    ]
    # The driver kills itself as it starts its third commit: a kill point that does not depend on timing (a
    # poll for the first marker raced with a fast run that committed all six shards before it looked).
    proc = subprocess.run(
        cmd,
        capture_output=True,
        env=os.environ | {"RAY_AUTH_MODE": "disabled", KILL_AT_COMMIT_ENV: "3"},
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    done = len(list((arc / "commits").glob("*.stats.json")))
    assert done == 2
    summary = run_compress(_opts(tmp_path / "in", arc, shard_size=1), QUIET)
    assert summary.shards_skipped == done and summary.shards_written == 6 - done
    table = pq.read_table(arc / "shards")
    assert sorted(table.column("id").to_pylist()) == ids
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert not [p for p in (arc / "shards").iterdir() if ".tmp-" in p.name]
