"""CDC on large images: the full-resolution networks run window by window, so memory depends on the window.

At full resolution the analysis transform holds ~0.3 GB per megapixel (its first GDN layer at H/2 with 96
channels, a few copies) and the diffusion decoder ~0.5 GB (synthesis features at H/2, H/4, H/8 plus the
U-Net's activations): a 12 MP photo needed 4.3 GB to encode. Above :data:`GRID`'s ``above`` (4,096 latent
positions = 1 MP) both run on a fixed grid of the latent positions (``y`` is H/16 x W/16): cores of 64 x 64
positions (1024 x 1024 pixels), each evaluated with 4 positions (64 pixels) of context on every side that lies
inside the image, whose output is discarded.

- Encoder: ``g_a`` sees +-30 pixels (four 5x5 stride-2 convolutions, GDN is pointwise), well inside the
  64-pixel context, so the tiled ``y`` is the untiled one up to float rounding; the stream is then coded from
  it as usual (the encoder is not part of what must be reproducible: any ``y`` gives a valid stream).
- Decoder: the synthesis (+-2.3 positions, see :mod:`.refine`) is exact with this context too, so the mean
  decoder is the untiled one up to rounding. The diffusion decoder runs its whole DDIM chain on each window
  from that window's part of the image's noise: its U-Net normalises per window (GroupNorm) and sees only the
  window, so a tiled decode differs slightly from an untiled one (measured: ``docs/cdc.md``, *Large images*).

The grid is a pure function of the image's size and the decoder runs on one thread, so a stream decodes to
the same pixels everywhere. Images of at most 1 MP - every CBSD68 photo and thumbnail - are one window, so
their streams and pixels are those of the untiled networks. These constants are part of what a large image
decodes to: changing them needs a new model identity or stream version.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...models.tiling import Tiling
from .model import CdcModel

# The grid, in latent positions (one position is PIXELS_PER_LATENT x PIXELS_PER_LATENT pixels).
GRID = Tiling(tile=64, halo=4, above=64 * 64)
PIXELS_PER_LATENT = 16


def _pixels(s: slice) -> slice:
    return slice(s.start * PIXELS_PER_LATENT, s.stop * PIXELS_PER_LATENT)


def analysis(net: CdcModel, x: torch.Tensor, grid: Tiling = GRID) -> torch.Tensor:
    """``g_a(x)`` for a padded batch ``x (B, 3, H, W)`` (H, W multiples of 16): window by window when the images
    are large, in groups of images of at most one window's pixels when they are not (a batch of many mid-size
    images is as bounded as one large image)."""
    b, _, h, w = x.shape
    positions = (h // PIXELS_PER_LATENT) * (w // PIXELS_PER_LATENT)
    windows = grid.windows(h // PIXELS_PER_LATENT, w // PIXELS_PER_LATENT)
    if len(windows) == 1:  # and a batch of smaller images in groups of at most one window's worth
        per_call = max(1, grid.above // positions)
        return torch.cat([net.g_a(x[i : i + per_call]) for i in range(0, b, per_call)])
    y = torch.empty(b, net.cfg.latent, h // PIXELS_PER_LATENT, w // PIXELS_PER_LATENT)
    for rows, cols, core_rows, core_cols in windows:
        part = net.g_a(x[:, :, _pixels(rows), _pixels(cols)])
        y[:, :, rows, cols][:, :, core_rows, core_cols] = part[:, :, core_rows, core_cols]
    return y


# A renderer: a latent window and where its pixels lie in the image (rows, cols) -> the window's pixels.
Render = Callable[[torch.Tensor, tuple[slice, slice]], torch.Tensor]


def synthesise(y_hat: torch.Tensor, render: Render, grid: Tiling = GRID) -> torch.Tensor:
    """The image ``(1, 3, 16 h, 16 w)`` of one latent ``y_hat (1, M, h, w)``, window by window when large.

    ``render(y_window, (pixel rows, pixel cols))`` turns a latent window into its pixels; the pixel slices say
    where the window lies in the image (the diffusion decoder takes its noise from there)."""
    h, w = y_hat.shape[-2:]
    windows = grid.windows(h, w)
    if len(windows) == 1:
        return render(y_hat, (_pixels(slice(0, h)), _pixels(slice(0, w))))
    out = torch.empty(1, 3, h * PIXELS_PER_LATENT, w * PIXELS_PER_LATENT)
    for rows, cols, core_rows, core_cols in windows:
        part = render(y_hat[:, :, rows, cols], (_pixels(rows), _pixels(cols)))
        out[:, :, _pixels(rows), _pixels(cols)][:, :, _pixels(core_rows), _pixels(core_cols)] = part[
            :, :, _pixels(core_rows), _pixels(core_cols)
        ]
    return out
