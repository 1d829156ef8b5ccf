"""Export a CDC training checkpoint to release weights: fp16 ``encoder.safetensors`` and ``decoder.safetensors``
(split by role, each under the repository's 10 MB limit for a tracked file), the integer/float tables
both coder sides use (``tables.safetensors``, computed from the fp16 weights as the decoder will load them)
and ``config.json``.

``python -m diffc_pipeline.codecs.cdc.export RUN/checkpoint diffc_pipeline/codecs/cdc/weights [--raw]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from ...errors import ModelLoadError
from .codec import WEIGHT_FILES, weight_file_of
from .config import ModelConfig
from .entropy import scale_table, tabulate_prior
from .model import CdcModel


def write_model_dir(
    out: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], meta: dict | None = None, name: str = "cdc-builtin"
) -> None:
    """Write ``out`` (config.json, the weights in their dtype split into encoder.safetensors and
    decoder.safetensors, tables.safetensors computed from the weights exactly as the decoder loads them),
    replacing it atomically."""
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous() for k, v in weights.items()}
    net = CdcModel(cfg)
    net.load_state_dict({k: v.float() for k, v in weights.items()})
    tables = {
        "z_freq": tabulate_prior(net.z_prior, cfg.z_bound),
        "scales": scale_table(cfg.scale_min, cfg.scale_max, cfg.scale_levels),
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for fname in WEIGHT_FILES:
        save_file({k: v for k, v in weights.items() if weight_file_of(k) == fname}, str(tmp / fname))
    save_np(tables, str(tmp / "tables.safetensors"))
    config = {"format": "cdc-model", "name": name, "model": cfg.to_dict(), **(meta or {})}
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def export(checkpoint: Path, out: Path, raw: bool = False, name: str = "cdc-builtin", note: str = "") -> dict:
    """Write the release directory ``out`` from ``checkpoint`` (EMA weights unless ``raw``) in fp16."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    state_path = checkpoint / "state.json"
    if not state_path.is_file():
        raise ModelLoadError(f"{checkpoint}: not a CDC training checkpoint (no state.json)")
    meta = json.loads(state_path.read_text())
    cfg = ModelConfig.from_dict(meta["model"])
    weights = load_file(str(checkpoint / ("weights.safetensors" if raw else "ema.safetensors")))
    half = {k: v.to(torch.float16) for k, v in weights.items()}
    curve = meta.get("curve", [])
    info = {
        "trained_steps": meta["step"],
        "trained_hours": round(meta["elapsed_s"] / 3600, 2),
        "weights": "raw" if raw else "ema",
        "dtype": "float16",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_config": meta["config"],
        "last_curve_point": curve[-1] if curve else None,
        "note": note,
    }
    write_model_dir(Path(out), cfg, half, info, name)
    return {"name": name, **info}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffc_pipeline.codecs.cdc.export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--name", default="cdc-builtin")
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    cfg = export(a.checkpoint, a.out, a.raw, a.name, a.note)
    print(json.dumps({k: cfg[k] for k in ("name", "trained_steps", "trained_hours", "weights", "exported")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
