"""What every resumable trainer here shares: optimizer state as safetensors (no pickles) and a clean stop on
SIGTERM/SIGINT (a scheduler's stop ends a run with a checkpoint, not a lost stretch of training)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffcError


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
