"""Failures a user meets on real inputs and archives end in one line that names the file and the problem.

Remote listing errors (an unreachable S3 endpoint, missing credentials), shards gone or cut short, an
``--id-column`` that is not there; and ``diffc inspect`` reporting the archive's own format version and which
images failed. Everything runs on real files, real Parquet and a real (closed) TCP port; no Ray.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_data.make import write_parquet
from typer.testing import CliRunner

import diffc_pipeline as dp
from diffc_pipeline.cli import app
from diffc_pipeline.errors import ArchiveError
from diffc_pipeline.pipeline.inspect_archive import inspect_archive
from diffc_pipeline.pipeline.sources import SourceError, list_source, remote_errors

FIXTURE = Path(__file__).parent / "fixtures" / "format1" / "archive"
SECRET = "s3cr3t-VALUE-never-printed"


def _flat(text: str) -> str:
    """``text`` without whitespace: Rich wraps lines at 80 columns under the test runner, even inside paths."""
    return "".join(text.split())


def _one_line_error(result, code: int = 2) -> str:
    """The CLI's ``error:`` message, flattened, after checking it is all the output and the exit code (2: the
    user's input; 1: a service that did not answer, worth a retry)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.startswith("error: "), result.output
    return _flat(result.output)


def _copy_archive(tmp_path: Path) -> Path:
    copy = tmp_path / "arc"
    shutil.copytree(FIXTURE, copy)
    return copy


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that nothing listens on: connections are refused at once.

    The socket stays bound (never listening) for the whole test: a port closed before use could be taken by
    another process meanwhile, or picked by the kernel as the client's own source port (a self-connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _unreachable_s3(port: int, **extra: object) -> dict:
    """Storage options for an S3 endpoint that refuses connections, with botocore's retries cut to one try."""
    return {
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "config_kwargs": {"connect_timeout": 2, "read_timeout": 2, "retries": {"max_attempts": 1}},
        **extra,
    }


def test_unreachable_s3_endpoint_is_one_source_error_naming_the_url(closed_port):
    pytest.importorskip("s3fs")
    options = _unreachable_s3(closed_port, key="testing-key-id", secret=SECRET)
    started = time.monotonic()
    url = "s3://nonexistent-bucket-xyz/photos/"
    # named as the canonical URL the listing read (no trailing slash)
    with pytest.raises(SourceError, match=re.escape(f"cannot list {url.rstrip('/')}: EndpointConnectionError")) as e:
        list_source(url, options)
    assert time.monotonic() - started < 30
    assert SECRET not in str(e.value) and "testing-key-id" not in str(e.value)


def test_s3_without_credentials_says_how_to_give_them(closed_port, monkeypatch, tmp_path):
    pytest.importorskip("s3fs")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"NoCredentialsError: .*-S anon=true"):
        list_source("s3://nonexistent-bucket-xyz/photos/", _unreachable_s3(closed_port))
    assert time.monotonic() - started < 30


def test_listing_error_masks_secret_options_a_client_quotes():
    options = {"key": "AKIA-testing", "client_kwargs": {"aws_session_token": SECRET, "region_name": "us-east-1"}}
    with pytest.raises(SourceError) as e, remote_errors("list", "s3://user:pw@bucket/x", options):
        raise PermissionError(f"token {SECRET} of AKIA-testing denied in us-east-1")
    assert str(e.value) == "cannot list s3://bucket/x: PermissionError: token *** of *** denied in us-east-1"


def test_cli_compress_from_unreachable_s3_is_one_red_line(closed_port, tmp_path):
    """Storage that does not answer exits 1 like a cluster out of reach (a scheduler retries 1, not 2: the
    user's input); a 1-character secret value does not mask that letter everywhere in the message."""
    pytest.importorskip("s3fs")
    endpoint = f"client_kwargs.endpoint_url=http://127.0.0.1:{closed_port}"
    args = ["compress", "s3://nonexistent-bucket-xyz/photos/", str(tmp_path / "out"), "--codec", "jpeg"]
    started = time.monotonic()
    result = CliRunner().invoke(app, [*args, "-S", "key=k", "-S", "secret=s", "-S", endpoint])  # botocore retries
    assert time.monotonic() - started < 60
    text = _one_line_error(result, code=1)
    assert _flat("cannot list s3://nonexistent-bucket-xyz/photos: EndpointConnectionError") in text
    assert "/nonexistent-bucket-xyz/photos" in text and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["inspect", "decode"])
def test_missing_shard_file_is_named(tmp_path, command):
    arc = _copy_archive(tmp_path)
    for shard in (arc / "shards").glob("*.parquet"):
        shard.unlink()
    args = [command, str(arc)] + ([str(tmp_path / "out")] if command == "decode" else [])
    text = _one_line_error(CliRunner().invoke(app, args))
    assert _flat(f"shard file {arc}/shards/shard-000000.parquet is missing") in text
    with pytest.raises(ArchiveError, match=r"shard-000000\.parquet is missing"):
        dp.open_archive(str(arc)).rows()


def test_truncated_shard_is_named(tmp_path):
    arc = _copy_archive(tmp_path)
    shard = arc / "shards" / "shard-000001.parquet"
    shard.write_bytes(shard.read_bytes()[:1000])
    text = _one_line_error(CliRunner().invoke(app, ["inspect", str(arc)]))
    assert _flat(f"shard file {shard} is truncated or not Parquet") in text
    data = bytearray((FIXTURE / "shards" / shard.name).read_bytes())
    data[4:-8] = bytes(len(data) - 12)  # magic and footer length intact, everything else zeroed
    shard.write_bytes(data)
    with pytest.raises(ArchiveError, match=re.escape(f"shard file {shard} is truncated or corrupt: ")):
        inspect_archive(str(arc), {})
    shard.write_bytes(b"PAR1")  # shorter than any footer
    with pytest.raises(ArchiveError, match=re.escape(f"shard file {shard} is truncated: 4 bytes")):
        inspect_archive(str(arc), {})


def test_explicit_id_column_that_is_missing_is_an_error(tmp_path):
    write_parquet(tmp_path / "data" / "part-0.parquet", 3)
    with pytest.raises(SourceError, match=r"has no column 'nosuch' \(columns: id, label, image\); .*--id-column"):
        list_source(str(tmp_path / "data"), {}, id_column="nosuch")


def test_default_id_column_falls_back_to_file_row_ids(tmp_path):
    path = tmp_path / "data" / "part-0.parquet"
    write_parquet(path, 2)
    pq.write_table(pq.read_table(path).drop_columns(["id"]), path)
    assert list_source(str(tmp_path / "data"), {}).items.column("id").to_pylist() == ["part-0:0", "part-0:1"]
    # naming the default column explicitly is a request for it, not for the fallback
    with pytest.raises(SourceError, match=r"has no column 'id' \(columns: label, image\)"):
        list_source(str(tmp_path / "data"), {}, id_column="id")
    result = CliRunner().invoke(app, ["compress", str(tmp_path / "data"), str(tmp_path / "out"), "--id-column", "id"])
    assert result.exit_code == 2, result.output
    assert "has no column 'id'" in result.output
    assert not (tmp_path / "out").exists()


def test_inspect_reports_the_archive_own_format_version():
    assert dp.open_archive(str(FIXTURE)).format_version == 1
    assert inspect_archive(str(FIXTURE), {})["format_version"] == 1
    result = CliRunner().invoke(app, ["inspect", str(FIXTURE)])
    assert result.exit_code == 0, result.output
    assert "format v1, tool 0.1.0" in result.output


def test_inspect_names_example_ids_of_each_error(tmp_path):
    arc = _copy_archive(tmp_path)
    shard = arc / "shards" / "shard-000001.parquet"
    table = pq.read_table(shard)
    n = table.num_rows
    message = "decode: corrupt or truncated image: image file is truncated"
    ids = [f"[bold]img{i}[/x].png" for i in range(n)]  # markup in ids must print as typed
    for column, values in (("id", ids), ("status", ["error"] * n), ("error", [message] * n)):
        i = table.schema.get_field_index(column)
        table = table.set_column(i, table.schema.field(i), pa.array(values))  # the field keeps `not null`
    pq.write_table(table, shard)  # keeps the schema metadata (format, codec fingerprint) the reader checks

    info = inspect_archive(str(arc), {})
    assert info["top_errors"] == [(message, n)]  # unchanged shape: (message, count) pairs
    assert info["top_error_ids"] == {message: ids}
    result = CliRunner().invoke(app, ["inspect", str(arc)])
    assert result.exit_code == 0, result.output
    assert _flat(f"{n} x {message} (e.g. {', '.join(ids)})") in _flat(result.output)


def test_an_unreachable_archive_is_one_source_error_naming_the_url(closed_port):
    """Reading an archive (inspect, decode, open_archive) over storage that cannot be reached was a botocore
    traceback; listing an input already gave one line."""
    pytest.importorskip("s3fs")
    import diffc_pipeline as dp

    options = _unreachable_s3(closed_port, key="testing-key-id", secret=SECRET)
    for read in (lambda: dp.inspect("s3://bucket/arc", storage_options=options),
                 lambda: dp.open_archive("s3://bucket/arc", storage_options=options)):  # fmt: skip
        with pytest.raises(SourceError, match="cannot read s3://bucket/arc: EndpointConnectionError") as e:
            read()
        assert SECRET not in str(e.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"shard_size": 0}, "shard_size"),
        ({"num_images": "4"}, "num_images"),
        ({"runs": [1]}, "runs must be a list of objects"),
        ({"model": "builtin"}, "malformed format-1 manifest"),  # format 1: its model is converted first
        ({"codec": {"fingerprint": "x"}}, "malformed format-1 manifest"),
    ],
)
def test_a_manifest_with_fields_of_the_wrong_type_is_one_error(tmp_path: Path, edit: dict, message: str) -> None:
    import json

    copy = tmp_path / "arch"
    shutil.copytree(FIXTURE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, **edit}))
    with pytest.raises(ArchiveError, match=message):
        dp.inspect(str(copy))
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code != 0 and "Traceback" not in result.output and message.split()[0] in result.output


@pytest.mark.parametrize("marker", ["[]", '{"rows": "2"}', '{"rows": 2, "file_bytes": -1}'])
def test_a_commit_marker_that_is_not_one_is_one_error(tmp_path: Path, marker: str) -> None:
    copy = tmp_path / "arch"
    shutil.copytree(FIXTURE, copy)
    (copy / "commits" / "shard-000000.stats.json").write_text(marker)
    with pytest.raises(ArchiveError, match="is not a marker"):
        dp.inspect(str(copy))
