"""``diffc eval``: rate-distortion of any registry codec - DiffC (real and ideal channel), another codec at a
grid of options (``--codec``), classical anchors - on one image set.

Modules: :mod:`.run` (``run_eval(EvalOptions)``, the orchestration), :mod:`.data` (which images,
deterministically), :mod:`.metrics` (PSNR, MS-SSIM, detail ratio), :mod:`.perceptual` (LPIPS, FID from user
networks), :mod:`.classical` (the anchors' quality grids and lowest-rate search), :mod:`.runner` (the anchor
and DiffC loops), :mod:`.grid` (the loop of any other codec), :mod:`.on_ray` (DiffC on Ray actors),
:mod:`.bdrate` (Bjontegaard delta rate), :mod:`.progress` and :mod:`.report` (JSON, plots, HTML, tables).
"""
