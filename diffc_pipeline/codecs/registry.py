"""The codec registry: a name -> how to build that codec, as ``compressai.zoo`` maps names to models.

Entries name their codec class and their options class by import path, so that listing codecs, parsing
``--codec-opt`` and ``diffc --help`` import neither torch nor any codec's machinery (an options class must
import no torch). Adding a codec is one package (or module) plus one entry in :data:`CODECS`.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError
from .base import Codec, options_from_strings


@dataclass(frozen=True)
class CodecEntry:
    """How to build one codec: ``codec`` is its :class:`~.base.Codec` subclass (built with
    ``from_options(options, model, device)``), ``options`` its frozen dataclass of stream options,
    ``default_model`` the model spec used when none is given (``None``: the codec takes no model)."""

    name: str
    codec: str  # "module:Class"
    options: str  # "module:Class"
    default_model: str | None
    summary: str

    def codec_class(self) -> type[Codec]:
        return _load(self.codec)

    def options_class(self) -> type:
        return _load(self.options)


_CLASSICAL = "diffc_pipeline.codecs.classical"
CODECS: dict[str, CodecEntry] = {
    e.name: e
    for e in (
        CodecEntry(
            "diffc",
            "diffc_pipeline.codecs.diffc.codec:DiffcCodec",
            "diffc_pipeline.codecs.diffc.config:CodecConfig",
            "builtin",
            "DiffC: progressive reverse-channel coding of a Gaussian diffusion (Theis et al. 2022)",
        ),
        CodecEntry(
            "cdc",
            "diffc_pipeline.codecs.cdc.codec:CdcCodec",
            "diffc_pipeline.codecs.cdc.config:CdcOptions",
            "builtin",
            "CDC: transform coding with a conditional diffusion decoder (Yang & Mandt 2023), progressive slices",
        ),
        CodecEntry("jpeg", f"{_CLASSICAL}:JpegCodec", f"{_CLASSICAL}:JpegOptions", None, "JPEG (Pillow), 4:2:0"),
        CodecEntry("webp", f"{_CLASSICAL}:WebpCodec", f"{_CLASSICAL}:WebpOptions", None, "WebP (Pillow), lossy"),
        CodecEntry("avif", f"{_CLASSICAL}:AvifCodec", f"{_CLASSICAL}:AvifOptions", None, "AVIF (Pillow, libavif)"),
        CodecEntry(
            "jxl", f"{_CLASSICAL}:JxlCodec", f"{_CLASSICAL}:JxlOptions", None, "JPEG XL (optional: the [jxl] extra)"
        ),
    )
}


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def entry(name: str) -> CodecEntry:
    try:
        return CODECS[name]
    except KeyError:
        raise InvalidInputError(f"unknown codec {name!r}; available: {', '.join(CODECS)}") from None


@dataclass(frozen=True)
class CodecSpec:
    """One resolved codec: its name, typed stream options (JSON-able) and model spec. This is what the
    pipeline carries from the driver to its actors, and what builds the codec there."""

    name: str
    options: dict = field(default_factory=dict)
    model: str | None = None

    def build(self, device: str = "cpu") -> Codec:
        e = entry(self.name)
        config = options_from_strings(e.options_class(), self.options, self.name)
        return e.codec_class().from_options(config, self.model, device)

    def to_dict(self) -> dict:
        return {"name": self.name, "options": self.options, "model": self.model}


def resolve(name: str = "diffc", options: Mapping[str, Any] | None = None, model: str | None = None) -> CodecSpec:
    """Validate ``options`` (CLI strings accepted) against the codec's options class and fill in its
    default model; a model given to a codec that takes none is refused."""
    e = entry(name)
    config = options_from_strings(e.options_class(), dict(options or {}), name)
    if e.default_model is None and model is not None:
        raise InvalidInputError(f"codec {name!r} takes no model (got --model {model!r})")
    given = {k: _jsonable(getattr(config, k)) for k in (options or {})}
    return CodecSpec(name, given, model if model is not None else e.default_model)


def _jsonable(v: Any) -> Any:
    json.dumps(v)
    return v
