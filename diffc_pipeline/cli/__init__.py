"""The ``diffc`` command line (Typer).

Each module of this package defines the commands of one area and a ``register(app)`` function; they are
found with :mod:`pkgutil`, so adding a command never means editing a central list.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="diffc",
    help="Dataset-scale lossy image compression with diffusion codecs (DiffC, CDC) and classical ones, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"diffc-pipeline {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Dataset-scale lossy image compression with diffusion codecs (DiffC, CDC) and classical ones, on Ray."""


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}").register(app)


def main() -> None:
    app()
