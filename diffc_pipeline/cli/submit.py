"""``diffc submit``: run a diffc command on a Ray cluster as a Ray job, once per schedule tick."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import typer

from ..redaction import log_redactor
from ._common import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, console, friendly_errors, parse_pairs, warn

REQUEST_TIMEOUT_S = 120.0  # per Jobs API request; a lost contact while following is retried (cluster.submit)
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process a scheduler stopped

# Typer keeps single newlines of help text, so each paragraph is one string.
_HELP = "\n\n".join(
    [
        "Run a diffc command on a Ray cluster through the Ray Jobs API.",
        "Options of `submit` go before the command; everything from the command on is the command's own:",
        "  diffc submit --address http://HEAD:8265 --wait compress s3://in/ s3://archive/",
        "  diffc submit --config jobs/nightly_archive.yaml --tick 2026-11-21 --wait",
        "The submission id is derived from the command and --tick (default: today's UTC date), so submitting "
        "the same tick twice finds the first job instead of starting another (--retry-failed: unless it failed). "
        "Set --tick from the schedule, not the clock: a run started late, or a local-time cron across a DST "
        "change, would otherwise land on another day's tick.",
        "With --wait the exit code is the job's: 0 succeeded, 3 finished with failed records, 2 bad arguments, "
        "1 failed.",
    ]
)


def _job_exit_code(details) -> int:
    """Map a finished Ray job onto the CLI's exit codes; the driver's own code tells partial from failed."""
    from ray.job_submission import JobStatus

    if details.status == JobStatus.SUCCEEDED:
        return EXIT_OK
    if details.driver_exit_code in (EXIT_PARTIAL, EXIT_USAGE):
        return details.driver_exit_code
    return EXIT_FAILED


def _build_spec(
    command: list[str],
    config: Path | None,
    name: str | None,
    python: str | None,
    runtime_env_file: Path | None,
    env: list[str],
    num_cpus: float | None,
    num_gpus: float | None,
):
    from ..cluster import submit as sub

    if config is not None and command:
        raise sub.SubmitError("give either --config or a command, not both")
    if config is not None:
        spec = sub.load_job_config(config)
    elif command:
        spec = sub.JobSpec(args=tuple(command))
    else:
        raise sub.SubmitError("nothing to submit: give a command (e.g. `compress SRC DST`) or --config FILE")
    runtime_env = dict(spec.runtime_env)
    if runtime_env_file is not None:
        runtime_env = sub.merge_runtime_env(runtime_env, sub.load_mapping(runtime_env_file, "runtime env"))
    if env:
        runtime_env = sub.merge_runtime_env(runtime_env, {"env_vars": sub.forward_env(env)})
    sub.check_runtime_env(runtime_env, str(runtime_env_file or config or "the runtime env"))
    overrides = {"name": name, "python": python, "entrypoint_num_cpus": num_cpus, "entrypoint_num_gpus": num_gpus}
    return dataclasses.replace(spec, runtime_env=runtime_env, **{k: v for k, v in overrides.items() if v is not None})


def check_command(
    args: Sequence[str], misplaced_options: Collection[str] = (), warn: Callable[[str], None] | None = None
) -> list[str]:
    """Parse ``args`` exactly as ``diffc`` would, without running the command; return the command path.

    Raises :class:`SubmitError` naming the problem (unknown command or option, missing argument, bad
    value). Eager options that end parsing (``--help``, ``--version``) count as valid; their output is
    swallowed. Catching a typo here saves a nightly job that would fail on the cluster hours later. An
    unknown option listed in ``misplaced_options`` gets a hint that it belongs before the command. ``warn``
    is told of relative paths among the command's arguments: the job resolves them in its own working
    directory on the cluster, not here.
    """
    from typer.main import get_command

    from ..cluster.submit import SubmitError, redact_args
    from . import app

    try:  # Typer >= 0.2x vendors click; its parser errors derive from this class
        from typer._click.exceptions import UsageError
    except ImportError:  # older Typer parses with click itself
        from click.exceptions import UsageError

    path = ["diffc"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ctx = get_command(app).make_context("diffc", list(args))
            while hasattr(ctx.command, "resolve_command"):  # a group: descend into the named subcommand
                # the group keeps the subcommand's name apart from its arguments, as its invoke() reads them
                rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
                if not rest:
                    raise UsageError("missing command", ctx=ctx)
                name, cmd, sub_args = ctx.command.resolve_command(ctx, rest)
                path.append(name)
                ctx = cmd.make_context(name, sub_args, parent=ctx)
    except typer.Exit:
        return path
    except UsageError as exc:
        hint = ""
        if getattr(exc, "option_name", None) in misplaced_options:
            hint = f" ({exc.option_name} is an option of `diffc submit`: put it before the command)"
        raise SubmitError(f"`{shlex.join(['diffc', *redact_args(args)])}`: {exc.format_message()}{hint}") from None
    if path[1:] == ["compress"]:
        _check_compress(ctx.params, args)
    if warn is not None:
        for param in ctx.command.params:
            value = ctx.params.get(param.name)
            if not (param.param_type_name == "argument" and isinstance(value, str | os.PathLike)):
                continue
            if _relative_path(str(value)):
                warn(
                    f"{str(param.name).upper()} {str(value)!r} is a relative path: the job resolves it in its working "
                    "directory on the cluster; give an absolute path or a URL the cluster can read"
                )
    return path


def _relative_path(value: str) -> bool:
    """A local path that does not start at the root (no URL scheme, no ``/``, no ``~``)."""
    return "://" not in value and not value.startswith(("/", "~")) and not Path(value).is_absolute()


def _check_compress(params: dict, args: Sequence[str]) -> None:
    """What parsing cannot see but the job would refuse at once: an unknown codec or codec option, a model
    for a codec without one, ``--incremental`` with ``--overwrite`` (no model is loaded, nothing is read)."""
    from ..cluster.submit import SubmitError, redact_args
    from ..codecs.registry import resolve
    from ..errors import DiffcError

    where = f"`{shlex.join(['diffc', *redact_args(args)])}`"
    try:
        options = parse_pairs(params.get("codec_opt") or [], "--codec-opt")
        if params.get("steps"):
            options["num_steps"] = str(params["steps"])
        resolve(params.get("codec") or "diffc", options, params.get("model"))
    except DiffcError as exc:
        raise SubmitError(f"{where}: {exc}") from None
    if params.get("incremental") and not params.get("resume", True):
        raise SubmitError(f"{where}: --incremental never rewrites committed shards; it cannot go with --overwrite")
    if params.get("retry_errors") and not params.get("incremental"):
        raise SubmitError(f"{where}: --retry-errors codes an incremental archive's error rows again; add --incremental")


def _validate(ctx: typer.Context, args: tuple[str, ...]) -> None:
    from ..cluster.submit import SubmitError

    if args[0] == "submit":
        raise SubmitError("a submitted job cannot itself be `diffc submit`")
    own = {opt for param in ctx.command.params for opt in param.opts if opt.startswith("-")}
    try:
        check_command(args, misplaced_options=own, warn=warn)
    except SubmitError as exc:
        raise SubmitError(f"{exc}; pass --no-validate if the cluster runs another diffc version") from None


@friendly_errors
def submit(
    ctx: typer.Context,
    command: list[str] = typer.Argument(
        None, metavar="COMMAND [ARGS]...", help="The diffc command to run on the cluster, with its arguments."
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="A job file (jobs/*.yaml): the command, its runtime env and resources."
    ),
    address: str | None = typer.Option(
        None, help="Ray dashboard URL, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)."
    ),
    tick: str | None = typer.Option(
        None, help="Schedule time this run belongs to; one job per command and tick (default: the UTC date)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the job's logs and exit with its status."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the submission (secrets masked) and exit."),
    runtime_env: Path | None = typer.Option(
        None, "--runtime-env", help="JSON/YAML runtime env merged over the config's (env_vars per variable)."
    ),
    env: list[str] = typer.Option(
        [], "--env", metavar="NAME", help="Pass this local environment variable to the job (repeatable)."
    ),
    token_file: Path | None = typer.Option(
        None, help="File holding the cluster's auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH)."
    ),
    name: str | None = typer.Option(None, help="Job name used in the submission id (default: the command)."),
    python: str | None = typer.Option(None, help="Python on the cluster that runs diffc (default: python)."),
    entrypoint_num_cpus: float | None = typer.Option(None, help="CPUs reserved for the job's driver."),
    entrypoint_num_gpus: float | None = typer.Option(None, help="GPUs reserved for the job's driver."),
    validate: bool = typer.Option(True, help="Check the command against this diffc's CLI before submitting."),
    check_python: bool = typer.Option(
        True, help="Before a new job, run a probe job that checks the cluster's Python can import diffc-pipeline."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="If this tick's job failed or was stopped, submit it again (id -r1, -r2, ...)."
    ),
) -> None:
    from ..cluster import submit as sub

    spec = _build_spec(command or [], config, name, python, runtime_env, env, entrypoint_num_cpus, entrypoint_num_gpus)
    if validate:
        _validate(ctx, spec.args)
    submission = sub.plan(spec, tick)
    if dry_run:
        shown = sub.resolve_address(address) if address or os.environ.get(sub.ADDRESS_ENV) else "(not set)"
        typer.echo(json.dumps(submission.describe(shown), indent=2))
        return
    addr = sub.resolve_address(address)
    # Ray's SDK sends its requests without a timeout: a head that accepts and never answers would hold an
    # unattended submitter until its pod's deadline. urllib3 falls back to the socket default.
    socket.setdefaulttimeout(REQUEST_TIMEOUT_S)
    client = sub.connect(addr, sub.resolve_token(token_file))
    details, created = sub.submit(
        client, submission, check_python=check_python, retry_failed=retry_failed, warn=warn
    )
    sid = details.submission_id
    if created:
        console.print(f"submitted [bold]{sid}[/bold] to {sub.redact_text(addr)}", highlight=False)
    else:
        console.print(
            f"job [bold]{sid}[/bold] already exists for tick {submission.tick} "
            f"(status {details.status.value}): nothing submitted; pass another --tick for a new run"
            + (" or --retry-failed" if details.status.value in sub.ENDED_BADLY else ""),
            highlight=False,
        )
    typer.echo(sid)
    if wait:
        details = _follow(client, sid, log_redactor(submission.spec.args))
    elif not details.status.is_terminal():
        return
    code = _job_exit_code(details)
    console.print(f"job {sid}: {details.status.value} (exit code {code})", highlight=False)
    raise typer.Exit(code)


def _follow(client, sid: str, redact: Callable[[str], str]):
    """Stream the job's logs to stdout until it ends, whole lines at a time with the command's credentials
    masked (Ray echoes the entrypoint, `-S secret=...` and all, and the output lands in cron and CI logs);
    Ctrl-C stops following, not the job."""
    from ..cluster import submit as sub

    lines = MaskedLines(redact, sys.stdout)

    def terminated(signum, frame) -> None:  # a scheduler's stop (SIGTERM): as Ctrl-C, exit code 143
        raise _Terminated

    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        sub.follow_logs(client, sid, lines.write)
        lines.close()
        return sub.wait_for_end(client, sid)
    except KeyboardInterrupt as exc:
        console.print(f"stopped following; the job keeps running (ray job logs --follow {sid})", soft_wrap=True)
        if isinstance(exc, _Terminated):
            raise typer.Exit(EXIT_TERMINATED) from None
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


class MaskedLines:
    """Log text arriving in chunks, written to ``out`` whole lines at a time with ``redact`` applied, so that a
    secret cut between two chunks is still masked. A line ends at ``\\n`` or at ``\\r`` (a progress line
    redrawn in place), so progress shows as it comes instead of when the job ends."""

    def __init__(self, redact: Callable[[str], str], out) -> None:
        self.redact, self.out, self.pending = redact, out, ""

    def write(self, chunk: str) -> None:
        lines = re.split(r"(?<=[\r\n])", self.pending + chunk)
        self.pending = lines.pop()
        if lines:
            self.out.write(self.redact("".join(lines)))
            self.out.flush()

    def close(self) -> None:
        """Write what is left of an unterminated last line."""
        if self.pending:
            self.out.write(self.redact(self.pending))
            self.pending = ""


class _Terminated(KeyboardInterrupt):
    """SIGTERM while following a job: stop following (the job keeps running), like Ctrl-C."""


def register(app: typer.Typer) -> None:
    app.command(
        "submit",
        help=_HELP,
        short_help="Run a diffc command on a Ray cluster (Ray Jobs API), once per schedule tick.",
        context_settings={"allow_interspersed_args": False},
    )(submit)
