"""The one definition of the conversions between stored pixels and network tensors.

Stored pixels are ``uint8`` ``(B, H, W, 3)`` (numpy, HWC as images are); networks take float ``(B, C, H, W)``
in the data scale ``[-1, 1]``. Every codec, trainer and evaluator converts through these two functions, so
that quantisation to ``uint8`` (round half to even after clamping) is the same everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInputError


def to_float(images: np.ndarray | torch.Tensor, channels: int = 3) -> torch.Tensor:
    """``uint8`` ``(B, H, W, C)`` (numpy or torch) -> float32 ``(B, C, H, W)`` in ``[-1, 1]``."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise InvalidInputError(f"expected uint8 images, got {images.dtype}")
        arr = np.ascontiguousarray(images)
        # torch warns on every read-only array (np.asarray of a PIL image is one); a uint8 copy is a quarter
        # of the float32 result this function makes anyway
        images = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise InvalidInputError(f"expected uint8 images, got {getattr(images, 'dtype', type(images).__name__)}")
    if images.dim() != 4 or images.shape[3] != channels:
        raise InvalidInputError(f"expected shape (B, H, W, {channels}), got {tuple(images.shape)}")
    if 0 in images.shape:
        raise InvalidInputError(f"empty batch or image: shape {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``(B, C, H, W)`` in ``[-1, 1]`` -> ``uint8`` ``(B, H, W, C)`` numpy (clamped, rounded)."""
    q = ((x.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return q.permute(0, 2, 3, 1).cpu().numpy()
