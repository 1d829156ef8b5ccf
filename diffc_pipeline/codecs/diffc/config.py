"""Codec parameters: the coding-step schedule and the channel's chunk budget.

Everything here is part of the contract between sender and receiver: it is hashed into
:attr:`CodecConfig.fingerprint`, written into every stream header and archive manifest, and a stream made
with other parameters is refused on decode.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from ...errors import InvalidInputError
from ..base import MAX_CHUNKS

FORMAT_VERSION = 1
RECONSTRUCTION_ONLY = ("flow_steps", "ancestral_steps")
# log-SNR bounds of a schedule: far beyond any trained model's range (the built-in one: -5 .. 4.5 coded, 13 in
# its bound), and finite - an infinite end made every image's encode fail on a float conversion
LOGSNR_LIMIT = 30.0
MAX_POOL_WIDTH = 4096  # the pool is rows x width float32 per step: wider buys nothing (a segment is a chunk part)
PRIOR_VARIANCES = (None, "count")
NETWORK_PRECISIONS = (None, "bfloat16")  # names models/precision.py maps to dtypes; strings here: no torch import


@dataclass(frozen=True)
class CodecConfig:
    """``num_steps`` coding steps, uniform in log-SNR from ``logsnr_start`` (pure noise) to ``logsnr_end``.

    ``chunk_bits``: KL budget per chunk; each step's dimensions are split into ``ceil(KL / chunk_bits)``
    chunks, each simulated with ``2**candidate_log2`` candidates scored against ``target_gain * d`` (see
    :mod:`.channel`). ``pool_width``: width of the shared candidate pool rows; ``pool_rows_log2``: the pool
    holds ``2**pool_rows_log2`` rows (``None``: one per candidate); fewer rows than candidates make each
    candidate a combination of rows over several segments, which buys candidates at a fraction of the
    scoring cost (see :mod:`.channel`). ``flow_steps``: ODE steps of DiffC-F reconstruction;
    ``ancestral_steps``: sampling steps of DiffC-A. The ODE has converged at 24 steps, the sampler converges
    slowly: on 8 Tiny ImageNet images at k=40 (ideal channel) DiffC-A scored 29.96, 29.51 and 29.36 dB with
    24, 64 and 128 steps - fewer steps sample less noise than the model's posterior holds. 64 is the
    compromise (DiffC-A decodes cost 64 network calls); pass ``recon_steps`` for more.

    ``prior_variance``: ``None`` (the streams written before it existed) codes each step against the model's
    prior ``N(mu_p, sigma^2 I)``; ``"count"`` against ``N(mu_p, s^2 sigma^2 I)`` with ``s^2 = 1 + tau^2``
    derived by both sides from the step's chunk count, which the stream already carries - no side
    information (:func:`.channel.prior_s2`). The samples still target the true posterior, so the ideal chain
    is unchanged while its KL drops from ``|d|^2 / 2`` to about ``(n / 2) ln(1 + |d|^2 / n)``: 1.7% of the
    ideal rate after 40 steps at 64x64 (``docs/benchmarks.md``).

    ``network_precision``: ``None`` (float32, the streams written before it existed) or ``"bfloat16"``: the
    network runs under bfloat16 autocast on both sides (:mod:`diffc_pipeline.models.precision`), 2.0-2.6x
    faster on CPUs with bfloat16 instructions for ~0.1% of ideal rate and ~1% BD-rate on real DiffC-F
    streams (Tiny ImageNet val; docs/benchmarks.md). ``"float32"`` is read as ``None``.
    """

    num_steps: int = 40
    logsnr_start: float = -5.0
    logsnr_end: float = 4.5
    chunk_bits: int = 12
    candidate_log2: int = 12
    target_gain: float = 1.2
    pool_width: int = 64
    pool_rows_log2: int | None = None
    flow_steps: int = 24
    ancestral_steps: int = 64
    spacing: str = "linear"
    prior_variance: str | None = None
    network_precision: str | None = None

    def __post_init__(self) -> None:
        if self.network_precision == "float32":  # the default spelled out: the same streams, the same id
            object.__setattr__(self, "network_precision", None)
        if self.network_precision not in NETWORK_PRECISIONS:
            raise InvalidInputError(
                f"unknown network_precision {self.network_precision!r}; choose float32 (default) or bfloat16"
            )
        if not 1 <= self.num_steps <= MAX_CHUNKS:
            raise InvalidInputError(f"num_steps must be in [1, {MAX_CHUNKS}], got {self.num_steps}")
        for name in RECONSTRUCTION_ONLY:  # a decode makes this many network calls: bounded like the coding steps
            if not 1 <= getattr(self, name) <= MAX_CHUNKS:
                raise InvalidInputError(f"{name} must be in [1, {MAX_CHUNKS}], got {getattr(self, name)}")
        for name in ("logsnr_start", "logsnr_end"):  # NaN and infinities fail here, not in every image's encode
            if not -LOGSNR_LIMIT <= getattr(self, name) <= LOGSNR_LIMIT:
                raise InvalidInputError(
                    f"{name} must be in [-{LOGSNR_LIMIT:g}, {LOGSNR_LIMIT:g}], got {getattr(self, name)}"
                )
        if not self.logsnr_end > self.logsnr_start:
            raise InvalidInputError("logsnr_end must be larger than logsnr_start (less noise at the end)")
        if not 1 <= self.pool_width <= MAX_POOL_WIDTH:
            raise InvalidInputError(f"pool_width must be in [1, {MAX_POOL_WIDTH}], got {self.pool_width}")
        if not 1 <= self.chunk_bits <= self.candidate_log2 <= 24:
            raise InvalidInputError("need 1 <= chunk_bits <= candidate_log2 <= 24")
        if self.pool_rows_log2 is not None and not 1 <= self.pool_rows_log2 <= self.candidate_log2:
            raise InvalidInputError("need 1 <= pool_rows_log2 <= candidate_log2")
        if not 1.0 <= self.target_gain <= 2.0:
            raise InvalidInputError(f"target_gain must be in [1, 2], got {self.target_gain}")
        if self.spacing not in ("linear",):
            raise InvalidInputError(f"unknown step spacing {self.spacing!r}")
        if self.prior_variance not in PRIOR_VARIANCES:
            raise InvalidInputError(
                f"unknown prior_variance {self.prior_variance!r}; choose 'count' (the prior's variance from the "
                "step's chunk count) or leave it unset (the model's variance)"
            )

    @property
    def row_shift(self) -> int:
        """log2 of candidates per pool row: 0 when every candidate owns a row."""
        return 0 if self.pool_rows_log2 is None else self.candidate_log2 - self.pool_rows_log2

    @property
    def pool_rows(self) -> int:
        """Rows of the shared candidate pool."""
        return 1 << (self.candidate_log2 - self.row_shift)

    def logsnrs(self) -> np.ndarray:
        """``num_steps + 1`` log-SNR values: ``[start, ..., end]``, increasing (noise decreasing)."""
        return np.linspace(self.logsnr_start, self.logsnr_end, self.num_steps + 1)

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> CodecConfig:
        if int(d.get("format_version", FORMAT_VERSION)) != FORMAT_VERSION:
            raise InvalidInputError(f"codec format version {d.get('format_version')} is not {FORMAT_VERSION}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def fingerprint(self) -> str:
        """Hash of what the stream depends on; the receiver's reconstruction step counts are left out, so
        changing them neither breaks old streams nor splits an archive, and so are fields left at ``None``
        (added later, ``None`` meaning what streams did before they existed)."""
        stream = {k: v for k, v in self.to_dict().items() if k not in RECONSTRUCTION_ONLY and v is not None}
        return hashlib.sha256(json.dumps(stream, sort_keys=True).encode()).hexdigest()
