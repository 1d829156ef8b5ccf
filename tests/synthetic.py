"""Synthetic test images shared by the test modules (imported as ``from synthetic import ...``: pytest puts
this folder on ``sys.path``)."""

from __future__ import annotations

import numpy as np
import torch


def smooth_images(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``b`` uint8 ``(h, w, 3)`` images: a bilinear upsampling of a 3x4 random grid plus a little noise, so that
    neighbouring pixels correlate as in photos and the Gaussian model's steps carry realistic KLs."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 3, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(b, 3, h, w, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
