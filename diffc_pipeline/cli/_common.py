"""Helpers shared by the command modules: error reporting and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ClusterError, DiffcError

# Messages (errors, warnings, progress) go to stderr; results (the summary tables, inspect's report, the codec
# list) to stdout, so that `diffc inspect ARCHIVE > report.txt` and pipes get the report and only the report.
# emoji=False: Rich would turn `:cat:` in a path or `START:END:K` in a message into emoji (help texts avoid such names)
console = Console(stderr=True, emoji=False)
report = Console(emoji=False)
F = TypeVar("F", bound=Callable)

EXIT_OK = 0
EXIT_PARTIAL = 3  # the job finished but some records failed
EXIT_FAILED = 1  # the job did not finish
EXIT_USAGE = 2  # bad arguments or input (click's own code for usage errors)


def friendly_errors(fn: F) -> F:
    """Turn :class:`DiffcError` into one red line instead of a traceback: exit code 2 (bad input), or 1 for a
    cluster that cannot be reached or started (worth a retry)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DiffcError as exc:
            print_error(exc)
            raise typer.Exit(EXIT_FAILED if isinstance(exc, ClusterError) else EXIT_USAGE) from None
        except KeyboardInterrupt as exc:
            console.print("[yellow]interrupted[/yellow]")
            for note in getattr(exc, "__notes__", ()):  # what the interrupted job left, e.g. a partial OUTPUT
                console.print(escape(note), highlight=False, soft_wrap=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def print_error(exc: BaseException) -> None:
    """One red ``error:`` line. The message is escaped: it quotes user input (paths, options, --where
    clauses) and Rich would read ``[...]`` in it as markup - eating ``[jxl]`` from an install hint, or failing
    on ``[/x]``."""
    console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)  # paths stay whole


def warn(message: str) -> None:
    """One yellow line on stderr, ``message`` escaped as in :func:`print_error`."""
    console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True)


def parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    """Repeated ``FLAG KEY=VALUE`` options -> ``{KEY: VALUE}`` (values stay strings: the codec types them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DiffcError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out
