"""Submit a ``diffc`` command to a Ray cluster as a Ray job, once per schedule tick.

The job runs ``python -m diffc_pipeline <command> <args>`` on the cluster through the Ray Jobs API
(:class:`ray.job_submission.JobSubmissionClient`, the dashboard address ``http://HEAD:8265``). Its
submission id is derived from the command, its arguments and a *tick* (the schedule time, by default the
UTC date): a scheduler that fires twice for one tick, or a retried CronJob pod, finds the job already
there and follows it instead of starting a second run against the same archive.

Secrets never leave this module in printable form: arguments that carry credentials (``--storage-option``
values, options named like tokens or keys, passwords in URLs) are masked in everything printed and are
left out of the submission id, and runtime-env variables are printed by name only. They do reach the
cluster (the job needs them), where Ray shows entrypoints and runtime envs to anyone with dashboard
access; credentials that live on the cluster (instance roles, Kubernetes secrets) avoid even that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import ClusterError, DiffcError
from ..redaction import PLAIN_ENV, REDACTED, identity_args, looks_secret, redact_args, redact_text

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"

_SLUG = re.compile(r"[^a-z0-9]+")
_CONFIG_KEYS = frozenset(
    {"name", "description", "command", "runtime_env", "entrypoint_num_cpus", "entrypoint_num_gpus", "python"}
)


class SubmitError(DiffcError):
    """A submission cannot be made: bad config, unknown command, unreachable or refusing cluster."""


@dataclass(frozen=True)
class JobSpec:
    """What to run on the cluster: the ``diffc`` arguments and how to run them."""

    args: tuple[str, ...]
    name: str | None = None
    runtime_env: Mapping[str, Any] = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    python: str = "python"


@dataclass(frozen=True)
class Submission:
    """One planned Ray job: the spec bound to a tick, with the id that makes it idempotent."""

    spec: JobSpec
    tick: str
    submission_id: str
    entrypoint: str
    metadata: dict[str, str]

    def describe(self, address: str) -> dict[str, Any]:
        """A printable view: the same submission with every secret masked."""
        return {
            "address": redact_text(address),
            "submission_id": self.submission_id,
            "tick": self.tick,
            "entrypoint": shlex.join(entrypoint_argv(self.spec, redact=True)),
            "runtime_env": redact_runtime_env(self.spec.runtime_env),
            "entrypoint_num_cpus": self.spec.entrypoint_num_cpus,
            "entrypoint_num_gpus": self.spec.entrypoint_num_gpus,
            "metadata": self.metadata,
        }


# ----------------------------------------------------------------------------------------------- secrets


def redact_runtime_env(runtime_env: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime env with every environment-variable value masked (names stay, values may be keys)."""
    out = {k: v for k, v in runtime_env.items() if k != "env_vars"}
    if "env_vars" in runtime_env:
        out["env_vars"] = dict.fromkeys(runtime_env["env_vars"], REDACTED)
    return json.loads(redact_text(json.dumps(out)))


# ------------------------------------------------------------------------------------- specs and configs


def _as_arg(value: Any, where: str) -> str:
    # YAML turns `256` into an int and `yes` into a bool; numbers are fine, a bool is almost surely a typo.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SubmitError(f"{where}: every command argument must be a string or number, got {value!r}")
    return str(value)


def load_mapping(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON or YAML mapping (YAML is a superset of JSON, so one safe loader reads both)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SubmitError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SubmitError(f"{what} {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SubmitError(f"{what} {path} must hold a mapping, not {type(data).__name__}")
    return data


def load_job_config(path: Path) -> JobSpec:
    """Read a ``jobs/*.yaml`` file: ``command`` (list or string), optional ``name``, ``runtime_env``, ..."""
    data = load_mapping(path, "job config")
    unknown = sorted(set(data) - _CONFIG_KEYS)
    if unknown:
        allowed = ", ".join(sorted(_CONFIG_KEYS))
        raise SubmitError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    command = data.get("command")
    if isinstance(command, str):
        args = tuple(shlex.split(command))
    elif isinstance(command, list):
        args = tuple(_as_arg(a, str(path)) for a in command)
    else:
        raise SubmitError(f"{path}: `command` must be a list of arguments or a string: [compress, SRC, DST]")
    if not args:
        raise SubmitError(f"{path}: `command` is empty")
    runtime_env = data.get("runtime_env") or {}
    if not isinstance(runtime_env, dict):
        raise SubmitError(f"{path}: `runtime_env` must be a mapping")
    return JobSpec(
        args=args,
        name=data.get("name"),
        runtime_env=runtime_env,
        entrypoint_num_cpus=data.get("entrypoint_num_cpus"),
        entrypoint_num_gpus=data.get("entrypoint_num_gpus"),
        python=str(data.get("python", "python")),
    )


def check_runtime_env(runtime_env: Mapping[str, Any], where: str) -> None:
    """Ray wants ``env_vars`` as strings; a YAML number (``OMP_NUM_THREADS: 4``) passed ``--dry-run`` and
    then failed every real submission with a traceback quoting the value (which may be a secret). Named here,
    by variable only."""
    env = runtime_env.get("env_vars")
    if env is None:
        return
    if not isinstance(env, Mapping):
        raise SubmitError(f"{where}: runtime_env.env_vars must be a mapping of NAME: value")
    wrong = sorted(str(k) for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str))
    if wrong:
        raise SubmitError(
            f"{where}: runtime_env.env_vars values must be strings (quote them in YAML: NAME: \"4\"); not a "
            f"string: {', '.join(wrong)}"
        )


def merge_runtime_env(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` wins key by key; ``env_vars`` are merged variable by variable."""
    merged = {**base, **override}
    if "env_vars" in base or "env_vars" in override:
        merged["env_vars"] = {**base.get("env_vars", {}), **override.get("env_vars", {})}
    return merged


def forward_env(names: Sequence[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Values of local environment variables to hand to the job (``--env NAME``), e.g. credentials."""
    environ = os.environ if environ is None else environ
    missing = [n for n in names if n not in environ]
    if missing:
        raise SubmitError(f"--env: not set in this environment: {', '.join(missing)}")
    return {n: environ[n] for n in names}


# ---------------------------------------------------------------------------------- ids and entrypoints


def default_tick(now: datetime | None = None) -> str:
    """The UTC date: one run per day unless a finer tick is given."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%d")


def _slug(text: str, limit: int = 32) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")[:limit].strip("-") or "x"


def submission_id(spec: JobSpec, tick: str) -> str:
    """``diffc-<name or command>-<tick>-<hash>``: readable in ``ray job list``, unique per command and tick.

    The hash covers the arguments with their credentials masked (:func:`identity_args`) and the values of
    plain environment variables (:data:`PLAIN_ENV`), so no secret enters it (its 48 bits are public: a weak
    password could be confirmed offline) and a rotated credential does not turn a finished tick into a new
    run - while two jobs that differ only in an endpoint, a user name or a region are two jobs. A command
    with none of these hashes as it did before they counted (the same ids across the upgrade).
    """
    key: dict[str, Any] = {"name": spec.name, "args": identity_args(spec.args), "tick": tick}
    env = spec.runtime_env.get("env_vars") or {}
    plain = {k: str(v) for k, v in env.items() if PLAIN_ENV.search(str(k)) and not looks_secret(str(k))}
    if plain:
        key["env_vars"] = plain
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"diffc-{_slug(spec.name or spec.args[0])}-{_slug(tick)}-{digest}"


def entrypoint_argv(spec: JobSpec, redact: bool = False) -> list[str]:
    args = redact_args(spec.args) if redact else list(spec.args)
    return [*shlex.split(spec.python), "-m", "diffc_pipeline", *args]


def plan(spec: JobSpec, tick: str | None = None) -> Submission:
    """Bind a spec to a tick; nothing is contacted."""
    tick = tick or default_tick()
    metadata = {"diffc.command": spec.args[0], "diffc.tick": tick}
    if spec.name:
        metadata["diffc.name"] = spec.name
    return Submission(spec, tick, submission_id(spec, tick), shlex.join(entrypoint_argv(spec)), metadata)


# -------------------------------------------------------------------------------------------- the cluster


def resolve_address(address: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--address`` or ``$RAY_API_SERVER_ADDRESS``: the dashboard URL, never the GCS ``host:6379``."""
    environ = os.environ if environ is None else environ
    address = address or environ.get(ADDRESS_ENV)
    if not address:
        hint = ""
        if environ.get("RAY_ADDRESS"):
            hint = " (RAY_ADDRESS is set, but that is the GCS address for ray.init, not the Jobs API)"
        raise SubmitError(f"no cluster address: pass --address http://HEAD:8265 or set {ADDRESS_ENV}{hint}")
    if not address.startswith(("http://", "https://")):
        raise SubmitError(
            f"address {redact_text(address)!r} is not a dashboard URL; the Jobs API listens on http://HEAD:8265"
        )
    return address.rstrip("/")


def resolve_token(token_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The cluster's auth token: ``--token-file``, else ``$RAY_AUTH_TOKEN``, else ``$RAY_AUTH_TOKEN_PATH``.

    These are Ray's own variable names. With none of them set, Ray's client still sends
    ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token`` is set locally.
    """
    environ = os.environ if environ is None else environ
    path = token_file or (Path(environ[TOKEN_PATH_ENV]) if environ.get(TOKEN_PATH_ENV) else None)
    if token_file is None and environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV].strip()
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise SubmitError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise SubmitError(f"the token file {path} is empty")
    return token


def connect(address: str, token: str | None = None):
    """A :class:`JobSubmissionClient` for ``address`` (contacts the cluster to check its version)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        problem = "rejected the token given" if token else "requires a token (Ray's token authentication)"
        raise SubmitError(
            f"the cluster at {redact_text(address)} {problem}; pass --token-file or set {TOKEN_ENV} or "
            f"{TOKEN_PATH_ENV} (on KubeRay: the auth_token key of the cluster's token Secret)"
        ) from None
    except ConnectionError as exc:  # not the user's input: exit code 1, which a scheduler may retry
        raise ClusterError(f"cannot reach the Ray Jobs API at {redact_text(address)}: {exc}") from None
    except (RuntimeError, OSError) as exc:  # something answers there, but not the Jobs API (or not now)
        if _server_side(exc):
            raise _cluster_error(f"the Ray Jobs API at {redact_text(address)} failed", exc) from None
        raise SubmitError(
            f"{redact_text(address)} does not answer as a Ray Jobs API ({redact_text(str(exc))[:200]}); pass the "
            "dashboard's address, http://HEAD:8265"
        ) from None


_STATUS = re.compile(r"status code (\d{3})")


def _server_side(exc: BaseException) -> bool:
    """A failure of the cluster or the network, not of the request: a lost connection or a timeout (requests'
    errors are OSErrors), or an HTTP 5xx, which the SDK raises as a RuntimeError naming the status code."""
    if isinstance(exc, OSError):
        return True
    status = _STATUS.search(str(exc)) if isinstance(exc, RuntimeError) else None
    return status is not None and status[1].startswith("5")


def _cluster_error(what: str, exc: BaseException) -> ClusterError:
    return ClusterError(f"{what}: {redact_text(str(exc))[:300]} (the cluster or the network; worth a retry)")


def _job_or_none(client, submission_id: str):
    """The job with this id, or None. The SDK reports a missing job as a RuntimeError with HTTP 404; a
    cluster or network failure is a :class:`ClusterError` (exit code 1: a scheduler may retry)."""
    from ray.exceptions import AuthenticationError

    try:
        return client.get_job_info(submission_id)
    except AuthenticationError:  # a token that may connect but not read jobs, or one revoked meanwhile
        raise SubmitError(
            f"the cluster refused to show job {submission_id}: its token is missing, wrong or not allowed to"
        ) from None
    except (RuntimeError, OSError) as exc:
        if "404" in str(exc) and not isinstance(exc, OSError):
            return None
        if _server_side(exc):
            raise _cluster_error(f"cannot read job {submission_id}", exc) from None
        raise SubmitError(f"the cluster refused to show job {submission_id}: {redact_text(str(exc))[:300]}") from None


LOG_SETTLE_S = 15.0
RAY_ENTRYPOINT_LINE = "Running entrypoint for job"


def _last_output_line(client, job_id: str, message: str | None) -> str:
    """The last line a finished job printed. Its logs can lag its terminal status (seen on a loaded machine:
    only Ray's own "Running entrypoint for job ..." line was there yet), so wait up to ``LOG_SETTLE_S`` for a
    line of the job's own."""
    deadline = time.monotonic() + LOG_SETTLE_S
    while True:
        logs = redact_text(client.get_job_logs(job_id) or "")
        own = [ln.strip() for ln in logs.splitlines() if ln.strip() and not ln.startswith(RAY_ENTRYPOINT_LINE)]
        if own:
            return own[-1]
        if time.monotonic() > deadline:
            return redact_text(message or "").strip() or "no output"
        time.sleep(0.5)


PROBE_TIMEOUT_S = 600.0  # a runtime env that pip-installs packages can take minutes to build
# A head answers the Jobs API before its job agent has registered; until then Ray refuses every submission
# with HTTP 500 "No available agent to submit job, please try again later" (it waits ~10 s itself). A nightly
# job submitted right after its cluster came up would fail on that alone, so the refusal is retried this long.
AGENT_WAIT_S = 120.0
NO_AGENT = "No available agent to submit job"


def submit_when_agent_ready(client, wait_s: float = AGENT_WAIT_S, **job) -> None:
    """``client.submit_job(**job)``, retried while the head has no job agent yet (for at most ``wait_s``);
    any other refusal, or that one after ``wait_s``, raises the SDK's RuntimeError."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.submit_job(**job)
            return
        except RuntimeError as exc:
            if NO_AGENT not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(1.0)


def check_cluster_python(
    client, spec: JobSpec, timeout_s: float = PROBE_TIMEOUT_S, warn: Callable[[str], None] | None = None
) -> None:
    """Run a tiny probe job - ``PYTHON -c "import diffc_pipeline.cli"`` in the job's runtime env - and raise
    :class:`SubmitError` saying what to install if it fails; ``warn`` when the cluster's diffc-pipeline is
    another version than this one, which checked the command against its own CLI and codecs.

    Without it a cluster whose Python lacks the package fails inside the real job (``ModuleNotFoundError:
    typer``), and that failed job then holds the tick's submission id, so a rerun after the fix would find
    it and submit nothing.
    """
    code = "import diffc_pipeline, diffc_pipeline.cli; print('diffc-pipeline', diffc_pipeline.__version__)"
    probe_id = f"diffc-probe-{os.urandom(6).hex()}"
    _delete_old_probes(client)
    try:
        submit_when_agent_ready(
            client,
            entrypoint=shlex.join([*shlex.split(spec.python), "-c", code]),
            submission_id=probe_id,
            runtime_env=dict(spec.runtime_env) or None,
            metadata={"diffc.command": "probe"},
        )
    except RuntimeError as exc:
        raise SubmitError(f"the cluster refused the probe job: {redact_text(str(exc))}") from None
    deadline = time.monotonic() + timeout_s
    while True:
        details = client.get_job_info(probe_id)
        if details.status.is_terminal():
            break
        if time.monotonic() > deadline:
            client.stop_job(probe_id)
            raise SubmitError(f"the probe job {probe_id} did not finish in {timeout_s:.0f} s (runtime env setup?)")
        time.sleep(0.5)
    if details.status.value != "SUCCEEDED":
        last = _last_output_line(client, probe_id, details.message)
        raise SubmitError(
            f"the cluster's Python ({spec.python!r}) cannot run diffc-pipeline: {last}. Install it on the "
            "cluster's image (pip install diffc-pipeline, with torch first), add it to the job's runtime env "
            "(runtime_env: {pip: [diffc-pipeline]}), or point --python at a Python that has it. Nothing was "
            "submitted."
        )
    if warn is not None:
        line = _last_output_line(client, probe_id, details.message)
        theirs = line.split()[-1] if line.startswith("diffc-pipeline ") else "unknown"
        if theirs != __version__:
            warn(
                f"the cluster runs diffc-pipeline {theirs}, this machine {__version__}: the command was checked "
                "against this version's options and codecs"
            )


ENDED_BADLY = ("FAILED", "STOPPED")
MAX_RETRIES = 100  # retries of one tick (--retry-failed): ids <id>-r1 .. -r100


def _delete_old_probes(client) -> None:
    """Delete earlier, finished probe jobs: a standing cluster would otherwise keep one per night, forever.
    Not the probe just read: deleting a job as it ends races Ray's own bookkeeping (seen: the job came back,
    marked FAILED)."""
    with contextlib.suppress(Exception):  # housekeeping only; never a reason to fail a submission
        for job in client.list_jobs():
            if (job.metadata or {}).get("diffc.command") == "probe" and job.status.is_terminal():
                client.delete_job(job.submission_id)


def submit(
    client,
    submission: Submission,
    check_python: bool = True,
    retry_failed: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[Any, bool]:
    """Submit unless a job with this id exists; return ``(JobDetails, created)``. Before a new job,
    ``check_python`` runs :func:`check_cluster_python` (which may ``warn`` of a version mismatch).

    The check-then-submit race (two schedulers at once) is closed by Ray itself, which rejects a
    duplicate submission id: the loser then finds the winner's job and reports it. With ``retry_failed``, a
    tick whose job failed or was stopped gets a new job, ``<id>-r1``, ``-r2``, ... (the first that is free or
    did not end badly): a scheduler's retry then reruns the night instead of re-reporting its failure.
    """
    existing = _job_or_none(client, submission.submission_id)
    if existing is not None and retry_failed and existing.status.value in ENDED_BADLY:
        for n in range(1, MAX_RETRIES + 1):
            retry = replace(submission, submission_id=f"{submission.submission_id}-r{n}")
            existing = _job_or_none(client, retry.submission_id)
            if existing is None or existing.status.value not in ENDED_BADLY:
                submission = retry
                break
        else:
            raise SubmitError(f"tick {submission.tick} already has {MAX_RETRIES} failed retries; pass another --tick")
    if existing is not None:
        return existing, False
    if check_python:
        check_cluster_python(client, submission.spec, warn=warn)
    try:
        submit_when_agent_ready(
            client,
            entrypoint=submission.entrypoint,
            submission_id=submission.submission_id,
            runtime_env=dict(submission.spec.runtime_env) or None,
            metadata=submission.metadata,
            entrypoint_num_cpus=submission.spec.entrypoint_num_cpus,
            entrypoint_num_gpus=submission.spec.entrypoint_num_gpus,
        )
    except (RuntimeError, OSError) as exc:
        existing = _job_or_none(client, submission.submission_id)
        if existing is not None:
            return existing, False
        sid = submission.submission_id
        if _server_side(exc):
            raise _cluster_error(f"the cluster could not take job {sid}", exc) from None
        raise SubmitError(f"the cluster refused job {sid}: {redact_text(str(exc))}") from None
    details = _job_or_none(client, submission.submission_id)
    if details is None:  # Ray stores a job before it answers the submission: deleted in between, or a new head
        raise SubmitError(
            f"job {submission.submission_id} was submitted, but the cluster no longer shows it (deleted, or the "
            "head was replaced)"
        )
    return details, True


LOG_IDLE_S = 60.0  # a log stream quiet this long: ask the Jobs API whether the job still runs


def follow_logs(client, submission_id: str, write: Callable[[str], None], idle_s: float | None = None) -> None:
    """Stream the job's logs (from the start) to ``write`` until the job ends.

    Ray's log stream is a websocket without a heartbeat or timeout, so a silent network partition would hold
    it forever: after ``idle_s`` (default :data:`LOG_IDLE_S`) without output the job's status is polled, and
    the stream is left (for :func:`wait_for_end`) once the job has ended, is gone, or cannot be asked about.
    The pending read is never cancelled, so a quiet job's stream goes on where it was."""
    idle = LOG_IDLE_S if idle_s is None else idle_s

    async def _tail() -> None:
        chunks = aiter(client.tail_job_logs(submission_id))
        pending = asyncio.ensure_future(anext(chunks))
        ended_at: float | None = None  # the job ended: its last lines may still be on the way
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=idle)
                if not done:
                    if ended_at is not None:
                        if time.monotonic() - ended_at > LOG_SETTLE_S:
                            return
                        continue
                    details = await asyncio.to_thread(_job_or_none, client, submission_id)
                    if details is None:
                        return
                    if details.status.is_terminal():
                        ended_at = time.monotonic()
                    continue
                try:
                    write(pending.result())
                except StopAsyncIteration:
                    return
                pending = asyncio.ensure_future(anext(chunks))
        finally:
            pending.cancel()

    # A stream that breaks off (a head restart, a dropped port-forward) is no failure: wait_for_end polls
    # the status instead, and says so if the cluster stays out of reach.
    with contextlib.suppress(Exception):
        asyncio.run(_tail())


LOST_CONTACT_S = 300.0  # how long --wait keeps polling a cluster it cannot reach before giving up


def wait_for_end(client, submission_id: str, poll_s: float = 1.0, lost_contact_s: float = LOST_CONTACT_S):
    """Poll until the job is in a terminal state; return its JobDetails. A cluster out of reach (a head
    restart, a dropped port-forward, an HTTP 5xx) is polled again for ``lost_contact_s``, then a
    :class:`ClusterError` says the job may still be running."""
    lost_since: float | None = None
    while True:
        try:
            details = _job_or_none(client, submission_id)
        except ClusterError as exc:
            lost_since = lost_since if lost_since is not None else time.monotonic()
            if time.monotonic() - lost_since >= lost_contact_s:
                raise ClusterError(
                    f"lost contact with the cluster for {lost_contact_s:.0f} s while following job "
                    f"{submission_id}; it may still be running (`ray job status {submission_id}`): {exc}"
                ) from None
            time.sleep(min(10.0, 5 * poll_s))
            continue
        lost_since = None
        if details is None:
            raise SubmitError(f"job {submission_id} is gone from the cluster (deleted, or the head was replaced)")
        if details.status.is_terminal():
            return details
        time.sleep(poll_s)
