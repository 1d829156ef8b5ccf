"""``diffc bench ...``: measurements that are too long for tests. Other modules add commands to ``bench_app``."""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import typer

from ._common import console, friendly_errors

bench_app = typer.Typer(help="Benchmarks (long measurements; results as JSON).", no_args_is_help=True)


def run_info() -> dict:
    """Who ran what, where and when: every benchmark JSON carries it."""
    return {
        "command": " ".join(["diffc", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={torch.get_num_threads()}".strip(),
        "torch": torch.__version__,
    }


@bench_app.command("rcc")
@friendly_errors
def rcc(
    model: str = typer.Option("builtin", help="Model for the speed part: builtin, gaussian or PATH."),
    configs: str = typer.Option(
        "8:14:1.15,8:14:1.0,8:12:1.25,8:12:1.0",
        help="Comma-separated chunk_bits:candidate_log2:target_gain channel settings to compare (first = default).",
    ),
    repeats: int = typer.Option(2, help="Seeds per profile step."),
    images: int = typer.Option(8, help="64x64 images in the speed measurement (one batch)."),
    data: str = typer.Option("", help="Parquet/image URL for the speed images (default: bundled samples)."),
    json_path: Path = typer.Option(None, "--json", help="Also write the result here."),
) -> None:
    """Rate overhead, sample fidelity and speed of the reverse-channel coder (prints one JSON object)."""
    from ..benchmarks.rcc import PROFILE_KL_BITS, measure_channel, measure_codec_speed
    from ..codec import CodecConfig
    from ..models import load_model
    from ..samples import load_images

    default = CodecConfig()
    curve = []
    for spec in filter(None, configs.split(",")):
        c, log2n, gain = spec.split(":")
        cfg = dataclasses.replace(default, chunk_bits=int(c), candidate_log2=int(log2n), target_gain=float(gain))
        console.print(f"channel: chunk_bits={c} candidate_log2={log2n} target_gain={gain}")
        curve.append({"target_gain": float(gain), **measure_channel(cfg, repeats)})
    m = load_model(model)
    x = load_images(data, images, size=64)
    speed = measure_codec_speed(m, default, x)
    result = {
        **run_info(),
        "profile": {"dims": 12288, "step_kl_bits": list(PROFILE_KL_BITS), "d": "N(0,1) x lognormal(0,0.5) scales"},
        "default_config": default.to_dict(),
        **curve[0],
        "tradeoff": curve,
        "model": m.identity.short,
        **speed,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
