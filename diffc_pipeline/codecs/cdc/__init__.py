"""CDC: lossy compression with a conditional diffusion decoder (Yang & Mandt, NeurIPS 2023), with a real
bitstream, a channel-wise context model and one variable-rate model. Importing this package imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..base import Codec
    from .config import CdcOptions


def build(options: CdcOptions, model: str | None, device: str = "cpu") -> Codec:
    """Registry factory: the CDC codec with stream ``options`` and ``model`` ("builtin" or a path)."""
    from .codec import CdcCodec

    return CdcCodec.from_options(options, model, device)
