"""CDC on large images: the full-resolution networks run window by window, so memory depends on the window.

At full resolution the analysis transform holds ~0.3 GB per megapixel (its first GDN layer at H/2 with 96
channels, a few copies) and the diffusion decoder ~0.7 GB (synthesis features at H/2, H/4, H/8 plus the
U-Net's activations): a 12 MP photo needed 4.3 GB to encode and 8.5 GB to decode. When the image, padded to
multiples of 64 pixels, has more than :data:`GRID`'s ``above`` latent positions (4,096, i.e. 2^20 pixels;
``y`` is H/16 x W/16), both run on a fixed grid of the latent positions: each side is cut into the fewest
near-equal cores of at most 64 positions (1024 pixels), each evaluated with 4 positions (64 pixels) of context
on every side that lies inside the image, whose output is discarded.

- Encoder: ``g_a`` sees +-30 pixels (four 5x5 stride-2 convolutions, GDN is pointwise), well inside the
  64-pixel context, so the tiled ``y`` is the untiled one up to float rounding; the stream is then coded from
  it as usual (the encoder is not part of what must be reproducible: any ``y`` gives a valid stream). Images
  below the threshold go through ``g_a`` in groups of at most 4 MP (after padding) per call: a batch the
  pipeline sends (cut at 4 MP before padding) is one call as before, unless padding takes it over 4 MP.
- Decoder: the synthesis (+-2.3 positions, see :mod:`.refine`) is exact with this context too, so the mean
  decoder is the untiled one up to rounding. The diffusion decoder runs its whole DDIM chain on each window
  from that window's part of the image's noise: its U-Net normalises per window (GroupNorm) and sees only the
  window, so a tiled decode differs slightly from an untiled one (measured: ``docs/cdc.md``, *Large images*).
  Near-equal cores keep every window large: no sliver of a last row whose statistics would differ most.

The grid is a pure function of the image's size and the decoder runs on one thread, so a stream decodes to
the same pixels everywhere. Images at or below the threshold - every CBSD68 photo and thumbnail - are one
window: their pixels are those of the untiled networks. These constants are part of what a large image decodes
to: changing them needs a new model identity or stream version.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...images import DEFAULT_BATCH_PIXELS
from ...models.tiling import Tiling
from .model import CdcModel

# The grid, in latent positions (one position is PIXELS_PER_LATENT x PIXELS_PER_LATENT pixels).
GRID = Tiling(tile=64, halo=4, above=64 * 64, balanced=True)
PIXELS_PER_LATENT = 16


def _pixels(s: slice) -> slice:
    return slice(s.start * PIXELS_PER_LATENT, s.stop * PIXELS_PER_LATENT)


def analysis(net: CdcModel, x: torch.Tensor, grid: Tiling = GRID) -> torch.Tensor:
    """``g_a(x)`` for a padded batch ``x (B, 3, H, W)`` (H, W multiples of 16): image by image and window by
    window when the images are large; otherwise in groups of images of at most the pipeline's batch of pixels
    (:data:`~diffc_pipeline.images.DEFAULT_BATCH_PIXELS`), so that a batch of many mid-size images passed to
    the API is as bounded as one the pipeline sends."""
    b, _, h, w = x.shape
    windows = grid.windows(h // PIXELS_PER_LATENT, w // PIXELS_PER_LATENT)
    if len(windows) == 1:
        per_call = max(1, DEFAULT_BATCH_PIXELS // (h * w))
        return torch.cat([net.g_a(x[i : i + per_call]) for i in range(0, b, per_call)])
    y = torch.empty(b, net.cfg.latent, h // PIXELS_PER_LATENT, w // PIXELS_PER_LATENT)
    for i in range(b):
        for rows, cols, core_rows, core_cols in windows:
            part = net.g_a(x[i : i + 1, :, _pixels(rows), _pixels(cols)])
            y[i : i + 1, :, rows, cols][:, :, core_rows, core_cols] = part[:, :, core_rows, core_cols]
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
