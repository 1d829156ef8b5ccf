"""``diffc decode``: choose images and a prefix per image, then reconstruct them on Ray actors.

The choice is made on the driver from the archive's index (cumulative bits per chunk), so each read task
fetches only the chunk columns it decodes. The codec is the one the manifest names, built from the registry.
Reconstructions are written as PNG files (by write tasks) or as Parquet parts of PNG bytes (by the driver).

An archive may come from elsewhere, and its CRCs and checksums catch accidents, not edits: before any
decoding, each stream's header must claim its row's size, within ``max_pixels`` (compress's limit), or the
row becomes an error row (:func:`check_stream_size`); what the index says never selects more chunks than the
manifest names.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..codecs import Codec, Encoded, prefix_bits
from ..errors import ArchiveError, DecodeTargetError, check_at_least, is_whole
from ..images import DEFAULT_BATCH_PIXELS, DEFAULT_MAX_PIXELS
from ..redaction import redact_text
from .archive import ROW_GROUP_SIZE, STATUS_ERROR, STATUS_OK, chunk_column, crc_column, verify_prefix
from .commit import replace_file
from .destinations import (
    SUCCESS_NAME,
    check_no_parts,
    check_output_folder,
    check_outside_archive,
    check_outside_source,
)
from .incremental import latest_rows
from .manifest import check_same_codec
from .png_output import (
    check_distinct_names,
    check_not_written,
    check_resumable,
    folds_names,
    png_bytes,
    write_pngs,
    write_record,
    written_names,
)
from .progress import JobProgress
from .reader import Archive, open_archive, read_index, read_prefixes
from .runtime import READ_TASK_CPUS, ActorSizing, cluster_sizing, model_stage, ray_session
from .sources import open_fs, public_url
from .stages import error_text, load_codec, split_by_pixels
from .where import filter_rows

ROWS_PER_READ = 64
ROWS_PER_PART = 1000

ERROR_EXAMPLES = 5  # failed images a decode summary names
PAYLOAD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("step", pa.int32()),
        pa.field("bits", pa.int64()),
        pa.field("header", pa.binary()),
        pa.field("chunks", pa.list_(pa.binary())),
        pa.field("crcs", pa.list_(pa.uint32())),
        pa.field("read_bytes", pa.int64()),
        pa.field("error", pa.string()),  # the payload could not be read (null: it was)
    ]
)


DECODED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("step", pa.int32()),
        pa.field("bits", pa.int64()),
        pa.field("bpp", pa.float64()),
        pa.field("png", pa.binary()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("read_bytes", pa.int64()),
    ]
)

# The columns a decoded-image dataset (``read_archive``) may have: ``image`` is (H, W, 3) uint8.
IMAGE_COLUMNS = ("id", "image", "bpp", "height", "width", "step", "bits", "status", "error")
TEXT_COLUMNS = ("id", "status", "error")


@dataclass
class DecodeOptions:
    archive: str
    output: str
    bpp: float | None = None
    step: int | None = None
    ids: list[str] = field(default_factory=list)
    where: str | None = None
    limit: int = 0
    decode_options: dict = field(default_factory=dict)  # the codec's decode options (strings accepted)
    format: str = "png"
    model: str | None = None  # None: the model the manifest names (a built-in); a PATH otherwise
    max_pixels: int = DEFAULT_MAX_PIXELS  # a stream (and its row) claiming more pixels is an error row
    storage_options: dict = field(default_factory=dict, repr=False)
    address: str | None = None
    batch_size: int = 8
    threads: int = 0
    actors: int = 0
    overwrite: bool = False  # PNG output: replace files of those names already in OUTPUT
    resume: bool = False  # PNG output: finish an interrupted decode (ids whose PNG is there are done)

    def __post_init__(self) -> None:
        """As :class:`~diffc_pipeline.pipeline.compress_job.CompressOptions`: out-of-range numbers fail at once.
        Numbers from numpy or Arrow (``rows()`` values) count as numbers; ``limit=1.5`` is no count."""
        for name in ("limit", "batch_size", "threads", "actors", "max_pixels", "step"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                setattr(self, name, int(value))
            elif name != "step":  # step is checked by select(), naming chunks
                raise DecodeTargetError(f"{name} must be a whole number, got {value!r}")
        if isinstance(self.bpp, numbers.Real) and not isinstance(self.bpp, bool):
            self.bpp = float(self.bpp)
        check_at_least(self, batch_size=1, threads=0, actors=0, limit=0)


@dataclass
class DecodeSummary:
    images: int
    failures: int
    skipped_error_rows: int
    bpp: float  # total bits over total pixels of the decoded images
    index_bytes_read: int  # bytes read on the driver to choose images and prefixes
    bytes_read: int  # payload bytes the read tasks fetched from shards
    bytes_needed: int  # header + chunk bytes of the chosen prefixes
    wall_s: float
    images_per_s: float
    error_examples: list[str] = field(default_factory=list)  # "ID: error" of the first failed images
    already_written: int = 0  # --resume: selected images whose PNG an earlier run wrote (not decoded again)


def select(archive: Archive, opts: DecodeOptions) -> tuple[pa.Table, int, int]:
    """The index rows to decode with a ``step`` column (chunks to decode), how many selected rows are error
    rows, and the bytes read for the choice (``cum_bits`` only when choosing by bitrate). Neither ``bpp`` nor
    ``step``: the whole stream."""
    if opts.bpp is not None and opts.step is not None:
        raise DecodeTargetError("give at most one of --bpp and --step (bpp=, step=)")
    # the Python API passes these untyped: 2.5 steps would have decoded 2, "0.2" bpp failed deep in a compare
    if opts.step is not None and not is_whole(opts.step):
        raise DecodeTargetError(f"step must be a whole number of chunks, got {opts.step!r}")
    if opts.bpp is not None and (isinstance(opts.bpp, bool) or not isinstance(opts.bpp, int | float)):
        raise DecodeTargetError(f"bpp must be a number, got {opts.bpp!r}")
    if not all(isinstance(i, str) for i in opts.ids):
        raise DecodeTargetError(f"ids must be strings, got {[i for i in opts.ids if not isinstance(i, str)][:3]!r}")
    if opts.max_pixels < 1:
        raise DecodeTargetError(f"--max-pixels (max_pixels=) must be >= 1, got {opts.max_pixels}")
    if opts.bpp is not None and not opts.bpp > 0:  # not "> 0" also catches NaN
        raise DecodeTargetError(f"--bpp (bpp=) must be > 0, got {opts.bpp}")
    most = archive.manifest.num_chunks
    if opts.step is not None and not 0 <= opts.step <= most:
        # a step past the end would silently decode whole streams, and the user asked for something else
        raise DecodeTargetError(f"--step (step=) must lie in 0..{most} (the archive's streams have {most} chunk(s))")
    index, index_bytes = read_index(archive, with_bits=opts.bpp is not None)
    index = latest_rows(index)  # incremental archives hold older versions of changed sources
    if opts.ids:
        index = index.filter(pc.is_in(index.column("id"), pa.array(opts.ids, pa.string())))
        missing = set(opts.ids) - set(index.column("id").to_pylist())
        if missing:
            raise DecodeTargetError(f"ids not in {archive.url}: {', '.join(sorted(missing)[:5])}")
    if opts.where:
        index = filter_rows(index, opts.where, [c for c in index.column_names if c != "cum_bits"])
    ok = np.asarray(pc.equal(index.column("status"), STATUS_OK).to_numpy(zero_copy_only=False), dtype=bool)
    if opts.limit and ok.sum() > opts.limit:  # the first N decodable images: error rows do not use up the limit
        index = index.slice(0, int(np.flatnonzero(ok)[opts.limit - 1]) + 1)  # up to the N-th decodable row
        ok = ok[: index.num_rows]
    errors = int((~ok).sum())  # the error rows among those passed over
    index = index.filter(pa.array(ok))
    m = archive.manifest
    if opts.bpp is not None:
        sizes = zip(index.column("height").to_pylist(), index.column("width").to_pylist(), strict=True)
        bits_px = list(zip(index.column("cum_bits").to_pylist(), [row_pixels(h, w) for h, w in sizes], strict=True))
        steps = [_steps_within(bits, px, opts.bpp, m.num_chunks) for bits, px in bits_px]
        below = [bits[0] / px for (bits, px), k in zip(bits_px, steps, strict=True) if k == 0 and px and bits]
        if below:
            raise DecodeTargetError(
                f"--bpp {opts.bpp} is below the first chunk of {len(below)} of {len(steps)} selected images "
                f"(their first chunks need {min(below):.4g} to {max(below):.4g} bpp, header included); give a "
                "higher --bpp"
                + (", or --step 0 for what the decoder makes of the seed alone" if m.codec.get("progressive") else "")
            )
    elif opts.step is not None:
        steps = [opts.step] * index.num_rows
    else:
        steps = [m.num_chunks] * index.num_rows
    if not m.codec.get("progressive", True):
        short = sum(1 for k in steps if k < m.num_chunks)
        if short:
            target = f"--bpp {opts.bpp}" if opts.bpp is not None else f"--step {opts.step}"
            raise DecodeTargetError(
                f"codec {m.codec_name!r} is not progressive: it decodes whole streams only, and {target} leaves "
                f"{short} of {len(steps)} selected images short of theirs (decode without --bpp/--step, or with a "
                "higher --bpp)"
            )
    return index.append_column("step", pa.array(steps, pa.int32())), errors, index_bytes


def _steps_within(cum_bits: list[int] | None, pixels: int, bpp: float, most: int) -> int:
    """The longest prefix whose bits (header included) stay within ``bpp``; 0 if even one step is over.

    At most ``most`` chunks, the manifest's count: an index from elsewhere may list more bit counts than
    its shards have chunk columns. A row naming no pixels gets 0 here and is reported by
    :func:`check_stream_size`.
    """
    if not pixels:
        return 0
    # bits / pixels, the division bpp is reported with: bpp * pixels can round below an exact multiple (440 /
    # 307200 * 307200 = 439.99999999999994), refusing the very bpp a row reports
    return min(most, sum(1 for bits in cum_bits or () if bits is not None and bits / pixels <= bpp))


def row_pixels(height: int | None, width: int | None) -> int:
    """``height * width`` of an archive row, or 0 unless both are positive integers (a row from elsewhere
    may hold anything, and a decoder must not divide by it or size work by it)."""
    if type(height) is int and type(width) is int and height > 0 and width > 0:
        return height * width
    return 0


def check_stream_size(codec: Codec, row: dict, max_pixels: int) -> None:
    """Refuse a row unless its stream's header claims the row's ``height`` x ``width`` and that is at most
    ``max_pixels``: the codec's work and memory grow with the size its header names, so an edited row (header
    CRC and row checksum recomputed) must be caught before any decoding, not by a decode that never ends."""
    height, width = row["height"], row["width"]
    pixels = row_pixels(height, width)
    if not pixels:
        raise ArchiveError(f"image {row['id']!r}: its row says {width}x{height} pixels")
    claimed_h, claimed_w = codec.stream_size(Encoded(row["header"], row["chunks"]))
    if (claimed_h, claimed_w) != (height, width):
        raise ArchiveError(
            f"image {row['id']!r}: stream header claims {claimed_w}x{claimed_h} pixels, its row says {width}x{height}"
        )
    work = codec.work_pixels(height, width)
    if work > max_pixels:
        padded_h, padded_w = codec.padded_size(height, width)
        padded = "" if work == pixels else f" (coded padded to {padded_w}x{padded_h} = {work})"
        raise ArchiveError(
            f"image {row['id']!r}: stream of {width}x{height} = {pixels} pixels{padded} exceeds the limit of "
            f"{max_pixels} (--max-pixels)"
        )


def read_units(archive: Archive, selection: pa.Table) -> list[pa.Table]:
    """Per shard, runs of selected rows that each hold whole row groups (of the writer's ROW_GROUP_SIZE rows),
    at least ROWS_PER_READ rows where the shard has them: what one read task fetches.

    A read fetches the whole row groups of its rows, so a row group split between two units was fetched twice
    (64-row units of 256-row groups read a whole-archive decode 4 times over). Ids, sizes and bit counts
    come from the index, so read tasks fetch nothing but payload columns.
    """
    units = []
    for shard in sorted(set(selection.column("shard").to_pylist())):
        rows = selection.filter(pc.equal(selection.column("shard"), shard))
        rows = rows.select(["row", "id", "height", "width", "step"])
        path = archive.fs.unstrip_protocol(archive.shard_path(shard))
        group = rows.column("row").to_numpy() // ROW_GROUP_SIZE
        start = 0
        for i in range(1, rows.num_rows + 1):
            if i == rows.num_rows or (group[i] != group[i - 1] and i - start >= ROWS_PER_READ):
                part = rows.slice(start, i - start)
                units.append(part.append_column("path", pa.array([path] * part.num_rows, pa.string())))
                start = i
    return units


def read_payloads(unit: pa.Table, storage_options: Mapping[str, object]) -> pa.Table:
    """Ray task: fetch the prefixes of one unit's rows (only their row groups and steps)."""
    fs, p = open_fs(unit.column("path")[0].as_py(), storage_options)
    steps = unit.column("step").to_pylist()
    try:
        payload, nbytes = read_prefixes(fs, p, unit.column("row").to_pylist(), max(steps))
    except ArchiveError as exc:  # damaged pages of one shard: its rows are error rows, the job goes on
        return pa.Table.from_pylist(
            [
                {"id": m["id"], "height": m["height"], "width": m["width"], "step": m["step"], "bits": 0,
                 "header": b"", "chunks": [], "crcs": [], "read_bytes": 0, "error": str(exc)}
                for m in unit.select(["id", "height", "width", "step"]).to_pylist()
            ],
            schema=PAYLOAD_SCHEMA,
        )  # fmt: skip
    out = []
    for i, (meta, row) in enumerate(zip(unit.to_pylist(), payload.to_pylist(), strict=True)):
        k = meta["step"]
        out.append(
            {
                "id": meta["id"],
                "height": meta["height"],
                "width": meta["width"],
                "step": k,
                "bits": prefix_bits(row["header"], [row[chunk_column(j)] for j in range(1, k + 1)]),
                "header": row["header"],
                "chunks": [row[chunk_column(j)] for j in range(1, k + 1)],
                "crcs": [row[crc_column(j)] for j in range(1, k + 1)],
                "read_bytes": nbytes if i == 0 else 0,
                "error": None,
            }
        )
    return pa.Table.from_pylist(out, schema=PAYLOAD_SCHEMA)


def decode_rows(codec: Codec, rows: list[dict], decode_options: dict, max_pixels: int) -> None:
    """Decode payload rows (``id``, ``height``, ``width``, ``step``, ``bits``, ``header``, ``chunks``, ``crcs``)
    in place: each gets ``bpp`` and ``status``, and ``pixels`` ((H, W, 3) uint8) or an ``error``.

    Each row is checked first (its payload was read, chunk CRCs, then :func:`check_stream_size` against
    ``max_pixels``). One codec call per image size and :data:`~diffc_pipeline.images.DEFAULT_BATCH_PIXELS`
    (each image its own prefix); if a call fails, image by image, so one bad row is one error row. Shared by
    the decoder actors and :meth:`~diffc_pipeline.api.ArchiveReader.decode`.
    """
    groups: dict[tuple[int, int], list[tuple[dict, Encoded]]] = defaultdict(list)
    for row in rows:
        pixels = row_pixels(row["height"], row["width"])
        if row.get("error"):  # read_payloads could not read it
            row.update(bpp=math.nan, status=STATUS_ERROR, error=f"archive: {row['error']}")
            continue
        row.update(bpp=row["bits"] / pixels if pixels else math.nan, status=STATUS_OK)
        try:
            verify_prefix(row["id"], row["header"], row["chunks"], row["crcs"])
            check_stream_size(codec, row, max_pixels)
        except Exception as exc:  # a corrupted or edited row is an error row; the other images still decode
            row.update(status=STATUS_ERROR, error=error_text("archive", exc))
            continue
        groups[(row["height"], row["width"])].append((row, Encoded(row["header"], row["chunks"])))
    for (h, w), group in groups.items():  # memory grows with a call's (padded) pixels
        for part in split_by_pixels(group, codec.work_pixels(h, w), DEFAULT_BATCH_PIXELS):
            _decode_group(codec, part, decode_options)


def _decode_group(codec: Codec, group: list[tuple[dict, Encoded]], decode_options: dict) -> None:
    try:
        x = codec.decompress([s for _, s in group], [r["step"] for r, _ in group], **decode_options)
    except Exception as exc:
        if len(group) > 1:
            for item in group:
                _decode_group(codec, [item], decode_options)
        else:
            group[0][0].update(status=STATUS_ERROR, error=error_text("decode", exc))
        return
    for (row, _), img in zip(group, x, strict=True):
        if img.shape[:2] != (row["height"], row["width"]):
            row.update(
                status=STATUS_ERROR,
                error=f"decode: stream is {img.shape[1]}x{img.shape[0]} pixels, its row says "
                f"{row['width']}x{row['height']}",
            )
            continue
        row["pixels"] = img


class Decoder:
    """Ray actor: builds the codec once; decodes batches of prefixes (:func:`decode_rows`) into rows with PNG
    bytes (``columns=None``, for ``diffc decode``), or into rows of ``columns`` out of :data:`IMAGE_COLUMNS`
    with ``image`` arrays (for ``read_archive``: emitted here, so the dataset needs no conversion stage)."""

    def __init__(
        self,
        spec: dict,
        fingerprint: str,
        decode_options: dict,
        max_pixels: int,
        columns: list[str] | None,
        threads: int,
        device: str,
    ) -> None:
        self.codec = load_codec(spec, fingerprint, threads, device)
        self.options = decode_options
        self.max_pixels = max_pixels
        self.columns = columns

    def __call__(self, batch: pa.Table) -> pa.Table | dict[str, np.ndarray]:
        rows = batch.to_pylist()
        decode_rows(self.codec, rows, self.options, self.max_pixels)
        if self.columns is not None:
            return image_rows(rows, self.columns)
        for row in rows:
            pixels = row.pop("pixels", None)
            if pixels is not None:
                row["png"] = png_bytes(pixels)
        return pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)


def image_rows(rows: list[dict], columns: list[str]) -> dict[str, np.ndarray]:
    """Decoded rows as a batch of ``columns``; ``image`` is a stack of (H, W, 3) uint8 arrays (an object array
    of them when sizes differ: Ray Data stores it as a variable-shaped tensor column), empty ``(0, 0, 3)``
    for a row that failed."""
    out: dict[str, np.ndarray] = {}
    for name in columns:
        if name == "image":
            images = [r["pixels"] if r.get("pixels") is not None else np.zeros((0, 0, 3), np.uint8) for r in rows]
            if len({im.shape for im in images}) == 1:
                out[name] = np.stack(images)
            else:
                out[name] = np.empty(len(images), dtype=object)
                out[name][:] = images
        else:
            out[name] = np.array([r.get(name) for r in rows], dtype=object if name in TEXT_COLUMNS else None)
    return out


def run_decode(opts: DecodeOptions, progress: JobProgress) -> DecodeSummary:
    if opts.format not in ("png", "parquet"):
        raise DecodeTargetError(f"--format (format=) must be png or parquet, got {opts.format!r}")
    if opts.resume and opts.format != "png":
        raise DecodeTargetError(
            "--resume (resume=) finishes an interrupted PNG decode; a Parquet decode starts again in an empty folder"
        )
    if opts.resume and opts.overwrite:
        raise DecodeTargetError("--resume keeps the PNGs already written, --overwrite replaces them: pass one")
    archive = open_archive(opts.archive, opts.storage_options)
    out_fs, out_root = open_fs(opts.output, opts.storage_options)
    root = out_root.rstrip("/")  # where the PNGs, the decode record or the parts go
    check_output_folder(out_fs, out_root, opts.output, opts.storage_options)
    check_outside_archive(out_fs, out_root, archive.fs, archive.root)
    check_outside_source(out_fs, out_root, archive.manifest.source, opts.storage_options)
    if opts.format == "parquet":
        check_no_parts(out_fs, root, opts.output)
    spec = archive.manifest.codec_spec(opts.model)
    codec = spec.build()
    decode_options = codec.parse_decode_options(opts.decode_options)
    check_same_codec(
        archive.manifest, codec.describe(), archive.url, "decode it with --model naming the model it was made with"
    )
    selection, skipped, index_bytes = select(archive, opts)
    if selection.num_rows == 0:
        raise DecodeTargetError(f"no decodable image selected in {archive.url} ({skipped} error rows selected)")
    already_written = 0
    if opts.format == "png":
        ids = selection.column("id").to_pylist()
        folds = folds_names(out_fs, root)
        check_distinct_names(ids, folds)
        record = decode_record(archive, opts, decode_options)
        if opts.resume:
            check_resumable(out_fs, root, record, opts.output, opts.storage_options)
            written, leftovers = written_names(out_fs, root, ids, opts.output, opts.storage_options, folds)
            for path in leftovers:  # the temporary files of PNGs the interrupted run was writing
                out_fs.rm(path)
            already_written = sum(written)
            selection = selection.filter(pa.array([not w for w in written]))
        elif not opts.overwrite:
            check_not_written(out_fs, root, ids, opts.output, opts.storage_options, folds)
        write_record(out_fs, root, record)
    if selection.num_rows == 0:  # --resume, and every PNG is there
        return DecodeSummary(0, 0, skipped, 0.0, index_bytes, 0, 0, 0.0, 0.0, already_written=already_written)
    progress.start(selection.num_rows)
    try:
        with ray_session(opts.address):
            sizing = cluster_sizing(opts.threads, opts.actors)
            bytes_read, needed, examples = _drain(
                _build_dataset(archive, selection, opts, sizing, spec.to_dict(), decode_options), opts, progress
            )
    except KeyboardInterrupt as exc:  # the CLI prints the note under "interrupted"
        if opts.format == "parquet":
            state, again = f"decoded, the last of them not written; no {SUCCESS_NAME}", "into an empty folder"
        else:
            state, again = "decoded", "with the same options and --resume"
        exc.add_note(
            f"OUTPUT {public_url(opts.output)} is incomplete ({progress.tally.images} of {selection.num_rows} images "
            f"{state}); decode again {again}"
        )
        raise
    finally:
        progress.stop()
    if opts.format == "png" and opts.overwrite:  # every selected PNG is this decode's now: resumable again
        write_record(out_fs, root, {**record, "overwrite": False})
    t = progress.tally
    return DecodeSummary(
        t.images,
        t.failures,
        skipped,
        t.bpp,
        index_bytes,
        bytes_read,
        needed,
        t.wall_s,
        t.images_per_s,
        examples,
        already_written,
    )


def decode_record(archive: Archive, opts: DecodeOptions, decode_options: dict) -> dict:
    """What makes a PNG decode's pixels and selection (:data:`~.png_output.RECORD_NAME`): the archive (by its
    creation time, codec fingerprint and committed shards, not the spelling of its URL), the model, the rate,
    the selection and the codec's decode options. The ids are kept as a digest: a long ``--ids`` list stays
    out of OUTPUT. ``overwrite`` says the decode replaces an earlier one's PNGs: until it finishes, a PNG in
    OUTPUT may still be the earlier decode's, so it cannot be resumed."""
    shards = hashlib.sha256("\n".join(sorted(archive.shards)).encode()).hexdigest()
    return {
        "archive": redact_text(archive.url),
        "archive_created_at": archive.manifest.created_at,
        "codec_fingerprint": archive.manifest.codec.get("fingerprint"),
        "archive_shards_sha256": shards,  # an incremental run since: other versions, another --limit selection
        "model": opts.model,
        "bpp": opts.bpp,
        "step": opts.step,
        "ids_sha256": hashlib.sha256("\n".join(opts.ids).encode()).hexdigest() if opts.ids else None,
        "where": opts.where,
        "limit": opts.limit,
        "decode_options": decode_options,
        "overwrite": opts.overwrite,
    }


def decoded_dataset(
    archive: Archive,
    selection: pa.Table,
    storage_options: Mapping[str, object],
    batch_size: int,
    sizing: ActorSizing,
    spec: dict,
    decode_options: dict,
    max_pixels: int,
    columns: list[str] | None = None,
):
    """The lazy Ray dataset of decoded rows: read tasks fetch the chosen prefixes, decoder actors decode
    (PNG rows, or rows of ``columns`` with images: see :class:`Decoder`)."""
    import ray.data

    ds = ray.data.from_arrow(read_units(archive, selection))
    ds = ds.map_batches(
        read_payloads,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=READ_TASK_CPUS,
        fn_kwargs=dict(storage_options=storage_options),
    )
    return model_stage(
        ds,
        Decoder,
        batch_size,
        sizing,
        spec=spec,
        fingerprint=archive.manifest.codec["fingerprint"],
        decode_options=decode_options,
        max_pixels=max_pixels,
        columns=columns,
    )


def _build_dataset(
    archive: Archive, selection: pa.Table, opts: DecodeOptions, sizing: ActorSizing, spec: dict, decode_options: dict
):
    ds = decoded_dataset(
        archive, selection, opts.storage_options, opts.batch_size, sizing, spec, decode_options, opts.max_pixels
    )
    if opts.format == "png":
        ds = ds.map_batches(
            write_pngs,
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=READ_TASK_CPUS,
            fn_kwargs=dict(output=opts.output, storage_options=opts.storage_options),
        )
    return ds


def _drain(ds, opts: DecodeOptions, progress: JobProgress) -> tuple[int, int, list[str]]:
    """Consume decoded rows: count progress, write Parquet parts when asked.

    Returns the bytes the read tasks fetched, the bytes of the prefixes decoded (header + chunks), and
    "ID: error" for the first :data:`ERROR_EXAMPLES` failed images (PNG output keeps no error column).
    """
    examples: list[str] = []
    fs, root = open_fs(opts.output, opts.storage_options)
    root = root.rstrip("/")
    pending: list[pa.Table] = []
    part = 0
    bytes_read = bits = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        ok = pc.equal(batch.column("status"), STATUS_OK)
        pixels = pc.multiply(batch.column("height").cast(pa.int64()), batch.column("width").cast(pa.int64()))
        progress.add(
            batch.num_rows,
            batch.num_rows - (pc.sum(ok).as_py() or 0),
            pc.sum(pc.if_else(ok, batch.column("bits"), 0)).as_py() or 0,
            pc.sum(pc.if_else(ok, pixels, 0)).as_py() or 0,
        )
        if len(examples) < ERROR_EXAMPLES:
            failed = batch.filter(pc.invert(ok)).slice(0, ERROR_EXAMPLES - len(examples))
            ids, errors = failed.column("id").to_pylist(), failed.column("error").to_pylist()
            examples += [f"{image_id}: {error}" for image_id, error in zip(ids, errors, strict=True)]
        bytes_read += pc.sum(batch.column("read_bytes")).as_py() or 0
        bits += pc.sum(batch.column("bits")).as_py() or 0
        if opts.format == "parquet":
            pending.append(batch.drop_columns(["read_bytes"]))
            if sum(t.num_rows for t in pending) >= ROWS_PER_PART:
                _write_part(fs, root, part, pending)
                part, pending = part + 1, []
    if opts.format == "parquet":
        if pending:
            _write_part(fs, root, part, pending)
        fs.pipe_file(f"{root}/{SUCCESS_NAME}", b"")  # last: the parts before it are the whole dataset
    return bytes_read, bits // 8, examples


def _write_part(fs, root: str, part: int, tables: list[pa.Table]) -> None:
    """Write one Parquet part of the decoded rows, whole or not at all (:func:`~.commit.replace_file`)."""
    fs.makedirs(root, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(pa.concat_tables(tables), buf, compression="none")
    replace_file(fs, f"{root}/part-{part:05d}.parquet", buf.getvalue())
