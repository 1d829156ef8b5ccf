"""Distortion metrics on uint8 RGB images: PSNR, MS-SSIM, and the detail ratio (a weight-free sharpness view).

MS-SSIM on small images: the standard definition (Wang et al. 2003) uses 5 scales with an 11-tap Gaussian
window, which needs at least 11 * 16 = 176 px on the shorter side; Tiny ImageNet is 64x64. pytorch-msssim
asserts a size for *any* number of scales (its check is hard-coded to 4 downsamplings), so it cannot
compute a 3-scale MS-SSIM. We therefore keep the standard window (11 taps, sigma 1.5, K1=0.01, K2=0.03)
and use the largest number of scales ``L <= 5`` for which the window still fits the coarsest scale
(``min(H, W)`` halved ``L-1`` times is still ``>= 11`` px), with the first ``L`` standard exponents
renormalised to sum to 1 (64x64 -> 3 scales; CBSD68's 321 px -> the standard 5). The computation follows
pytorch-msssim exactly (valid Gaussian filtering, 2x2 average pooling with zero padding of odd sides, ReLU on
the per-channel contrast terms); a test checks that it matches ``pytorch_msssim.ms_ssim`` where that applies.
Values from images of different sizes are therefore not on the same scale: the number of scales is recorded
with every result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
PSNR_LOSSLESS_DB = 100.0  # what identical images score, so curve means and the JSON stay finite


def psnr(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """PSNR in dB of two uint8 images over all pixels and channels (identical: :data:`PSNR_LOSSLESS_DB`)."""
    if reference.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {reconstruction.shape}")
    mse = np.mean((reference.astype(np.float64) - reconstruction.astype(np.float64)) ** 2)
    return PSNR_LOSSLESS_DB if mse == 0 else min(PSNR_LOSSLESS_DB, float(10.0 * np.log10(255.0**2 / mse)))


# ITU-R BT.601 luma weights; the detail ratio looks at luma, where codecs and blur act on texture
LUMA = np.array([0.299, 0.587, 0.114])
DETAIL_RATIO_MAX = 100.0  # keeps curve means and the JSON finite for a flat reference


def detail_ratio(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """RMS of the reconstruction's high-frequency luma over the reference's: 1 keeps as much fine detail as
    the original, below 1 is blurred (a posterior mean, a coarse quantiser), above 1 adds edges or noise.

    High frequencies: luma minus its 3x3 box average (edge-replicated). Not a realism metric - noise scores
    as detail and wrong texture as right - but it needs no pretrained weights and shows what PSNR hides:
    whether a codec's low-rate output is a blur. A flat reference gives 1 for a flat reconstruction and
    :data:`DETAIL_RATIO_MAX` otherwise.
    """
    if reference.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {reconstruction.shape}")
    ref, rec = _high_pass_rms(reference), _high_pass_rms(reconstruction)
    if ref == 0.0:
        return 1.0 if rec == 0.0 else DETAIL_RATIO_MAX
    return min(DETAIL_RATIO_MAX, rec / ref)


def _high_pass_rms(image: np.ndarray) -> float:
    y = image.astype(np.float64) @ LUMA
    padded = np.pad(y, 1, mode="edge")
    h, w = y.shape
    box = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    return float(np.sqrt(np.mean((y - box) ** 2)))


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales used for an image of this size (see the module docstring)."""
    side = min(height, width)
    scales = 0
    while scales < len(MS_SSIM_WEIGHTS) and side >= WIN_SIZE:
        scales += 1
        side = side // 2 + side % 2  # size after _downsample
    if scales == 0:
        raise ValueError(f"image of {height}x{width} is too small for MS-SSIM (needs at least {WIN_SIZE} px)")
    return scales


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run small convolutions on one thread: on a busy machine torch's thread pool costs ~100x the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ms_ssim(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """MS-SSIM of two ``(H, W, 3)`` uint8 images, data range 255, scales chosen by :func:`ms_ssim_scales`."""
    with _one_thread():
        return _ms_ssim(reference, reconstruction)


def _ms_ssim(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    # torch.tensor copies: decoded images are often read-only views of a buffer, which torch.from_numpy
    # would wrap with a "non-writable NumPy array" warning (and undefined behaviour if torch wrote to it)
    x = torch.tensor(reference).permute(2, 0, 1)[None].double()
    y = torch.tensor(reconstruction).permute(2, 0, 1)[None].double()
    scales = ms_ssim_scales(*reference.shape[:2])
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    if scales < len(MS_SSIM_WEIGHTS):  # all five are used as published (they sum to 1.0001)
        weights = weights / weights.sum()
    values = []
    for level in range(scales):
        ssim_c, cs_c = _ssim_and_cs(x, y)
        if level < scales - 1:
            values.append(torch.relu(cs_c))
            x, y = _downsample(x), _downsample(y)
        else:
            values.append(torch.relu(ssim_c))
    per_channel = torch.prod(torch.stack(values, 0) ** weights.view(-1, 1, 1), dim=0)
    return float(per_channel.mean())


def _downsample(img: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling; an odd side is zero-padded by one pixel (as pytorch-msssim does)."""
    padding = [s % 2 for s in img.shape[2:]]
    return F.avg_pool2d(img, kernel_size=2, padding=padding)


def _gaussian_window(channels: int) -> torch.Tensor:
    coords = torch.arange(WIN_SIZE, dtype=torch.float64) - WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * WIN_SIGMA**2))
    return (g / g.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def _filter(img: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering, per channel."""
    c = img.shape[1]
    out = F.conv2d(img, win, groups=c)
    return F.conv2d(out, win.transpose(2, 3), groups=c)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean SSIM and contrast-structure term, shape ``(B, C)``."""
    win = _gaussian_window(x.shape[1])
    c1, c2 = (K1 * 255.0) ** 2, (K2 * 255.0) ** 2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    sxx = _filter(x * x, win) - mu_x**2
    syy = _filter(y * y, win) - mu_y**2
    sxy = _filter(x * y, win) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)
