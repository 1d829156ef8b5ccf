"""The evaluation loops: every image through every anchor quality and every DiffC prefix, one record each
(the loop of any other registry codec is :mod:`.grid`).

In-process on purpose: the per-image work is small (64x64) and a Ray start-up costs more than a 50-image run
on this kind of machine; the DiffC part batches images of one size per codec call, which is where the time
goes (:mod:`.on_ray` spreads the same loop over actors when asked).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..codecs import Codec, Encoded, SupportsSweep
from ..errors import InvalidInputError
from ..pipeline.archive import row_checksum
from ..seeds import image_seed
from .classical import Anchor
from .data import EvalImage
from .metrics import detail_ratio, ms_ssim, ms_ssim_scales, psnr
from .perceptual import PerceptualMetrics

# What one image needs besides its chunks, as the issue's rate asks ("everything needed to decode the image
# except dataset-wide metadata"): its shape, as its stream header codes it (stream version 1: u16 height and
# width, 4 bytes; version 2: a varint shape, 1 byte at 64x64; ``Header.shape_bits``). The seed is derived
# from the run seed and the image id (:func:`~diffc_pipeline.seeds.image_seed`, as archives derive it from
# theirs), and the model id, codec configuration, magic, version and CRC of DiffC's standalone stream header
# are the same for every image, so they are dataset-wide; the whole header's cost is reported apart as
# ``stream_header_bytes``. Every codec in eval is charged this way (``Codec.image_header_bits``; :mod:`.grid`).
# DiffC's channels in eval: ``rcc`` is the registry's codec (the real bitstream), ``ideal`` its bits-free twin
CHANNELS = ("rcc", "ideal")


@dataclass
class Showcase:
    """Reconstructions of one image at every setting, for the side-by-side HTML page."""

    image: EvalImage
    recon: dict[str, list[tuple[dict, np.ndarray]]] = field(default_factory=dict)  # variant -> [(record, pixels)]

    def add(self, record: dict, pixels: np.ndarray) -> None:
        if record["image"] == self.image.id:
            self.recon.setdefault(record["variant"], []).append((record, pixels))


@dataclass
class EvalOutput:
    records: list[dict]
    lowest_rates: list[dict]  # per image and anchor: the smallest file at any quality
    showcase: Showcase | None
    diffc_images: list[str] | None = None  # ids DiffC ran on, when only a subset of the other codecs' images
    reference_features: dict[str, np.ndarray] | None = None  # FID features of the originals, by image id


Progress = Callable[[int], None]


def quality_record(image: EvalImage, recon: np.ndarray, perceptual: PerceptualMetrics | None = None) -> dict:
    """Quality fields shared by all records (plus LPIPS and FID features when the user gave networks)."""
    h, w, _ = image.pixels.shape
    return {
        "image": image.id,
        "height": h,
        "width": w,
        "psnr": psnr(image.pixels, recon),
        "ms_ssim": ms_ssim(image.pixels, recon),
        "ms_ssim_scales": ms_ssim_scales(h, w),
        "detail": detail_ratio(image.pixels, recon),
        **(perceptual.record_fields(image.pixels, recon) if perceptual else {}),
    }


def run_classical(
    images: Sequence[EvalImage],
    anchors: Sequence[Anchor],
    seed: int,
    showcase: Showcase | None,
    advance: Progress,
    perceptual: PerceptualMetrics | None = None,
) -> tuple[list[dict], list[dict]]:
    """Sweep each anchor's quality grid on each image; also search each anchor's lowest rate per image.

    Each point is the registry codec's ``compress``/``decompress``; its rate is the stream's real bits (the
    whole file: these codecs write no separate header)."""
    records: list[dict] = []
    lowest: list[dict] = []
    for image in images:
        pixels = image.pixels.shape[0] * image.pixels.shape[1]
        seeds = [image_seed(seed, image.id)]
        for anchor in anchors:
            for q in anchor.qualities:
                codec = anchor.codecs[q]
                t0 = time.perf_counter()
                (item,) = codec.compress(image.pixels[None], seeds)
                t1 = time.perf_counter()
                recon = codec.decompress([item])[0]
                t2 = time.perf_counter()
                bits = item.prefix_bits()
                rec = {
                    **quality_record(image, recon, perceptual),
                    "variant": anchor.name,
                    "family": "classical",
                    "quality": q,
                    "bytes": bits // 8,
                    "bpp": bits / pixels,
                    "encode_s": t1 - t0,
                    "decode_s": t2 - t1,
                }
                records.append(rec)
                if showcase is not None:
                    showcase.add(rec, recon)
            size, q = anchor.lowest_rate(image.pixels)
            lowest.append(
                {"image": image.id, "variant": anchor.name, "bytes": size, "quality": q, "bpp": 8 * size / pixels}
            )
            advance(1)
    return records, lowest


def default_prefixes(num_steps: int, count: int = 8) -> list[int]:
    """About ``count`` geometrically spaced prefix lengths in ``[1, num_steps]``, both ends included."""
    if num_steps <= count:
        return list(range(1, num_steps + 1))
    return sorted({round(v) for v in np.geomspace(1, num_steps, count)} | {1, num_steps})


def batches_by_size(images: Sequence[EvalImage], batch_size: int) -> list[list[EvalImage]]:
    """Batches of equal-size images (the codec takes one size per call), in id order within each size."""
    by_size: dict[tuple[int, int], list[EvalImage]] = {}
    for image in images:
        by_size.setdefault(image.pixels.shape[:2], []).append(image)
    return [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def sweep_codecs(codec: Codec, channels: Sequence[str]) -> dict[str, SupportsSweep]:
    """DiffC's codec per eval channel: ``rcc`` is the registry's codec itself, ``ideal`` its bits-free twin.

    Eval only needs the :class:`~diffc_pipeline.codecs.SupportsSweep` capability; a codec without it has no
    prefix sweep and goes through the generic loop (:mod:`.grid`) instead."""
    if not isinstance(codec, SupportsSweep):
        raise InvalidInputError(f"codec {codec.name!r} has no sweep capability (use --codec {codec.name})")
    return {ch: codec if ch == "rcc" else codec.ideal() for ch in channels}


def run_diffc(
    images: Sequence[EvalImage],
    codecs: dict[str, SupportsSweep],
    prefixes: Sequence[int],
    methods: Sequence[str],
    seed: int,
    batch_size: int,
    showcase: Showcase | None,
    advance: Progress,
    perceptual: PerceptualMetrics | None = None,
) -> list[dict]:
    """One ``codec.sweep`` per batch and channel; a record per image, channel, method and prefix.

    Rates: ``rcc`` charges what ``codec.charged_bits`` does, as for every other codec: the shape the
    stream's header codes plus the real bytes of the first ``k`` chunks; the whole standalone stream header
    is reported apart in ``stream_header_bytes``;
    ``ideal`` charges the sum of the first ``k`` steps' KL in bits, the paper's rate. ``stream_sha256`` (rcc)
    is the archive's row checksum of the whole stream: the same image and run seed give the same value in a
    ``diffc compress`` archive made with the same batch size and thread count (docs/reliability.md).
    Times: the sweep encodes once and decodes every prefix and method in one go, so ``encode_s`` is the
    batch's encode time per image and ``decode_s`` the batch's sweep decode time per image, prefix and method.
    """
    records: list[dict] = []
    for batch in batches_by_size(images, batch_size):
        x = np.stack([im.pixels for im in batch])
        seeds = [image_seed(seed, im.id) for im in batch]
        for channel, codec in codecs.items():
            result = codec.sweep(x, seeds, prefixes=list(prefixes), methods=tuple(methods))
            n = len(batch)
            encode_s = result.encode_s / n
            decode_s = result.decode_s / (n * len(prefixes) * len(methods))
            for i, image in enumerate(batch):
                stream = result.streams[i]
                kl_cum = np.cumsum(stream.estimated_bits)
                pixels = image.pixels.shape[0] * image.pixels.shape[1]
                digest = {"stream_sha256": row_checksum(stream.header, stream.chunks)} if channel == "rcc" else {}
                for k in prefixes:
                    rate = prefix_rate(codec, stream, k, channel, float(kl_cum[k - 1]))
                    for method in methods:
                        recon = result.recon[method][k][i]
                        rec = {
                            **quality_record(image, recon, perceptual),
                            "variant": f"diffc-{channel}-{method}",
                            "family": "diffc",
                            "channel": channel,
                            "method": method,
                            "steps": k,
                            **rate,
                            "bpp": rate["bits"] / pixels,
                            **digest,
                            "encode_s": encode_s,
                            "decode_s": decode_s,
                        }
                        records.append(rec)
                        if showcase is not None:
                            showcase.add(rec, recon)
            advance(n)
    return records


def prefix_rate(codec: Codec, stream: Encoded, k: int, channel: str, kl_bits: float) -> dict:
    """Bits charged for the first ``k`` steps, with the parts they are made of: the KL on the ideal channel,
    else what ``codec.charged_bits`` charges (the shape its header codes plus the chunks' bytes)."""
    if channel == "ideal":
        return {"bits": kl_bits, "kl_bits": kl_bits, "bytes": None, "header_bytes": None}
    bits = codec.charged_bits(stream, k)
    return {
        "bits": float(bits),
        "kl_bits": kl_bits,
        "bytes": bits // 8,
        "header_bytes": codec.image_header_bits(stream) // 8,
        "stream_header_bytes": len(stream.header),
    }
