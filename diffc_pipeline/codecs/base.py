"""The codec contract: what the pipeline, decode, inspect, eval and bench know of any codec.

Modelled on CompressAI's ``compress() -> strings + shape`` / ``decompress()``: a codec turns a batch of
``uint8`` images (one size per call) and one seed per image into, per image, a small header plus a list of
byte chunks, and turns (header, a prefix of the chunks) back into ``uint8`` images. It knows nothing of
Ray, files or storage. A *progressive* codec decodes any prefix of its chunks; the others need them all.

Options come in two kinds: *codec options* change the stream (they are part of the fingerprint and the
archive manifest; ``--codec-opt KEY=VALUE``) and *decode options* change only the reconstruction
(``diffc decode --method flow``...). Both are validated by the codec, so a typo names the valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidInputError, StreamError

# The most chunks per image any codec may write, and a manifest may claim: each chunk is two Parquet columns of
# every shard and (DiffC) one network evaluation per image, so an archive from elsewhere that claims more is
# refused before anything is built or read for it.
MAX_CHUNKS = 4096


def check_seeds(seeds: Sequence[int], count: int) -> list[int]:
    """The seeds as Python ints, one per image, each an unsigned 64-bit integer: one check for every codec, so
    a float or a string is refused by name (it truncated silently in one codec and failed deep in another)."""
    if len(seeds) != count:
        raise InvalidInputError(f"{count} images but {len(seeds)} seeds")
    out = []
    for s in seeds:
        if not isinstance(s, int | np.integer) or isinstance(s, bool) or not 0 <= int(s) < 1 << 64:
            raise InvalidInputError(f"seed {s!r} is not an unsigned 64-bit integer")
        out.append(int(s))
    return out


@dataclass
class Encoded:
    """One compressed image: ``header`` (size, seed, what decodes it) + ``chunks`` (progressive or one).

    ``estimated_bits``: the model's own rate estimate per chunk (-log2 of the likelihoods, or the KL of a
    DiffC step), not serialised; evaluation compares it with the real bytes.
    """

    header: bytes
    chunks: list[bytes]
    estimated_bits: list[float] = dataclasses.field(default_factory=list)

    def prefix_bits(self, k: int | None = None) -> int:
        """Bits of the header plus the first ``k`` chunks (all by default)."""
        return prefix_bits(self.header, self.chunks, k)


def prefix_bits(header: bytes, chunks: Sequence[bytes | None], k: int | None = None) -> int:
    """The one definition of what a prefix costs: 8 x (header bytes + bytes of chunks ``1..k``)."""
    chosen = chunks if k is None else chunks[:k]
    return 8 * (len(header or b"") + sum(len(c or b"") for c in chosen))


def cumulative_bits(header: bytes, chunks: Sequence[bytes]) -> list[int]:
    """``prefix_bits(header, chunks, k)`` for ``k = 1 .. len(chunks)``: what an archive row's index holds."""
    total, out = 8 * len(header), []
    for c in chunks:
        total += 8 * len(c)
        out.append(total)
    return out


@dataclass(frozen=True)
class DecodeOption:
    """One decode option: its type, default and (where finite) allowed values."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None  # what bounds a decode's work (network calls) on an archive from elsewhere

    def parse(self, value: Any) -> Any:
        try:
            v = _coerce(value, self.type)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"decode option {self.name}={value!r} is not a valid {self.type.__name__}"
            ) from None
        if self.choices is not None and v not in self.choices:
            raise InvalidInputError(
                f"decode option {self.name}={v!r} is not one of {', '.join(map(str, self.choices))}"
            )
        if isinstance(v, float) and not math.isfinite(v):  # NaN passes every comparison below
            raise InvalidInputError(f"decode option {self.name}={v!r} must be a finite number")
        if self.minimum is not None and v < self.minimum:
            raise InvalidInputError(f"decode option {self.name}={v!r} must be >= {self.minimum}")
        if self.maximum is not None and v > self.maximum:
            raise InvalidInputError(f"decode option {self.name}={v!r} must be <= {self.maximum}")
        return v


class Codec(ABC):
    """An image codec behind the contract above. Subclasses set the class attributes and implement the
    abstract methods; the pipeline never looks further."""

    name: ClassVar[str]
    progressive: ClassVar[bool]  # any prefix of chunks decodes
    decode_options: ClassVar[tuple[DecodeOption, ...]] = ()

    @classmethod
    @abstractmethod
    def from_options(cls, options: Any, model: str | None, device: str = "cpu") -> Codec:
        """Build the codec from its options dataclass and model spec (what the registry calls)."""

    @property
    @abstractmethod
    def num_chunks(self) -> int:
        """Chunks per image (the longest prefix)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 hex of everything the stream depends on (options, model weights, tables)."""

    @abstractmethod
    def describe(self) -> dict:
        """What an archive manifest records: ``name``, ``options`` (stream-relevant, JSON), ``model``
        (``{"name", "sha256"}`` or ``None``), ``fingerprint``, ``num_chunks``, ``progressive``, and any
        codec-specific facts a reader may want (e.g. DiffC's log-SNR schedule) under ``details``."""

    @abstractmethod
    def compress(self, images: np.ndarray, seeds: Sequence[int]) -> list[Encoded]:
        """``images``: ``(B, H, W, 3)`` uint8, one size per call; one seed per image (64-bit unsigned)."""

    @abstractmethod
    def decompress(
        self, items: Sequence[Encoded], prefix: int | Sequence[int] | None = None, **options: Any
    ) -> np.ndarray:
        """Decode ``items`` (one image size per call) from their first ``prefix`` chunks (per item or one
        for all; ``None``: every chunk) to ``(B, H, W, 3)`` uint8. ``options`` are decode options."""

    @abstractmethod
    def stream_size(self, item: Encoded) -> tuple[int, int]:
        """``(height, width)`` that ``item``'s stream claims, read from its header (or, where the header is
        empty, from the first chunk's own file header) without decoding anything.

        A decoder of archives from elsewhere checks this against the archive row and a pixel limit before it
        spends any work on the stream (the stream's CRCs catch accidents, not edits). Raises
        :class:`~diffc_pipeline.errors.StreamError` when the header does not parse.
        """

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` the codec works at for an image of this size (its padding to a network's
        multiple). Pixel limits and per-call pixel budgets count this area: a 1x16000 image padded to 64 rows
        costs a codec 64 times its pixels in time and memory. The default: no padding."""
        return height, width

    def work_pixels(self, height: int, width: int) -> int:
        """Pixels of :meth:`padded_size`: what ``--max-pixels`` and ``--batch-pixels`` count."""
        padded_h, padded_w = self.padded_size(height, width)
        return padded_h * padded_w

    def image_header_bits(self, item: Encoded) -> int:
        """Bits of ``item``'s header that are this image's own information, not dataset-wide metadata.

        Rate-distortion figures (``diffc eval``) charge an image these bits plus its chunks' bytes, the
        project's definition of a rate: "everything needed to decode the image except dataset-wide metadata".
        What an archive's manifest holds or derives for every image (magic, version, model and configuration
        ids, options, the seed - derived from the run seed and the image id - and integrity checks) is not
        charged; the whole header's size is reported beside the rate. The default charges the whole header,
        which is right for codecs that write none (the classical ones: their file, headers and all, is the
        chunk); the diffusion codecs charge the shape their header codes.
        """
        return 8 * len(item.header or b"")

    def charged_bits(self, item: Encoded, k: int | None = None) -> int:
        """What a rate-distortion figure charges ``item`` for its first ``k`` chunks (all by default): the
        header's own bits (:meth:`image_header_bits`) plus the chunks' bytes. Every curve of ``diffc eval``
        and the benchmarks counts through here, so all codecs are charged alike."""
        return self.image_header_bits(item) + prefix_bits(b"", item.chunks, k)

    # ---- shared helpers ------------------------------------------------------------------------------
    @classmethod
    def parse_decode_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and type ``options`` (strings from the CLI are accepted); fill in defaults."""
        known = {o.name: o for o in cls.decode_options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise InvalidInputError(
                f"codec {cls.name!r} has no decode option {', '.join(unknown)}; valid decode options: {valid}"
            )
        return {k: (o.parse(options[k]) if k in options else o.default) for k, o in known.items()}

    def check_prefix(self, items: Sequence[Encoded], prefix: int | Sequence[int] | None) -> list[int]:
        """Per-item prefix lengths, validated against the items and :attr:`progressive`."""
        if prefix is None:
            counts = [len(it.chunks) for it in items]
        elif isinstance(prefix, int | np.integer):
            counts = [int(prefix)] * len(items)
        else:
            counts = [int(k) for k in prefix]
        if len(counts) != len(items):
            raise InvalidInputError(f"{len(counts)} prefix lengths for {len(items)} streams")
        for it, k in zip(items, counts, strict=True):
            if not 0 <= k <= len(it.chunks) or k > self.num_chunks:
                raise StreamError(
                    f"cannot decode {k} chunks from a stream holding {len(it.chunks)} "
                    f"(codec {self.name!r} writes {self.num_chunks})"
                )
            if not self.progressive and k != self.num_chunks:
                raise InvalidInputError(f"codec {self.name!r} is not progressive: it decodes all its chunks only")
        return counts


@runtime_checkable
class SupportsSweep(Protocol):
    """Optional capability for evaluation: encode once, reconstruct at several prefixes and decode
    options in one go, and an ideal (bits-free) channel. DiffC has it; eval asks ``isinstance``."""

    def sweep(self, images: np.ndarray, seeds: Sequence[int], prefixes: Sequence[int], **options: Any) -> Any: ...

    def ideal(self) -> SupportsSweep:
        """The same codec and model over a bits-free ideal channel that charges the information it sends (the
        rate the paper reports): eval's reference curve, sharing the loaded model."""
        ...


# ---- typed codec options ------------------------------------------------------------------------------
def options_from_strings(config_cls: type, options: Mapping[str, Any], what: str) -> Any:
    """Build the frozen dataclass ``config_cls`` from ``options`` (values may be strings from the CLI).

    An unknown key is refused with the list of valid ones; a value that does not parse names the key and
    the expected type. ``what`` names the codec in messages.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise InvalidInputError(
            f"codec {what!r} has no option {', '.join(unknown)}; valid options: {', '.join(fields) or 'none'}"
        )
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for key, value in options.items():
        try:
            kwargs[key] = _coerce(value, hints[key])
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"codec option {key}={value!r} of {what!r} is not a valid {_type_name(hints[key])}"
            ) from None
    return config_cls(**kwargs)


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` (often a CLI string) as type ``tp``: bool, int, float, str or ``X | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(value)
    if tp is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if isinstance(value, bool):
            raise TypeError(value)
        return int(value)
    if tp is float:
        return float(value)
    if tp is str:
        return str(value)
    raise TypeError(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))
