"""The network's arithmetic precision: a model whose ``predict_eps`` runs under bfloat16 autocast.

Why: on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) oneDNN's bfloat16 convolutions run the built-in
U-Net 2.0-2.6x faster than float32 (on a channels-last copy) for little rate: on 500 Tiny ImageNet val images
the 40-step codec schedule's ideal rate rose ~0.1%; real DiffC-F streams (coding and reconstruction in
bfloat16) on 16 images need ~1% more bits at equal PSNR (docs/benchmarks.md). Only
the network runs in bfloat16 (autocast keeps norms and softmax in float32): the codec's own algebra and the
channel coder stay float32/float64, and the output is float32.

A stream depends on the precision its encoder's network ran at (the chain's priors come from the network), so
the precision is a stream option of the codec (``network_precision``), in its fingerprint and config id, and a
decoder runs the network at the precision the stream names.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .base import DiffusionModel

PRECISIONS = {"bfloat16": torch.bfloat16}


class AutocastModel:
    """``model`` with its network under autocast to ``dtype``, in the channels-last memory layout; every other
    attribute is ``model``'s own.

    The network is a channels-last copy (oneDNN's bfloat16 convolutions run 1.1-1.3x faster on it: 2.0-2.6x
    over float32 together, where bfloat16 alone gives 1.8-2.1x; `diffc bench network`), so that the float32
    model it came from keeps its layout and with it its rounding."""

    def __init__(self, model: DiffusionModel, dtype: torch.dtype) -> None:
        self._model = copy.copy(model)
        net = getattr(model, "net", None)
        if isinstance(net, torch.nn.Module):
            self._model.net = copy.deepcopy(net).to(memory_format=torch.channels_last)
        self._dtype = dtype
        device = getattr(model, "device", torch.device("cpu"))
        self._device_type = torch.device(device).type

    def __getattr__(self, name: str) -> Any:  # channels, pad_multiple, identity, schedule, tiling, ...
        if name == "_model":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self._model, name)

    def predict_eps(self, z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self._device_type, dtype=self._dtype):
            eps = self._model.predict_eps(z.contiguous(memory_format=torch.channels_last), logsnr)
        return eps.float().contiguous()


def at_precision(model: DiffusionModel, precision: str | None) -> DiffusionModel:
    """``model`` itself for float32 (``None``), else an :class:`AutocastModel` at ``precision``."""
    if precision is None or precision == "float32":
        return model
    if precision not in PRECISIONS:
        raise ValueError(f"unknown network precision {precision!r}; choose float32 or {', '.join(PRECISIONS)}")
    return AutocastModel(model, PRECISIONS[precision])
