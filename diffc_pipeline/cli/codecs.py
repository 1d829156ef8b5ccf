"""``diffc codecs``: the registered codecs, their stream options (``--codec-opt``) and decode options."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.markup import escape

from ._common import friendly_errors, report


def describe_codecs() -> list[dict]:
    """Per registered codec: name, summary, default model, stream options with defaults, decode options.

    Reading decode options imports each codec's class (and with it torch, for the diffusion codecs).
    """
    from ..codecs import CODECS

    out = []
    for e in CODECS.values():
        options = {f.name: f.default for f in dataclasses.fields(e.options_class()) if f.init}
        try:
            cls = e.codec_class()
            decode = {o.name: {"default": o.default, "choices": o.choices, "help": o.help} for o in cls.decode_options}
            progressive = cls.progressive
        except ImportError as exc:  # an optional dependency of the codec is missing
            decode, progressive = {"unavailable": str(exc)}, None
        out.append(
            {
                "name": e.name,
                "summary": e.summary,
                "default_model": e.default_model,
                "progressive": progressive,
                "options": options,
                "decode_options": decode,
            }
        )
    return out


@friendly_errors
def codecs(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the codecs `--codec` accepts, with their options and decode options."""
    info = describe_codecs()
    if as_json:
        typer.echo(json.dumps(info, indent=1, default=str))
        return
    # A block per codec rather than a table: its lines wrap between options, so a narrow terminal still shows
    # every option's name and default (a five-column table had to cut them).
    for c in info:
        progressive = {True: "progressive", False: "not progressive", None: "progressive: ?"}[c["progressive"]]
        model = f", model {c['default_model']}" if c["default_model"] else ""
        report.print(f"[bold]{c['name']}[/bold]: {escape(c['summary'])} [dim]({progressive}{model})[/dim]")
        options = ", ".join(f"{k}={v}" for k, v in c["options"].items()) or "none"
        report.print(f"  --codec-opt: {escape(options)}")
        decode = ", ".join(
            f"{k}={v['default']}" + (f" ({'|'.join(map(str, v['choices']))})" if v.get("choices") else "")
            if isinstance(v, dict)
            else f"{k}: {v}"
            for k, v in c["decode_options"].items()
        )
        report.print(f"  decode options: {escape(decode or 'none')}")


def register(app: typer.Typer) -> None:
    app.command("codecs")(codecs)
