"""What every resumable trainer here shares: optimizer state as safetensors (no pickles) and a clean stop on
SIGTERM/SIGINT (a scheduler's stop ends a run with a checkpoint, not a lost stretch of training)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


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
