"""DiffC: compress images by communicating a Gaussian diffusion chain, one reverse-channel-coded step at a time.

``compress`` runs the chain ``z_{t_0} -> z_{t_1} -> ... -> z_{t_K}`` against the model's prior and writes one
progressive chunk per step; ``decompress`` replays the chain from any prefix of chunks and reconstructs with
``flow`` (DiffC-F), ``ancestral`` (DiffC-A) or ``denoise``. It implements :class:`~..base.Codec` (arrays and
bytes in, arrays and bytes out: no files, no Ray) plus the :class:`~..base.SupportsSweep` capability that
evaluation uses (encode once, reconstruct every prefix; the ideal channel).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidInputError, ModelMismatchError, StreamError
from ...models.base import DiffusionModel
from ...models.precision import at_precision
from ..base import MAX_CHUNKS, Codec, DecodeOption, Encoded, check_seeds
from ..tensors import to_float, to_uint8
from . import prng
from .bitstream import STREAM_VERSION, EncodedImage, Header
from .channel import chunk_kl_bits, ideal_sample, prior_s2, rcc_decode, rcc_encode, step_layout, step_prior
from .config import CodecConfig
from .index_code import StepCode, StepReader, StepWriter, coded_settings, has_v1_tables, has_v2_tables
from .reconstruct import METHODS, denoise, reconstruct
from .steps import normalised_target, step_coefficients, step_mean_plus_noise
from .tables import TABLES_VERSION

CHANNELS = ("rcc", "ideal")


@dataclass
class SweepResult:
    """One encode, reconstructions at several prefixes: what rate-distortion evaluation needs."""

    streams: list[EncodedImage]
    recon: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # method -> prefix -> (B, H, W, 3)
    encode_s: float = 0.0
    decode_s: float = 0.0


class DiffcCodec(Codec):
    """The DiffC codec over one :class:`DiffusionModel` and one :class:`CodecConfig`.

    ``channel="ideal"`` samples each step exactly and writes no bits (evaluation only: its streams hold
    empty chunks and refuse to decode; :meth:`sweep` reconstructs from the encoder's samples).

    ``stream_version``: what :meth:`compress` writes - by default the newest version that has tables for the
    channel setting (version 2 for the default setting, whose tables ship; version 1 for the others).
    Decoding follows each stream's header, so one codec reads both. The version is not a stream option and
    not in the fingerprint: every stream names its own, and archives written before version 2 keep their
    fingerprint. Set it to 1 only to reproduce old streams (the benchmarks compare the two side by side).
    """

    name = "diffc"
    progressive = True
    decode_options = (
        DecodeOption(
            "method",
            str,
            "flow",
            "flow (DiffC-F, ODE), ancestral (DiffC-A) or denoise (posterior mean)",
            choices=METHODS,
        ),
        DecodeOption(
            "recon_steps",
            int,
            0,
            "ODE or sampler steps (0: the codec's flow_steps / ancestral_steps)",
            minimum=0,
            maximum=MAX_CHUNKS,
        ),
    )

    def __init__(
        self,
        model: DiffusionModel,
        config: CodecConfig | None = None,
        channel: str = "rcc",
        stream_version: int | None = None,
    ) -> None:
        if channel not in CHANNELS:
            raise InvalidInputError(f"unknown channel {channel!r}; choose one of {', '.join(CHANNELS)}")
        self.config = config or CodecConfig()
        self.model = at_precision(model, self.config.network_precision)
        self.channel = channel
        self._logsnrs = torch.from_numpy(self.config.logsnrs())
        setting = (self.config.chunk_bits, self.config.candidate_log2, self.config.target_gain)
        if channel == "rcc" and not has_v1_tables(*setting):  # refused before any image is read
            raise InvalidInputError(
                "no index table for chunk_bits={}, candidate_log2={}, target_gain={}: the channel cannot code this "
                "setting. Settings with tables (chunk_bits,candidate_log2,target_gain): {}; build one with "
                "`python -m diffc_pipeline.training.diffc_tables index {} {} {}`".format(
                    *setting, " ".join(coded_settings()), *setting
                )
            )
        supported = has_v2_tables(*setting)
        if stream_version is None:
            stream_version = STREAM_VERSION if supported else 1
        if stream_version not in (1, 2) or (stream_version == 2 and not supported):
            raise InvalidInputError(f"stream version {stream_version} cannot code this channel setting")
        self.stream_version = stream_version
        self._codes: dict[int, StepCode] = {}
        self._model_id = bytes.fromhex(model.identity.sha256[:6])
        self._config_id = bytes.fromhex(self.config.fingerprint()[:6])
        self._fingerprint = hashlib.sha256(
            f"{self.config.fingerprint()}|{model.identity.sha256}|tables{TABLES_VERSION}".encode()
        ).hexdigest()
        self.timings: dict[str, float] = {"network_s": 0.0, "channel_s": 0.0}  # of the last encode
        # per image, per step of the last encode when set to a list: count, KL, chunk KLs and the bits spent
        # (what `diffc bench rate-breakdown` reports); None: not recorded
        self.step_log: list[list[dict]] | None = None

    @classmethod
    def from_options(cls, options: CodecConfig, model: str | None, device: str = "cpu") -> DiffcCodec:
        """Load ``model`` (``builtin``, ``gaussian`` or a PATH) and wrap it: the registry's constructor."""
        from ...models import load_model

        return cls(load_model(model or "builtin", device=device), options)

    def ideal(self) -> DiffcCodec:
        """This codec over the ideal channel (exact samples, KL charged), on the same loaded model."""
        return DiffcCodec(self.model, self.config, channel="ideal")

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    @property
    def num_chunks(self) -> int:
        return self.config.num_steps

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict:
        identity = self.model.identity
        options = self.config.to_dict()
        options.pop("format_version")
        return {
            "name": self.name,
            "options": options,
            "model": {"name": identity.name, "sha256": identity.sha256},
            "fingerprint": self.fingerprint,
            "num_chunks": self.num_chunks,
            "progressive": True,
            "details": {"logsnrs": [float(v) for v in self.config.logsnrs()], "channel": self.channel},
        }

    @property
    def logsnr_final(self) -> float:
        """Where reconstruction ends: the model's least noisy level."""
        return float(-self.model.schedule.gamma_min)

    # ---- encoding ------------------------------------------------------------------------------------
    def compress(self, images: np.ndarray, seeds: Sequence[int]) -> list[EncodedImage]:
        """Compress a batch of ``uint8`` images ``(B, H, W, C)`` (one size per call), one seed per image."""
        return self.compress_float(to_float(images, self.model.channels), seeds)

    def compress_float(self, x: torch.Tensor, seeds: Sequence[int]) -> list[EncodedImage]:
        """Compress float images in the data scale ``[-1, 1]``."""
        return self._encode(x, seeds, capture=())[0]

    def code(self, version: int) -> StepCode:
        """The step code of stream ``version`` for this codec's configuration."""
        if version not in self._codes:
            self._codes[version] = StepCode.for_config(self.config, version)
        return self._codes[version]

    def _encode(
        self, x: torch.Tensor, seeds: Sequence[int], capture: Sequence[int]
    ) -> tuple[list[EncodedImage], dict[int, torch.Tensor]]:
        _check_batch(x, seeds, self.model.channels)
        code = self.code(self.stream_version)
        log = self.step_log = [[] for _ in seeds] if self.step_log is not None else None
        self.timings = {"network_s": 0.0, "channel_s": 0.0}
        b, _, h, w = x.shape
        xp = self._pad(x.float())
        z = self._start(seeds, xp.shape[1:])
        writers = [StepWriter() for _ in range(b)]
        ends: list[list[int]] = [[] for _ in range(b)]
        kl_bits: list[list[float]] = [[] for _ in range(b)]
        counts = [0] * b  # previous step's chunk count per image
        latents: dict[int, torch.Tensor] = {0: z.clone()} if 0 in capture else {}
        for k in range(1, self.num_steps + 1):
            lam_t = self._logsnrs[k - 1].expand(b)
            lam_s = self._logsnrs[k].expand(b)
            t_net = time.perf_counter()
            x_hat = denoise(self.model, z, lam_t)
            t_rcc = time.perf_counter()
            self.timings["network_s"] += t_rcc - t_net
            c = step_coefficients(lam_t, lam_s)
            d = normalised_target(c, xp, x_hat).numpy()
            u = np.empty_like(d)
            for i, seed in enumerate(seeds):
                kl_bits[i].append(step_prior(d[i], self.config)[2])  # against the prior in use
                if self.channel == "ideal":
                    u[i] = ideal_sample(d[i], seed, k).reshape(d[i].shape)
                    continue
                count, indices, _ = rcc_encode(d[i], seed, k, self.config, code.version, out=u[i].reshape(-1))
                bits = writers[i].write_step(count, counts[i], indices, code)
                counts[i] = count
                ends[i].append((writers[i].bit_length() + 7) // 8)
                if log is not None:
                    layout = step_layout(d[i].size, count, seed, k, self.config)
                    s2 = prior_s2(count, d[i].size, self.config)
                    log[i].append(
                        {"count": count, "kl_bits": kl_bits[i][-1], "count_bits": bits[0], "index_bits": bits[1],
                         "chunk_kl_bits": chunk_kl_bits(d[i].ravel(), layout, s2), "indices": indices,
                         "end_bits": writers[i].bit_length()}
                    )  # fmt: skip
            z = step_mean_plus_noise(c, z, x_hat, torch.from_numpy(u))
            # dropped before the next network call, not when rebound after it: at 12 MP these three are
            # 0.43 GB that the call's own working set would otherwise stand on
            del x_hat, d, u
            self.timings["channel_s"] += time.perf_counter() - t_rcc
            if k in capture:
                latents[k] = z.clone()
        streams = []
        for i, seed in enumerate(seeds):
            header = Header(
                h, w, int(seed), self._model_id, self._config_id, self.channel == "ideal", code.version
            ).pack()
            if self.channel == "ideal":
                chunks = [b""] * self.num_steps
            else:
                data = writers[i].to_bytes()
                bounds = [0, *ends[i]]
                chunks = [data[lo:hi] for lo, hi in itertools.pairwise(bounds)]
            streams.append(EncodedImage(header=header, chunks=chunks, estimated_bits=kl_bits[i]))
        return streams, latents

    # ---- decoding ------------------------------------------------------------------------------------
    def decompress(
        self, items: Sequence[Encoded], prefix: int | Sequence[int] | None = None, **options: Any
    ) -> np.ndarray:
        """Decode each stream from its first ``prefix`` chunks (all present by default) to ``uint8``
        ``(B, H, W, C)`` images. Decode options: ``method`` (flow, ancestral, denoise) and ``recon_steps``
        (ODE or sampler steps; 0: the configuration's ``flow_steps`` / ``ancestral_steps``).
        """
        return to_uint8(self.decompress_float(items, prefix, **options))

    def decompress_float(
        self, items: Sequence[Encoded], prefix: int | Sequence[int] | None = None, **options: Any
    ) -> torch.Tensor:
        """Like :meth:`decompress`, in the data scale: floats ``(B, C, H, W)``, unquantised."""
        opts = self.parse_decode_options(options)
        method, recon_steps = opts["method"], opts["recon_steps"]
        streams = [
            s if isinstance(s, EncodedImage) else EncodedImage(header=s.header, chunks=list(s.chunks)) for s in items
        ]
        counts = self._prefix_lengths(streams, prefix)
        z = self._decode_latents(streams, counts, capture=())[0]
        lam = self._logsnrs[torch.tensor(counts)]
        x = reconstruct(
            self.model,
            z,
            lam,
            method,
            self._recon_steps(method, recon_steps),
            [s.seed for s in streams],
            self.logsnr_final,
        )
        return x[:, :, : streams[0].height, : streams[0].width]

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        _, padded_h, padded_w = self._padded_shape(height, width)
        return padded_h, padded_w

    def stream_size(self, item: Encoded) -> tuple[int, int]:
        """The size in the stream's header (checked: length, CRC, magic, version); nothing else is read."""
        header = Header.unpack(bytes(item.header or b""))
        return header.height, header.width

    def image_header_bits(self, item: Encoded) -> int:
        """The shape as the stream's header codes it (``Header.shape_bits``: a varint in version 2, one byte
        at 64x64; 32 bits in version 1); see :meth:`Codec.image_header_bits`."""
        return Header.unpack(bytes(item.header or b"")).shape_bits

    def _prefix_lengths(self, streams: Sequence[EncodedImage], prefix: int | Sequence[int] | None) -> list[int]:
        if not streams:
            raise InvalidInputError("no streams to decode")
        first = streams[0].parsed
        for s in streams:
            p = s.parsed
            if p.ideal:
                raise StreamError("an ideal-channel stream carries no bits and cannot be decoded")
            if p.model_id != self._model_id:
                raise ModelMismatchError(
                    f"stream was made with model id {p.model_id.hex()}, this codec's model "
                    f"{self.model.identity.short} has id {self._model_id.hex()}"
                )
            if p.config_id != self._config_id:
                raise ModelMismatchError(
                    f"stream was made with codec configuration {p.config_id.hex()}, this codec uses "
                    f"{self._config_id.hex()} (steps, schedule or channel parameters differ)"
                )
            if (p.height, p.width) != (first.height, first.width):
                raise InvalidInputError("all streams decoded in one call must have the same image size")
        return self.check_prefix(streams, prefix)

    def _decode_latents(
        self, streams: Sequence[EncodedImage], counts: list[int], capture: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        shape = self._padded_shape(streams[0].height, streams[0].width)
        seeds = [s.seed for s in streams]
        z = self._start(seeds, shape)
        readers = [StepReader(b"".join(s.chunks[:k])) for s, k in zip(streams, counts, strict=True)]
        previous = [0] * len(streams)
        latents: dict[int, torch.Tensor] = {0: z.clone()} if 0 in capture else {}
        for k in range(1, max(counts, default=0) + 1):
            active = [i for i, n in enumerate(counts) if n >= k]
            idx = torch.tensor(active)
            lam_t = self._logsnrs[k - 1].expand(len(active))
            lam_s = self._logsnrs[k].expand(len(active))
            x_hat = denoise(self.model, z[idx], lam_t)
            c = step_coefficients(lam_t, lam_s)
            u = np.empty((len(active), *shape), dtype=np.float32)
            for j, i in enumerate(active):
                count, indices = readers[i].read_step(previous[i], self.code(streams[i].version))
                previous[i] = count
                readers[i].check_within(f"step {k}")
                u[j] = rcc_decode(count, indices, u[j].size, seeds[i], k, self.config).reshape(shape)
            z[idx] = step_mean_plus_noise(c, z[idx], x_hat, torch.from_numpy(u))
            if k in capture:
                latents[k] = z.clone()
        return z, latents

    # ---- evaluation ----------------------------------------------------------------------------------
    def sweep(
        self,
        images: np.ndarray,
        seeds: Sequence[int],
        prefixes: Sequence[int],
        methods: Sequence[str] = METHODS,
        recon_steps: int = 0,
    ) -> SweepResult:
        """Encode once, then reconstruct from each prefix with each method.

        With the real channel the latents come from an actual decode of the streams (so the bitstream is
        exercised); with the ideal channel from the encoder's exact samples.
        """
        x = to_float(images, self.model.channels)
        prefixes = sorted({int(k) for k in prefixes})
        t0 = time.perf_counter()
        streams, latents = self._encode(x, seeds, capture=prefixes if self.channel == "ideal" else ())
        t1 = time.perf_counter()
        if self.channel == "rcc":
            counts = [max(prefixes)] * len(streams)
            self._prefix_lengths(streams, counts)
            _, latents = self._decode_latents(streams, counts, capture=prefixes)
        result = SweepResult(streams=streams, encode_s=t1 - t0)
        for method in methods:
            result.recon[method] = {}
            for k in prefixes:
                lam = self._logsnrs[k].expand(len(streams))
                xr = reconstruct(
                    self.model,
                    latents[k],
                    lam,
                    method,
                    self._recon_steps(method, recon_steps),
                    list(seeds),
                    self.logsnr_final,
                )
                result.recon[method][k] = to_uint8(xr[:, :, : x.shape[2], : x.shape[3]])
        result.decode_s = time.perf_counter() - t1
        return result

    # ---- helpers ---------------------------------------------------------------------------------------
    def _recon_steps(self, method: str, override: int) -> int:
        if override:
            return override
        return self.config.ancestral_steps if method == "ancestral" else self.config.flow_steps

    def _padded_shape(self, h: int, w: int) -> tuple[int, int, int]:
        m = self.model.pad_multiple
        return (self.model.channels, -(-h // m) * m, -(-w // m) * m)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        _, hp, wp = self._padded_shape(x.shape[2], x.shape[3])
        if (hp, wp) == x.shape[2:]:
            return x
        return F.pad(x, (0, wp - x.shape[3], 0, hp - x.shape[2]), mode="replicate")

    def _start(self, seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
        """``z_{t_0}`` from the seed alone: costs no bits."""
        return torch.from_numpy(np.stack([prng.normals(int(s), 0, prng.START, tuple(shape)) for s in seeds]))


def _check_batch(x: torch.Tensor, seeds: Sequence[int], channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InvalidInputError(
            f"expected a (B, C, H, W) tensor, got {type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}"
        )
    if x.shape[1] != channels:
        raise InvalidInputError(f"expected {channels} channels, got {x.shape[1]}")
    check_seeds(seeds, x.shape[0])
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise InvalidInputError(f"empty batch or image: shape {tuple(x.shape)}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise InvalidInputError("images contain NaN or infinite values")
