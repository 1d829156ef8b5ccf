"""What every resumable trainer here shares: a checkpoint folder swapped in whole and recovered after a kill,
optimizer state as safetensors (no pickles), one error for a checkpoint that cannot be read, the refusal to
resume with other settings or data, and a clean stop on SIGTERM/SIGINT (a scheduler's stop ends a run with a
checkpoint, not a lost stretch of training)."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..errors import DiffcError, InvalidInputError, ModelLoadError

STATE = "state.json"  # a checkpoint's step, config and curve; its presence marks a checkpoint written whole


def write_checkpoint(directory: Path, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: dict) -> None:
    """Write a checkpoint (``tensors``: safetensors file name -> tensors; ``state``: :data:`STATE`) beside the
    old one, then swap: an interrupted save never loses the last one. ``state.json`` appears by a rename,
    last, so a ``.tmp`` holding it is whole (what :func:`recover_checkpoint` trusts)."""
    recover_checkpoint(directory)  # never build on the debris of an interrupted swap (it would delete both)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, values in tensors.items():
        save_file({k: v.contiguous() for k, v in values.items()}, str(tmp / name))
    (tmp / (STATE + ".part")).write_text(json.dumps(state, indent=1))
    (tmp / (STATE + ".part")).rename(tmp / STATE)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(directory: Path) -> None:
    """Finish a checkpoint swap that a kill interrupted (:func:`write_checkpoint`): with ``directory`` gone, the
    new checkpoint is ``.tmp`` (complete: it is renamed only once written) or else the previous one is
    ``.old``. Without this a resumed run started from step 0 and its first save deleted ``.old``."""
    if (directory / STATE).exists():
        return
    for candidate in (directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")):
        if (candidate / STATE).exists():
            shutil.rmtree(directory, ignore_errors=True)
            candidate.rename(directory)
            return


@contextmanager
def checkpoint_errors(directory: Path, advice: str) -> Iterator[None]:
    """A checkpoint that cannot be read (a state file cut short, missing keys, truncated weights, weights of
    another shape) is one :class:`ModelLoadError` naming it and ``advice`` (what to do), not a JSON, key or
    safetensors traceback."""
    try:
        yield
    except DiffcError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(
            f"checkpoint {directory} cannot be read ({type(exc).__name__}: {first_line}); {advice}"
        ) from None


def refuse_changed_data(directory: Path, saved: Mapping | None, requested: Mapping, options: str) -> None:
    """Refuse to resume the checkpoint in ``directory`` on other data than it trained on, naming each field
    that differs: the weights and every step's draws depend on it. ``options`` names the options that say
    which data. A checkpoint without a record (written before runs recorded their data) resumes on any data,
    and records it from then on."""
    if not saved:
        return
    diffs = [k for k in sorted(saved.keys() | requested.keys()) if saved.get(k) != requested.get(k)]
    if diffs:
        named = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, requested {requested.get(k)!r})" for k in diffs)
        raise InvalidInputError(
            f"{directory}: cannot resume with a different data: {named}; pass the {options} it trained on, or "
            "start a new run in another --out"
        )


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat ``"{index}.{key}"`` tensors, for safetensors."""
    out: dict[str, torch.Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"{idx}.{key}"] = torch.as_tensor(value).contiguous()
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`optimizer_tensors` saved (the param groups come from ``opt`` itself)."""
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


@dataclass
class StopRequest:
    signal: str | None = None


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Record SIGTERM and SIGINT in ``stop`` for the duration; only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        stop.signal = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def refuse_changed_config(
    directory: Path,
    requested: Mapping[str, object],
    saved: Mapping[str, object],
    defaults: Mapping[str, object],
    adjustable: Collection[str],
    changed: Collection[str] = (),
) -> None:
    """Refuse to resume when a field of ``requested`` other than the ``adjustable`` ones differs from the
    checkpoint's ``saved`` config (plus the fields in ``changed``, which the caller compared itself), naming
    each. A field the checkpoint predates counts as its default in ``defaults``: that is what it trained with.
    """
    known = {**defaults, **saved}
    fixed = sorted({k for k, v in requested.items() if k not in adjustable and known.get(k) != v} | set(changed))
    if fixed:
        diffs = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, requested {requested[k]!r})" for k in fixed)
        raise DiffcError(f"{directory}: cannot resume with a different {diffs}")
