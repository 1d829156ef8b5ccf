"""Any registry codec in an evaluation: a grid of stream options, each stream decoded with every combination
of decode options and (for a progressive codec) at every prefix.

This is how a learned codec without DiffC's sweep capability (CDC: ``--codec cdc --codec-grid rate=0,1,2,3
--decode-opt method=mean,diffusion``) gets curves beside DiffC and the anchors, through nothing but the codec
contract: ``compress`` once per grid point, ``decompress`` per decode combination and prefix.

Rates are the real bits of what one image needs besides dataset-wide metadata, as DiffC's are charged: the
first ``k`` chunks plus :meth:`~diffc_pipeline.codecs.Codec.image_header_bits` (the shape CDC's header codes;
a classical codec's whole file). The whole stream header's size is recorded beside them
(``stream_header_bytes``), and where the codec reports its own estimate (``Encoded.estimated_bits``), that too.

Curves (variants): ``NAME[-DECODE]`` holds the whole streams, one point per grid point - the codec's RD curve,
the one BD-rates are taken on; for a progressive codec ``NAME[-DECODE]@POINT`` holds the prefixes of one grid
point's streams, one point per prefix length (its last point, the whole stream, is recorded in both).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codecs import Codec, CodecSpec, resolve
from ..codecs.registry import entry
from ..errors import DiffcError
from ..pipeline.archive import row_checksum
from ..seeds import image_seed
from .data import EvalImage
from .perceptual import PerceptualMetrics
from .runner import Progress, Showcase, batches_by_size, quality_record


@dataclass(frozen=True)
class CodecGrid:
    """A registry codec, the stream options to sweep (``KEY -> values``; one value: fixed), the decode options
    to sweep likewise, its model spec, and which prefixes to decode (``all``, ``full`` or ``1,2,4``)."""

    name: str
    options: Mapping[str, Sequence[str]] = field(default_factory=dict)
    decode: Mapping[str, Sequence[str]] = field(default_factory=dict)
    model: str | None = None
    prefixes: str = "all"

    def specs(self) -> list[CodecSpec]:
        """One resolved spec per grid point (the product of the option values); a bad key or value fails."""
        keys = list(self.options)
        return [resolve(self.name, dict(zip(keys, v, strict=True)), self.model) for v in _product(self.options)]

    def decode_combinations(self) -> list[dict[str, Any]]:
        """Every combination of the decode options, typed and filled in by the codec's own parser."""
        codec_class = entry(self.name).codec_class()
        keys = list(self.decode)
        return [codec_class.parse_decode_options(dict(zip(keys, v, strict=True))) for v in _product(self.decode)]

    def label(self, spec: CodecSpec) -> str:
        """A grid point's name in curves and file names: the swept and fixed options given, or ``default``."""
        return ",".join(f"{k}={spec.options[k]}" for k in self.options) or "default"

    def variant(self, decode: Mapping[str, Any]) -> str:
        """The curve name of one decode combination: the codec name plus the decode options given (string
        values bare, e.g. ``cdc-mean``; others as ``key=value``)."""
        parts = [str(decode[k]) if isinstance(decode[k], str) else f"{k}={decode[k]}" for k in self.decode]
        return "-".join([self.name, *parts])

    def prefix_lengths(self, codec: Codec) -> list[int]:
        """The prefixes to decode for ``codec``: always including the whole stream, which the main curve needs."""
        n = codec.num_chunks
        if self.prefixes == "full" or (self.prefixes == "all" and not codec.progressive):
            return [n]
        if self.prefixes == "all":
            return list(range(1, n + 1))
        if not codec.progressive:
            raise DiffcError(f"codec {self.name!r} is not progressive: --codec-prefixes must be 'all' or 'full'")
        try:
            chosen = {int(v) for v in self.prefixes.split(",") if v.strip()}
        except ValueError:
            raise DiffcError(
                f"--codec-prefixes must be 'all', 'full' or comma-separated integers, got {self.prefixes!r}"
            ) from None
        if not chosen or min(chosen) < 1 or max(chosen) > n:
            raise DiffcError(f"--codec-prefixes must lie in 1..{n} (codec {self.name!r} writes {n} chunks)")
        return sorted(chosen | {n})

    def describe(self, built: Sequence[tuple[CodecSpec, Codec]]) -> dict:
        """What results.json records: the grid as given, and each point's spec and codec description."""
        return {
            "name": self.name,
            "grid": {k: list(v) for k, v in self.options.items()},
            "decode_options": {k: list(v) for k, v in self.decode.items()},
            "prefixes": self.prefixes,
            "points": [
                {"label": self.label(spec), "spec": spec.to_dict(), "codec": codec.describe()} for spec, codec in built
            ],
        }


def _product(values: Mapping[str, Sequence[str]]) -> list[tuple]:
    return list(itertools.product(*values.values()))


def run_grid(
    images: Sequence[EvalImage],
    grid: CodecGrid,
    built: Sequence[tuple[CodecSpec, Codec]],
    seed: int,
    batch_size: int,
    showcase: Showcase | None,
    advance: Progress,
    perceptual: PerceptualMetrics | None = None,
) -> list[dict]:
    """Encode each batch at each grid point once, decode it with every decode combination at every prefix.

    Times: ``encode_s`` is the batch's encode time per image, ``decode_s`` one decode call's time per image.
    """
    combinations = grid.decode_combinations()
    records: list[dict] = []
    for batch in batches_by_size(images, batch_size):
        x = np.stack([im.pixels for im in batch])
        seeds = [image_seed(seed, im.id) for im in batch]
        n = len(batch)
        for spec, codec in built:
            label = grid.label(spec)
            prefixes = grid.prefix_lengths(codec)
            t0 = time.perf_counter()
            items = codec.compress(x, seeds)
            encode_s = (time.perf_counter() - t0) / n
            for decode in combinations:
                base = grid.variant(decode)
                for k in prefixes:
                    t1 = time.perf_counter()
                    recon = codec.decompress(items, k, **decode)
                    decode_s = (time.perf_counter() - t1) / n
                    for i, image in enumerate(batch):
                        item = items[i]
                        pixels = image.pixels.shape[0] * image.pixels.shape[1]
                        header_bits = codec.image_header_bits(item)
                        bits = codec.charged_bits(item, k)
                        estimate = item.estimated_bits
                        rec = {
                            **quality_record(image, recon[i], perceptual),
                            "codec": grid.name,
                            "options": spec.options,
                            "decode_options": decode,
                            "chunks": k,
                            "num_chunks": len(item.chunks),
                            "bits": bits,
                            "bytes": bits // 8,
                            "header_bytes": header_bits // 8,
                            "stream_header_bytes": len(item.header),
                            "bpp": bits / pixels,
                            "estimated_bits": float(sum(estimate[:k])) if len(estimate) >= k else None,
                            "stream_sha256": row_checksum(item.header, item.chunks),
                            "encode_s": encode_s,
                            "decode_s": decode_s,
                        }
                        variants = []
                        if k == len(item.chunks):
                            variants.append({"variant": base, "family": "codec", "setting": label})
                        if len(prefixes) > 1:
                            prefix = {"variant": f"{base}@{label}", "family": "codec-prefix", "setting": k}
                            variants.append(prefix)
                        for v in variants:
                            records.append({**rec, **v})
                            if showcase is not None:
                                showcase.add(records[-1], recon[i])
            advance(n)
    return records
