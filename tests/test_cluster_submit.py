"""``diffc submit``: secrets, submission ids, job configs, and real jobs on a real Ray head.

The head is a real ``ray start --head`` with the Jobs API (LocalHead), started once for this module in
its own temp dir and process group, and stopped by its own pid: never ``ray stop``, which would also kill
other programs' clusters. It has nothing to do with the in-process ``ray_cluster`` fixture.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffc_pipeline.cli import app
from diffc_pipeline.cli.submit import check_command
from diffc_pipeline.cluster import submit as sub
from diffc_pipeline.cluster.local_head import LocalHead
from diffc_pipeline.redaction import redact_args as redact_args_for_test

SECRETS = ("AKIAEXAMPLEKEY", "wJalrXUtnFEMI-secret", "tok-123456", "hunter2", "sig0123abcd", "n0t'safe-9", "n0t")


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# ------------------------------------------------------------------------------------------------ secrets


def test_redact_args_masks_credentials_and_keeps_the_rest():
    args = [
        "compress",
        "s3://user:hunter2@bucket/in/",
        "s3://bucket/out/",
        "-S",
        "key=AKIAEXAMPLEKEY",
        "--storage-option",
        "secret=wJalrXUtnFEMI-secret",
        "--storage-option=token=tok-123456",
        "-Sclient_kwargs.endpoint_url=http://127.0.0.1:9000",
        "--api-key",
        "tok-123456",
        "--password=hunter2",
        "https://h/x.png?X-Amz-Signature=sig0123abcd&size=3",
        "--shard-size",
        "1000",
        "--sigma",
        "2",
        "--author",
        "me",
    ]
    red = sub.redact_args(args)
    assert not _leaks(" ".join(red))
    assert red[0:3] == ["compress", "s3://***@bucket/in/", "s3://bucket/out/"]
    assert red[3:8] == ["-S", "key=***", "--storage-option", "secret=***", "--storage-option=token=***"]
    assert red[8] == "-Sclient_kwargs.endpoint_url=***"  # values of storage options are masked, keys kept
    assert red[9:12] == ["--api-key", "***", "--password=***"]
    assert red[12] == "https://h/x.png?X-Amz-Signature=***&size=3"
    assert red[13:] == ["--shard-size", "1000", "--sigma", "2", "--author", "me"]


def test_recorded_command_lines_mask_storage_options(tmp_path):
    """eval's results.json and every benchmark JSON record the command line: `diffc eval -S secret=...` put
    the secret there."""
    from diffc_pipeline.cli.bench import run_info
    from diffc_pipeline.redaction import command_line

    argv = ["/venv/bin/diffc", "eval", "s3://b/imgs", "--out", "e", "-S", "secret=wJalrXUtnFEMI-secret"]
    assert command_line(argv) == "diffc eval s3://b/imgs --out e -S 'secret=***'"
    import sys

    saved = sys.argv
    sys.argv = ["diffc", "bench", "pipeline", "-S", "key=AKIAEXAMPLEKEY"]
    try:
        assert not _leaks(run_info()["command"])
    finally:
        sys.argv = saved


def test_a_secret_flag_before_an_option_leaves_that_option_its_own_masking():
    assert sub.redact_args(["--auth-anon", "--limit", "3"]) == ["--auth-anon", "--limit", "3"]
    assert sub.redact_args(["--auth-anon", "-S", "key=AKIAEXAMPLEKEY"]) == ["--auth-anon", "-S", "key=***"]


def test_runtime_env_values_are_never_printed():
    env = {"env_vars": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret", "X": "1"}, "pip": ["a"]}
    red = sub.redact_runtime_env(env)
    assert red == {"env_vars": {"AWS_SECRET_ACCESS_KEY": "***", "X": "***"}, "pip": ["a"]}
    assert env["env_vars"]["X"] == "1"  # the original is untouched: the job still gets the values


# ------------------------------------------------------------------------------------ ids and planning


def _spec(*args: str, **kw) -> sub.JobSpec:
    return sub.JobSpec(args=tuple(args), **kw)


def test_submission_id_is_deterministic_per_command_and_tick():
    a = sub.submission_id(_spec("compress", "s3://a", "s3://b"), "2026-11-21")
    assert a == sub.submission_id(_spec("compress", "s3://a", "s3://b"), "2026-11-21")
    assert a.startswith("diffc-compress-2026-11-21-")
    assert a != sub.submission_id(_spec("compress", "s3://a", "s3://b"), "2026-11-22")
    assert a != sub.submission_id(_spec("compress", "s3://a", "s3://c"), "2026-11-21")
    assert a != sub.submission_id(_spec("compress", "s3://a", "s3://b", name="nightly"), "2026-11-21")


def test_submission_id_holds_no_secret_and_ignores_its_value():
    one = sub.submission_id(_spec("compress", "a", "b", "-S", "key=AKIAEXAMPLEKEY"), "t")
    other = sub.submission_id(_spec("compress", "a", "b", "-S", "key=rotated"), "t")
    assert one == other and not _leaks(one)



def test_jobs_that_differ_only_in_a_plain_setting_get_their_own_ids():
    """Staging and production differ in an endpoint, a user or a plain environment variable: one id for both
    ran only one of them each night. A rotated credential is still the same job."""
    base = ("compress", "s3://in", "s3://out", "--incremental")

    def sid(*extra: str, env: dict | None = None) -> str:
        return sub.submission_id(_spec(*base, *extra, runtime_env={"env_vars": env or {}}), "2026-11-21")

    staging = sid("-S", "client_kwargs.endpoint_url=http://minio-staging:9000")
    assert staging != sid("-S", "client_kwargs.endpoint_url=http://minio-prod:9000")
    assert sid("-S", "anon=true") != sid("-S", "anon=false")
    assert sid("-S", "key=AKIAEXAMPLEKEY") == sid("-S", "key=rotated")
    assert sub.submission_id(_spec("compress", "ftp://alice@h/in", "o"), "t") != sub.submission_id(
        _spec("compress", "ftp://bob@h/in", "o"), "t"
    )
    assert sub.submission_id(_spec("compress", "s3://u:hunter2@b/in", "o"), "t") == sub.submission_id(
        _spec("compress", "s3://u:other@b/in", "o"), "t"
    )
    assert sid(env={"REGION": "eu"}) != sid(env={"REGION": "us"})
    assert sid(env={"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-secret"}) == sid(env={"AWS_SECRET_ACCESS_KEY": "x"})
    assert not _leaks(staging)
    # a value that may be a credential never enters the hash (its 48 bits are public: a weak password could be
    # confirmed offline), whatever the option or variable is called
    assert sid("-S", "passphrase=hunter22") == sid("-S", "passphrase=hunter23")
    assert sid("-S", 'client_kwargs={"aws_secret_access_key": "a"}') == sid("-S", 'client_kwargs={"x": "b"}')
    assert sid(env={"DATABASE_URL": "postgres://u:hunter22@db/x"}) == sid(env={"DATABASE_URL": "postgres://v@w"})
    # a command with nothing plain to tell apart keeps the id it had before plain values counted
    legacy = {"name": None, "args": redact_args_for_test(base), "tick": "2026-11-21"}
    digest = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:12]
    assert sid(env={"AWS_SECRET_ACCESS_KEY": "x"}) == f"diffc-compress-2026-11-21-{digest}"


def test_logs_mask_a_secret_that_ray_echoes_quoted():
    """Ray echoes the entrypoint as shlex.join wrote it: a value with a quote is quoted there, and its
    secret was no longer a substring the masker found."""
    from diffc_pipeline.redaction import log_redactor

    args = ["compress", "s3://b/in", "s3://b/out", "-S", "password=n0t'safe-9", "-S", "secret=it's a secret"]
    echoed = f"Running entrypoint for job x: python -m diffc_pipeline {shlex.join(args)}"
    shown = log_redactor(args)(echoed)
    assert "n0t" not in shown and "secret=it" not in shown and "a secret" not in shown, shown
    assert "s3://b/in" in shown
    # a plain setting's short value is masked in the echo only, not as a word everywhere in the logs
    plain = log_redactor(["compress", "a", "b", "-S", "anon=true", "-S", "token=zzzz", "-S", "passphrase=hunter22"])
    shown = plain("anon=true token=zzzz; all true, zzzz, passphrase hunter22")
    assert shown == "anon=*** token=***; all true, ***, passphrase ***"


def test_runtime_env_values_must_be_strings_and_the_error_names_only_the_variable(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("command: [inspect, s3://a]\nruntime_env:\n  env_vars: {OMP_NUM_THREADS: 4, TOKEN: 123456}\n")
    result = _cli("--config", str(job), "--dry-run")
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert "env_vars values must be strings" in shown and "OMP_NUM_THREADS, TOKEN" in shown
    assert "123456" not in shown


class _Head(http.server.BaseHTTPRequestHandler):
    """An HTTP server at a Jobs API address: the real SDK client talks to it; each test sets the status
    codes it answers (a real head cannot be made to fail on cue)."""

    codes: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        import ray

        code = self.codes.get("version" if self.path == "/api/version" else "job", 200)
        body = json.dumps({"version": "4", "ray_version": ray.__version__, "ray_commit": "x", "session_name": "s"})
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode() if code == 200 else b"Internal error")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_head():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Head", (_Head,), {"codes": {}}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cluster_failures_are_cluster_errors_and_a_wrong_address_says_so(fake_head):
    """A 5xx or a lost connection is the cluster's (exit code 1: a scheduler may retry), never "bad
    arguments" (2) or a traceback; --wait keeps polling a cluster out of reach, then says the job may still
    run; an address where something else answers is named."""
    from diffc_pipeline.errors import ClusterError

    server, address = fake_head
    server.RequestHandlerClass.codes = {"version": 404}
    with pytest.raises(sub.SubmitError, match="does not answer as a Ray Jobs API"):
        sub.connect(address)
    server.RequestHandlerClass.codes = {"version": 503}
    with pytest.raises(ClusterError, match="worth a retry"):
        sub.connect(address)
    server.RequestHandlerClass.codes = {"job": 503}
    client = sub.connect(address)
    with pytest.raises(ClusterError, match="cannot read job"):
        sub.submit(client, sub.plan(_spec("inspect", "s3://a"), "t"), check_python=False)
    with pytest.raises(ClusterError, match=r"lost contact .* may still be running \(`ray job status job-1`\)"):
        sub.wait_for_end(client, "job-1", poll_s=0.01, lost_contact_s=0.2)
    server.RequestHandlerClass.codes = {"job": 403}  # a token without the right to see jobs: one line, exit 2
    with pytest.raises(sub.SubmitError, match="refused to show job job-1"):
        sub.wait_for_end(client, "job-1")

def test_submission_id_is_a_safe_name_whatever_the_tick():
    sid = sub.submission_id(_spec("compress", "a", "b"), "2026-11-21T02:00:00+00:00 / ../../etc")
    assert sid.replace("-", "").isalnum() and sid.islower() and len(sid) < 100


def test_default_tick_is_the_utc_date():
    from datetime import UTC, datetime

    assert sub.default_tick(datetime(2026, 11, 21, 23, 59, tzinfo=UTC)) == "2026-11-21"
    assert sub.plan(_spec("compress", "a", "b")).tick == sub.default_tick()


def test_describe_masks_everything_secret():
    spec = _spec(
        "compress",
        "s3://u:hunter2@b/in",
        "s3://b/out",
        "-S",
        "secret=wJalrXUtnFEMI-secret",
        runtime_env={"env_vars": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY"}},
    )
    submission = sub.plan(spec, "t")
    shown = json.dumps(submission.describe("http://admin:tok-123456@head:8265"))
    assert not _leaks(shown)
    assert "hunter2" in submission.entrypoint  # the job itself gets the real arguments


# ---------------------------------------------------------------------------------------- job configs


def test_job_config_list_or_string_command(tmp_path):
    listed = tmp_path / "a.yaml"
    listed.write_text("name: n\ncommand: [compress, in, out, --shard-size, 10]\nentrypoint_num_cpus: 1\n")
    spec = sub.load_job_config(listed)
    assert spec.args == ("compress", "in", "out", "--shard-size", "10")
    assert (spec.name, spec.entrypoint_num_cpus, spec.python) == ("n", 1, "python")
    string = tmp_path / "b.yaml"
    string.write_text("command: compress in out --where \"id LIKE 'a%'\"\n")
    assert sub.load_job_config(string).args == ("compress", "in", "out", "--where", "id LIKE 'a%'")


@pytest.mark.parametrize(
    "text,message",
    [
        ("command: [compress, a, b]\nruntime-env: {}\n", "unknown key"),
        ("command: [compress, a, b, --resume, yes]\n", "string or number"),
        ("command: []\n", "empty"),
        ("name: x\n", "`command` must be"),
        ("- compress\n", "mapping"),
        ("command: [compress\n", "not valid YAML"),
        ("command: [compress, a, b]\nruntime_env: [1]\n", "runtime_env"),
    ],
)
def test_job_config_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(sub.SubmitError, match=message):
        sub.load_job_config(path)


def test_runtime_env_merge_is_per_variable():
    merged = sub.merge_runtime_env(
        {"env_vars": {"A": "1", "B": "1"}, "pip": ["x"]}, {"env_vars": {"B": "2"}, "working_dir": "."}
    )
    assert merged == {"env_vars": {"A": "1", "B": "2"}, "pip": ["x"], "working_dir": "."}


def test_forward_env_requires_the_variables():
    assert sub.forward_env(["K"], {"K": "v"}) == {"K": "v"}
    with pytest.raises(sub.SubmitError, match="MISSING"):
        sub.forward_env(["MISSING"], {})


# ------------------------------------------------------------------------------------ address and auth


def test_address_from_option_or_env_never_from_ray_address():
    assert sub.resolve_address("http://h:8265/", {}) == "http://h:8265"
    assert sub.resolve_address(None, {"RAY_API_SERVER_ADDRESS": "https://h"}) == "https://h"
    with pytest.raises(sub.SubmitError, match="RAY_ADDRESS is set"):
        sub.resolve_address(None, {"RAY_ADDRESS": "10.0.0.1:6379"})
    with pytest.raises(sub.SubmitError, match="not a dashboard URL"):
        sub.resolve_address("10.0.0.1:6379", {})


def test_token_from_file_env_or_path(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123456\n")
    assert sub.resolve_token(token_file, {"RAY_AUTH_TOKEN": "other"}) == "tok-123456"
    assert sub.resolve_token(None, {"RAY_AUTH_TOKEN": "tok-env"}) == "tok-env"
    assert sub.resolve_token(None, {"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "tok-123456"
    assert sub.resolve_token(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(sub.SubmitError, match="empty"):
        sub.resolve_token(tmp_path / "empty", {})
    with pytest.raises(sub.SubmitError, match="cannot read"):
        sub.resolve_token(tmp_path / "missing", {})


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["submit", *args], env={"RAY_API_SERVER_ADDRESS": None, **(env or {})})


def test_cli_dry_run_prints_the_masked_submission():
    result = _cli(
        "--dry-run",
        "--tick",
        "2026-11-21",
        "--name",
        "n",
        "--entrypoint-num-cpus",
        "1",
        "compress",
        "s3://u:hunter2@b/in",
        "s3://b/out",
        "-S",
        "key=AKIAEXAMPLEKEY",
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["submission_id"].startswith("diffc-n-2026-11-21-")
    assert shlex.split(shown["entrypoint"]) == [
        "python",
        "-m",
        "diffc_pipeline",
        "compress",
        "s3://***@b/in",
        "s3://b/out",
        "-S",
        "key=***",
    ]
    assert shown["entrypoint_num_cpus"] == 1.0
    assert not _leaks(result.output)


def test_cli_runtime_env_file_and_forwarded_env(tmp_path):
    env_file = tmp_path / "env.json"
    env_file.write_text('{"env_vars": {"A": "1"}, "pip": ["x"]}')
    result = _cli(
        "--dry-run",
        "--runtime-env",
        str(env_file),
        "--env",
        "MY_SECRET",
        "--",
        "--version",
        env={"MY_SECRET": "hunter2"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runtime_env"] == {"env_vars": {"A": "***", "MY_SECRET": "***"}, "pip": ["x"]}
    assert not _leaks(result.output)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dry-run", "compress", "a", "b", "--wait"], "--wait is an option of `diffc submit`"),
        (["--dry-run", "compres", "a", "b"], "No such command"),
        (["--dry-run", "submit", "compress"], "cannot itself be"),
        (["--dry-run"], "nothing to submit"),
        (["--dry-run", "--config", "jobs/decode_subset.yaml", "compress", "a", "b"], "not both"),
        (["compress", "a", "b"], "no cluster address"),
        # what only the job would have refused, at 2 a.m.
        (["--dry-run", "compress", "s3://a", "s3://b", "--codec", "nosuch"], "unknown codec 'nosuch'"),
        (["--dry-run", "compress", "s3://a", "s3://b", "--codec-opt", "nosuch=1"], "has no option nosuch"),
        (["--dry-run", "compress", "s3://a", "s3://b", "--codec", "webp", "--model", "x"], "takes no model"),
        (["--dry-run", "compress", "s3://a", "s3://b", "--incremental", "--overwrite"], "cannot go with --overwrite"),
    ],
)
def test_cli_refuses_with_a_message_and_exit_code_2(args, message):
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_no_validate_lets_a_newer_clusters_option_through():
    result = _cli("--dry-run", "--no-validate", "compress", "a", "b", "--option-of-a-newer-diffc")
    assert result.exit_code == 0, result.output


def test_check_command_returns_the_command_path():
    assert check_command(["compress", "a", "b", "--shard-size", "5"]) == ["diffc", "compress"]
    assert check_command(["--version"]) == ["diffc"]
    assert check_command(["decode", "--help"]) == ["diffc", "decode"]


# --------------------------------------------------------------------------------- a real Ray head


TOKEN = "tok-123456" + "0" * 22


@pytest.fixture(scope="module")
def head():
    """A real Ray head with the Jobs API and token authentication (Ray 2.60's default), for this module
    only (about 10 s to start on 2 busy cores)."""
    with LocalHead(num_cpus=2, auth_token=TOKEN) as local:
        print(f"\nLocalHead started in {local.start_seconds:.1f} s at {local.address}")
        yield local


def _pngs(folder: Path, n: int = 3) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


@pytest.mark.slow
def test_compress_job_end_to_end_and_resubmit_is_a_no_op(head, tmp_path):
    _pngs(tmp_path / "in")
    archive = tmp_path / "archive"
    # `--address auto`, as in jobs/*.yaml and infra/k8s: the driver attaches to the cluster it was submitted to
    args = (
        "compress",
        str(tmp_path / "in"),
        str(archive),
        "--model",
        "gaussian",
        "--shard-size",
        "2",
        "--address",
        "auto",
    )
    spec = sub.JobSpec(args=args, python=sys.executable)
    submission = sub.plan(spec, tick="2026-11-21")
    client = sub.connect(head.address, TOKEN)
    started = time.monotonic()
    details, created = sub.submit(client, submission)
    assert created and details.submission_id == submission.submission_id
    chunks: list[str] = []
    sub.follow_logs(client, submission.submission_id, chunks.append, idle_s=0.2)  # polls the status when quiet
    details = sub.wait_for_end(client, submission.submission_id)
    print(f"compress job: {time.monotonic() - started:.1f} s")
    logs = "".join(chunks)
    assert details.status.value == "SUCCEEDED", logs[-3000:]
    assert details.metadata == {"diffc.command": "compress", "diffc.tick": "2026-11-21"}
    assert "compress summary" in logs and "python -m diffc_pipeline compress" in logs
    table = pq.read_table(archive / "shards")
    assert sorted(table.column("status").to_pylist()) == ["ok"] * 3
    assert len(set(table.column("id").to_pylist())) == 3

    jobs_before = len(client.list_jobs())
    again, created = sub.submit(client, submission)
    assert not created and again.status.value == "SUCCEEDED"
    assert len(client.list_jobs()) == jobs_before
    other = sub.plan(sub.JobSpec(args=("inspect", str(archive)), python=sys.executable), tick="2026-11-21")
    sub.submit(client, other)  # its probe deletes the earlier, finished ones: one probe left, not one a night
    assert len([j for j in client.list_jobs() if j.submission_id.startswith("diffc-probe-")]) == 1


@pytest.mark.slow
def test_a_cluster_python_without_the_package_is_refused_up_front(head, tmp_path):
    """`python -S` has no site-packages: it stands for a cluster image without diffc-pipeline installed."""
    spec = sub.JobSpec(args=("inspect", str(tmp_path)), python=f"{sys.executable} -S")
    submission = sub.plan(spec, tick="2026-12-01")
    client = sub.connect(head.address, TOKEN)
    with pytest.raises(sub.SubmitError, match=r"cannot run diffc-pipeline: ModuleNotFoundError.*Nothing was submitted"):
        sub.submit(client, submission)
    assert submission.submission_id not in {j.submission_id for j in client.list_jobs()}  # the id stays free


@pytest.mark.slow
def test_a_cluster_running_another_diffc_version_is_warned_of(head, tmp_path, monkeypatch):
    """The command was checked against this machine's CLI and codecs: a cluster on another version is named."""
    cluster_version = sub.__version__  # the head runs this checkout's package
    monkeypatch.setattr(sub, "__version__", "0.0.9")  # this machine's version, as the probe compares it
    said: list[str] = []
    submission = sub.plan(sub.JobSpec(args=("inspect", str(tmp_path)), python=sys.executable), tick="2026-12-04")
    _, created = sub.submit(sub.connect(head.address, TOKEN), submission, warn=said.append)
    assert created and said == [
        f"the cluster runs diffc-pipeline {cluster_version}, this machine 0.0.9: the command was checked against this "
        "version's options and codecs"
    ]


@pytest.mark.slow
def test_cli_wait_follows_logs_and_exits_with_the_jobs_code(head, tmp_path):
    """A job whose diffc exits 2 (missing input) makes `diffc submit --wait` exit 2; a rerun of the tick
    reports the same job and code without submitting. (In-process CLI: a subprocess would add seconds of
    imports per call.)"""
    args = (
        "--wait",
        "--tick",
        "t1",
        "--python",
        sys.executable,
        "compress",
        str(tmp_path / "missing"),
        str(tmp_path / "out"),
        "--model",
        "gaussian",
        "-S",
        "secret=wJalrXUtnFEMI-secret",  # Ray echoes the entrypoint into the logs --wait prints
        "-S",
        "password=n0t'safe-9",  # and quotes this one there
    )
    env = {"RAY_API_SERVER_ADDRESS": head.address, "RAY_AUTH_TOKEN": TOKEN}
    first = _cli(*args, env=env)
    assert first.exit_code == 2, first.output[-2000:]
    sid = first.stdout.splitlines()[0]
    assert sid.startswith("diffc-compress-t1-")
    # the job's own error line, streamed from its log (rich wraps it at 80 columns)
    assert f"error: input {tmp_path / 'missing'} does not exist" in " ".join(first.stdout.split())
    assert "submitted" in first.stderr
    second = _cli(*args, env=env)
    assert second.exit_code == 2 and second.stdout.splitlines()[0] == sid
    assert "already exists" in " ".join(second.stderr.split()) and "--retry-failed" in second.stderr
    third = _cli("--retry-failed", *args, env=env)  # the failed tick runs again, under its retry id
    assert third.exit_code == 2 and third.stdout.splitlines()[0] == f"{sid}-r1", third.output[-2000:]
    assert "submitted" in third.stderr
    assert not _leaks(first.output + second.output + third.output)


def test_unreachable_cluster_is_a_clear_error_worth_a_retry():
    from diffc_pipeline.cluster.local_head import free_port
    from diffc_pipeline.errors import ClusterError

    with pytest.raises(ClusterError, match="cannot reach"):
        sub.connect(f"http://127.0.0.1:{free_port()}")
    result = _cli("--address", f"http://127.0.0.1:{free_port()}", "codecs")  # exit 1, as for compress: retry
    assert result.exit_code == 1 and "cannot reach the Ray Jobs API" in " ".join(result.output.split())


class _AgentLateClient:
    """Stands in for a JobSubmissionClient whose head has not registered its job agent for the first
    ``refusals`` calls: the real race cannot be produced on demand (it lasts ~10 s after ``ray start`` on a
    loaded machine, and not at all on a quiet one), so its one observable, the SDK's error, is replayed."""

    def __init__(
        self,
        refusals: int,
        message: str = "Request failed with status code 500: No available agent to submit job, please try again later.",
    ) -> None:
        self.refusals, self.message, self.calls = refusals, message, 0

    def submit_job(self, **job) -> str:
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError(self.message)
        return job["submission_id"]


def test_submission_waits_for_the_heads_job_agent():
    late = _AgentLateClient(refusals=2)
    sub.submit_when_agent_ready(late, wait_s=30, submission_id="x", entrypoint="true")
    assert late.calls == 3
    never = _AgentLateClient(refusals=10**6)
    with pytest.raises(RuntimeError, match="No available agent"):
        sub.submit_when_agent_ready(never, wait_s=1.5, submission_id="x", entrypoint="true")
    assert 2 <= never.calls <= 4
    other = _AgentLateClient(refusals=1, message="Request failed with status code 400: bad runtime_env")
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        sub.submit_when_agent_ready(other, wait_s=30, submission_id="x", entrypoint="true")
    assert other.calls == 1  # any other refusal is not retried


@pytest.mark.slow
def test_token_authentication(head, tmp_path):
    """Without the token, or with a wrong one, the error says so; with --token-file the job is submitted,
    and the token is never printed."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with pytest.raises(sub.SubmitError, match="requires a token"):
        sub.connect(head.address)
    with pytest.raises(sub.SubmitError, match="rejected the token"):
        sub.connect(head.address, "wrong-" + TOKEN)
    result = _cli(
        "--address",
        head.address,
        "--token-file",
        str(token_file),
        "--tick",
        "t",
        "--python",
        sys.executable,
        "--",
        "--version",
    )
    assert result.exit_code == 0, result.output
    assert "submitted" in result.stderr and result.stdout.startswith("diffc-version-t-")
    assert TOKEN not in result.output


def test_followed_logs_show_progress_lines_at_once_and_mask_a_secret_cut_between_chunks() -> None:
    """A progress line redrawn with "\r" is written when it arrives, not held until the job ends; a secret that
    arrives in two chunks is masked once its line is whole."""
    import io

    from diffc_pipeline.cli.submit import MaskedLines

    out = io.StringIO()
    lines = MaskedLines(lambda text: text.replace("hunter2", "***"), out)
    lines.write("compress: 10/100\r")
    assert out.getvalue() == "compress: 10/100\r"
    lines.write("compress: 20/100\rkey=hun")
    assert out.getvalue() == "compress: 10/100\rcompress: 20/100\r"
    lines.write("ter2 done\nlast")
    lines.close()
    assert out.getvalue().endswith("\rkey=*** done\nlast") and "hunter2" not in out.getvalue()


def test_relative_paths_in_a_submitted_command_are_warned_of():
    """The job runs in a working directory on the cluster: `imgs/` there is not `imgs/` here."""
    result = _cli("--dry-run", "--tick", "t", "compress", "imgs/", "s3://b/out", "--codec", "webp")
    assert result.exit_code == 0, result.output
    assert "INPUT 'imgs/' is a relative path: the job resolves it in its working directory" in result.stderr
    assert "s3://b/out" not in result.stderr  # URLs and absolute paths are what a job should be given
    quiet = _cli("--dry-run", "--tick", "t", "inspect", "/data/archive")
    assert quiet.exit_code == 0 and "relative path" not in quiet.stderr, quiet.output
    paths = _cli("--dry-run", "--tick", "t", "model", "export", "run/checkpoint", "/models/m")  # Path arguments
    assert "CHECKPOINT 'run/checkpoint' is a relative path" in paths.stderr, paths.output
