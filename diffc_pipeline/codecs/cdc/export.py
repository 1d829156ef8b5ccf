"""Export a CDC training checkpoint to release weights: fp16 ``encoder.safetensors`` and ``decoder.safetensors``
(split by role, each under the repository's 10 MB limit for a tracked file), the integer/float tables
both coder sides use (``tables.safetensors``, computed from the fp16 weights as the decoder will load them)
and ``config.json``.

``python -m diffc_pipeline.codecs.cdc.export RUN/checkpoint diffc_pipeline/codecs/cdc/weights [--raw]``

OUT is a new or empty folder, or a CDC model folder (an earlier export), which is replaced whole; any other
folder, and one that holds or lies inside the checkpoint, is refused before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ...errors import DiffcError, InvalidInputError, ModelLoadError
from ...models.storage import replaced_directory
from .codec import SINGLE_FILE, WEIGHT_FILES, weight_file_of
from .config import ModelConfig
from .entropy import scale_table, tabulate_prior
from .model import CdcModel

# What a CDC model folder holds (the one-file layout of earlier exports included): replacing one loses nothing else.
MODEL_FILES = frozenset({"config.json", "tables.safetensors", SINGLE_FILE, *WEIGHT_FILES})


def refuse_unreplaceable(out: Path) -> None:
    """Refuse an ``out`` whose replacement would delete what is not a CDC model: a file, or a folder holding
    anything but a CDC model's files (a ``config.json`` of format ``cdc-model`` and its weights)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidInputError(f"OUT {out} is a file; give a folder for the model")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    try:
        meta = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != "cdc-model":
        raise InvalidInputError(
            f"OUT {out} holds files and is not a CDC model folder (no config.json of format 'cdc-model'); "
            "export into a new or empty folder, or one an earlier export wrote"
        )
    others = [n for n in names if n not in MODEL_FILES]
    if others:
        raise InvalidInputError(
            f"OUT {out} is a CDC model folder that also holds {', '.join(others)}, which replacing it would "
            "delete; move them away or export into another folder"
        )


def write_model_dir(
    out: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], meta: dict | None = None, name: str = "cdc-builtin"
) -> None:
    """Write ``out`` (config.json, the weights in their dtype split into encoder.safetensors and
    decoder.safetensors, tables.safetensors computed from the weights exactly as the decoder loads them).
    An existing CDC model folder is replaced whole: the new one is written beside it, then the two are swapped,
    so that a failed export leaves the old one as it was. Anything else at ``out`` is refused
    (:func:`refuse_unreplaceable`)."""
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file

    out = Path(out).absolute()  # "." has no name to put the new folder beside
    refuse_unreplaceable(out)
    weights = {k: v.detach().contiguous() for k, v in weights.items()}
    net = CdcModel(cfg)
    net.load_state_dict({k: v.float() for k, v in weights.items()})
    tables = {
        "z_freq": tabulate_prior(net.z_prior, cfg.z_bound),
        "scales": scale_table(cfg.scale_min, cfg.scale_max, cfg.scale_levels),
    }
    with replaced_directory(out) as staging:
        for fname in WEIGHT_FILES:
            save_file({k: v for k, v in weights.items() if weight_file_of(k) == fname}, str(staging / fname))
        save_np(tables, str(staging / "tables.safetensors"))
        config = {"format": "cdc-model", "name": name, "model": cfg.to_dict(), **(meta or {})}
        (staging / "config.json").write_text(json.dumps(config, indent=1))


def export(checkpoint: Path, out: Path, raw: bool = False, name: str = "cdc-builtin", note: str = "") -> dict:
    """Write the release directory ``out`` from ``checkpoint`` (EMA weights unless ``raw``) in fp16. Refused
    before anything is written: an ``out`` that holds the checkpoint or lies inside it, one that is not a CDC
    model folder (:func:`refuse_unreplaceable`), a checkpoint that is none or cannot be read."""
    from safetensors.torch import load_file

    from ...training.checkpointing import checkpoint_errors

    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise ModelLoadError(f"checkpoint {checkpoint}: no such folder (a run keeps it in RUN/checkpoint)")
    ck, target = checkpoint.resolve(), out.resolve()
    if target == ck or target in ck.parents or ck in target.parents:
        where = "lies inside" if ck in target.parents else "holds"
        raise InvalidInputError(f"OUT {out} {where} the checkpoint {checkpoint}; export to another folder")
    state_path = checkpoint / "state.json"
    if not state_path.is_file():
        raise ModelLoadError(f"{checkpoint}: not a CDC training checkpoint (no state.json)")
    with checkpoint_errors(checkpoint, "restore it from a copy, or export another checkpoint"):
        meta = json.loads(state_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != "cdc-checkpoint":
            kind = meta.get("format") if isinstance(meta, dict) else None
            raise ModelLoadError(
                f"{checkpoint}: not a CDC training checkpoint (state.json format {kind!r}); a DiffC training "
                "checkpoint exports with `diffc model export`"
            )
        cfg = ModelConfig.from_dict(meta["model"])
        weights = load_file(str(checkpoint / ("weights.safetensors" if raw else "ema.safetensors")))
        steps, elapsed, train_config = meta["step"], meta["elapsed_s"], meta["config"]
    half = {k: v.to(torch.float16) for k, v in weights.items()}
    curve = meta.get("curve", [])
    info = {
        "trained_steps": steps,
        "trained_hours": round(elapsed / 3600, 2),
        "weights": "raw" if raw else "ema",
        "dtype": "float16",
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_config": train_config,
        "last_curve_point": curve[-1] if curve else None,
        "note": note,
    }
    write_model_dir(out, cfg, half, info, name)
    return {"name": name, **info}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffc_pipeline.codecs.cdc.export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--name", default="cdc-builtin")
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    try:
        cfg = export(a.checkpoint, a.out, a.raw, a.name, a.note)
    except DiffcError as exc:  # a bad checkpoint or OUT: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: cfg[k] for k in ("name", "trained_steps", "trained_hours", "weights", "exported")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
