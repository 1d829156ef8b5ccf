"""``diffc eval``: rate-distortion of DiffC (real and ideal channel) against classical codecs.

Modules: :mod:`.data` (which images, deterministically), :mod:`.metrics` (PSNR, MS-SSIM), :mod:`.classical`
(JPEG/WebP/AVIF through Pillow), :mod:`.diffc_points` (DiffC prefixes), :mod:`.bdrate` (Bjontegaard delta
rate), :mod:`.runner` (the loop) and :mod:`.report` (JSON, plots, HTML, table).
"""
