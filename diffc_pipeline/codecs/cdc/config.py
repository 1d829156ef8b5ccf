"""CDC configuration: stream options and architecture, importable without torch.

:class:`CdcOptions` are the *stream options* (``--codec-opt KEY=VALUE``): they change the bits written, so they
enter the fingerprint. :class:`ModelConfig` is the architecture of one trained model (``config.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

# lambda of each rate index (loss = bpp + lambda * 255^2 * MSE on [0, 1]); one variable-rate model serves all
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0005, 0.00125, 0.003125, 0.0078, 0.0195, 0.049)


@dataclass(frozen=True)
class CdcOptions:
    """Stream options of the CDC codec.

    ``rate``: rate index of the variable-rate model (0 = lowest rate; ``describe()['details']['lambdas']``
    lists the lambdas); None takes the model's ``default_rate``, so that the default quality stays the same
    lambda when a release adds rates below it. ``slices``: how many channel slices of the content latent to
    write (0 = all); fewer slices give a smaller stream that decodes like a prefix of a full one.
    ``refine_steps``: encoder effort - steps of latent refinement per image (:mod:`.refine`; 0 = one pass of
    the encoder, the fast default). Refined streams are smaller for the same quality and decode with any CDC
    decoder; encoding costs ~0.34 s per step for a 481x321 photo on one core. Part of the fingerprint when not 0.
    """

    rate: int | None = None
    slices: int = 0
    refine_steps: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one CDC model (saved as ``config.json``)."""

    channels: int = 96  # N: width of the analysis/synthesis/hyper transforms
    latent: int = 160  # M: channels of the content latent y (H/16)
    hyper: int = 64  # channels of the hyper-latent z (H/64)
    slices: int = 5  # y is coded in this many equal channel slices (channel-wise context model)
    context: int = 96  # width of each slice's context network
    unet: tuple[int, ...] = (48, 64, 96)  # conditional U-Net widths at 1/2, 1/4, 1/8 resolution
    lambdas: tuple[float, ...] = field(default=DEFAULT_LAMBDAS)
    z_bound: int = 40  # z symbols are clipped to [-z_bound, z_bound] (tabulated prior)
    y_bound: int = 255  # y symbols (residuals around the mean, gain units) are clipped to this
    scale_min: float = 0.11
    scale_max: float = 64.0
    scale_levels: int = 64  # log-spaced scale table shipped with the model
    mean_grid: int = 64  # predicted means are rounded to multiples of 1/mean_grid (drift guard)
    default_rate: int = 3  # the rate index a stream gets when none is asked for (lambda 0.0078 in release 3)

    @property
    def rates(self) -> int:
        return len(self.lambdas)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"] = list(self.unet)
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        kw = dict(d)
        for k in ("unet", "lambdas"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)
