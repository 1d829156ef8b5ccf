"""Helpers shared by the command modules: error reporting and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

import typer
from rich.console import Console

from ..errors import ClusterError, DiffcError

console = Console(stderr=True)
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
            console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(EXIT_FAILED if isinstance(exc, ClusterError) else EXIT_USAGE) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    """Repeated ``FLAG KEY=VALUE`` options -> ``{KEY: VALUE}`` (values stay strings: the codec types them)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DiffcError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out
