"""Compress a Parquet dataset on S3 into an archive on S3 and decode it back to S3, through Ray workers.

A real moto server listens on 127.0.0.1; the Ray workers (other processes) reach it over HTTP with the
endpoint and credentials given as storage options - which must never land in the archive.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_data.make import write_parquet

from diffc_pipeline.pipeline.compress_job import CompressOptions, run_compress
from diffc_pipeline.pipeline.decode_job import DecodeOptions, run_decode
from diffc_pipeline.pipeline.inspect_archive import inspect_archive
from diffc_pipeline.pipeline.progress import JobProgress

SECRET = "s3cr3t-VALUE-never-stored"
FIXTURE = Path(__file__).parent / "fixtures" / "format1" / "archive"
QUIET = JobProgress("test", enabled=False)


@pytest.fixture(scope="module")
def s3():
    s3fs = pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": "testing-key-id",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "us-east-1"},
    }
    boto3 = pytest.importorskip("boto3")
    boto3.client(
        "s3",
        endpoint_url=options["client_kwargs"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=options["key"],
        aws_secret_access_key=SECRET,
    ).create_bucket(Bucket="bucket")
    fs = s3fs.S3FileSystem(**options)
    yield fs, options
    server.stop()


def test_s3_parquet_input_to_s3_archive_and_back(ray_cluster, s3, tmp_path):
    fs, options = s3
    ids = write_parquet(tmp_path / "part-0.parquet", 4, row_group_size=3)
    fs.put(str(tmp_path / "part-0.parquet"), "bucket/data/part-0.parquet")
    opts = CompressOptions(
        input="s3://bucket/data",
        output="s3://bucket/arc",
        storage_options=options,
        model="gaussian",
        codec_options={"num_steps": 2},
        shard_size=3,
        batch_size=4,
    )
    summary = run_compress(opts, QUIET)
    assert (summary.images, summary.failures, summary.shards_written) == (4, 0, 2)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("bucket/arc/commits", refresh=True)) == [
        "shard-000000.stats.json",
        "shard-000001.stats.json",
    ]
    with fs.open("bucket/arc/shards/shard-000000.parquet") as f:
        rows = pq.read_table(f).to_pylist()
    assert [r["id"] for r in rows] == ids[:3]
    assert rows[0]["source_uri"] == "s3://bucket/data/part-0.parquet#row=0" and rows[0]["source_etag"]
    for path in fs.find("bucket/arc"):
        assert SECRET.encode() not in fs.cat_file(path), path
    assert json.loads(fs.cat_file("bucket/arc/manifest.json"))["source"]["url"] == "s3://bucket/data"

    again = run_compress(opts, QUIET)
    assert (again.images, again.shards_skipped) == (0, 2)
    assert inspect_archive("s3://bucket/arc", options)["ok"] == 4

    decoded = run_decode(
        DecodeOptions(
            "s3://bucket/arc",
            "s3://bucket/out",
            step=1,
            model="gaussian",
            storage_options=options,
            ids=[ids[0], ids[3]],
        ),
        QUIET,
    )
    assert (decoded.images, decoded.failures) == (2, 0)
    assert decoded.bytes_needed < decoded.bytes_read
    for image_id in (ids[0], ids[3]):
        img = Image.open(io.BytesIO(fs.cat_file(f"bucket/out/{image_id}.png")))
        assert img.size == (16, 16)
    parts = DecodeOptions("s3://bucket/arc", "s3://bucket/parts", step=1, model="gaussian", storage_options=options,
                          format="parquet")  # fmt: skip
    assert run_decode(parts, QUIET).images == 4
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("bucket/parts")) == ["_SUCCESS", "part-00000.parquet"]
    assert pq.read_table(io.BytesIO(fs.cat_file("bucket/parts/part-00000.parquet"))).num_rows == 4


def test_a_missing_output_bucket_is_refused_not_created(ray_cluster, s3, tmp_path):
    """s3fs creates a missing bucket on the first write: a typo in the bucket's name made a new bucket."""
    import diffc_pipeline as dp
    from diffc_pipeline.errors import ArchiveError

    fs, options = s3
    write_parquet(tmp_path / "in" / "part-0.parquet", 2)
    for job in (
        lambda: dp.compress(str(tmp_path / "in"), "s3://no-such-bucket/arc", codec="webp", storage_options=options),
        lambda: dp.decode(str(FIXTURE), "s3://no-such-bucket/out", storage_options=options),  # a local archive
    ):
        with pytest.raises(ArchiveError, match="bucket 'no-such-bucket' does not exist"):
            job()
    assert not fs.exists("no-such-bucket")


def test_incremental_comparison_and_parquet_listing_fetch_only_the_columns_they_read(s3, monkeypatch):
    """A nightly run compares the listing with the archive's id and source columns, and lists a Parquet input
    by its id column: s3fs's default read-ahead cache fetched 50 MB blocks behind those small columns, i.e. the
    whole archive and the whole input, every night. Bytes counted at s3fs's range fetch (the real server
    answers every request)."""
    import datetime as dt
    import os

    import pyarrow as pa
    import s3fs

    from diffc_pipeline.pipeline.archive import RECORD_FIELDS, shard_schema, shard_to_parquet_bytes
    from diffc_pipeline.pipeline.incremental import held_sources
    from diffc_pipeline.pipeline.sources import list_source

    fs, options = s3
    rows, payload = 600, 20_000  # 12 MB of payload per shard, in row groups of 256
    values = {f.name: [None] * rows for f in RECORD_FIELDS}
    values.update(
        id=[f"img{i:05d}.png" for i in range(rows)],
        source_uri=[f"s3://bucket/in/img{i:05d}.png" for i in range(rows)],
        seed=list(range(rows)),
        status=["ok"] * rows,
        source_size=[1000] * rows,
        source_mtime=[dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * rows,
    )
    columns = [pa.array(values[f.name], f.type) for f in RECORD_FIELDS]
    columns += [pa.array([os.urandom(payload) for _ in range(rows)], pa.binary()), pa.array([0] * rows, pa.uint32())]
    shard = shard_to_parquet_bytes(pa.Table.from_arrays(columns, schema=shard_schema(1, {})))
    fs.pipe_file("bucket/big/shards/shard-000000.parquet", shard)
    images = pa.table({"id": values["id"], "image": [os.urandom(payload) for _ in range(rows)]})
    buf = io.BytesIO()
    pq.write_table(images, buf, row_group_size=256)
    fs.pipe_file("bucket/bigin/part-0.parquet", buf.getvalue())

    fetched = [0]
    real_fetch = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        data = real_fetch(self, start, end)
        fetched[0] += len(data)
        return data

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    held = held_sources(s3fs.S3FileSystem(**options), "bucket/big", ["shard-000000"])
    assert held.num_rows == rows and 0 < fetched[0] < len(shard) / 20, (fetched[0], len(shard))
    fetched[0] = 0
    listed = list_source("s3://bucket/bigin", options)
    whole = len(buf.getvalue())
    assert listed.items.num_rows == rows and 0 < fetched[0] < whole / 20, (fetched[0], whole)
