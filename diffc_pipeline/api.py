"""The Python API: compress, decode and inspect archives from code, and read a decoded subset as a Ray dataset.

The CLI is a thin layer over these functions (one code path: both end in the pipeline's ``run_*`` jobs).
Everything here takes the CLI's options as keyword arguments::

    import diffc_pipeline as dp

    dp.compress("photos/", "s3://bucket/arch", codec="webp", codec_options={"quality": 50})
    arch = dp.open_archive("s3://bucket/arch")
    arch.rows()                                    # pyarrow Table: id, size, bits per prefix, status
    for image_id, pixels in arch.decode(bpp=0.5):  # small jobs, this process, no Ray
        ...
    ds = dp.read_archive("s3://bucket/arch", bpp=0.2)   # lazy ray.data.Dataset: id, image, bpp
    same_size = dp.read_archive(                        # torch batches: numeric columns of one image size
        "s3://bucket/arch", bpp=0.2, where="width = 64 AND height = 64", columns=("image", "bpp")
    )
    for batch in same_size.iter_torch_batches(batch_size=32): ...

Torch and Ray are imported only by the functions that need them, so ``import diffc_pipeline`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import DiffcError, InvalidInputError
from .images import DEFAULT_BATCH_PIXELS, DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import ray.data

    from .pipeline.compress_job import CompressSummary
    from .pipeline.decode_job import DecodeSummary
    from .pipeline.progress import JobProgress

DEFAULT_COLUMNS = ("id", "image", "bpp")


def _progress(label: str, show: bool) -> JobProgress:
    from .pipeline.progress import JobProgress

    return JobProgress(label, enabled=show)


def compress(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    codec: str = "diffc",
    codec_options: Mapping[str, Any] | None = None,
    model: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    shard_size: int = 1000,
    incremental: bool = False,
    retry_errors: bool = False,
    overwrite: bool = False,
    limit: int = 0,
    image_column: str = "image",
    id_column: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int = 16,
    batch_pixels: int = DEFAULT_BATCH_PIXELS,
    threads: int = 0,
    actors: int = 0,
    address: str | None = None,
    wait_lock: float = 0.0,
    lock_timeout: float = 3600.0,
    progress: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] | None = None,
) -> CompressSummary | dict:
    """Compress the images at ``input`` (folder, glob or Parquet dataset; any fsspec URL) into the archive
    ``output``, resumably: what ``diffc compress`` does. Returns the job's summary (``images``, ``failures``,
    ``bpp``, ...); failed images are error rows, not exceptions. ``dry_run``: write nothing and return the
    plan (inputs, shards, what is done) as a dict. ``log`` receives warnings (e.g. a stale lock broken)."""
    from .pipeline.compress_job import CompressOptions, check_destination, codec_spec, prepare, run_compress

    opts = CompressOptions(
        input=_location(input, "input"),
        output=_location(output, "output"),
        storage_options=dict(storage_options or {}),
        image_column=image_column,
        id_column=id_column,
        shard_size=shard_size,
        seed=seed,
        codec=codec,
        codec_options=dict(codec_options or {}),
        model=model,
        overwrite=overwrite,
        address=address,
        max_pixels=max_pixels,
        batch_size=batch_size,
        batch_pixels=batch_pixels,
        threads=threads,
        actors=actors,
        limit=limit,
        incremental=incremental,
        retry_errors=retry_errors,
        wait_lock=wait_lock,
        lock_timeout=lock_timeout,
    )
    if dry_run:
        check_destination(opts)
        return prepare(opts, codec_spec(opts).build()).describe()
    return run_compress(opts, _progress("compress", progress), say=log or (lambda _: None))


def decode(
    archive: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    bpp: float | None = None,
    step: int | None = None,
    ids: str | Sequence[str] = (),
    where: str | None = None,
    limit: int = 0,
    format: str = "png",
    model: str | None = None,
    decode_options: Mapping[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    threads: int = 0,
    actors: int = 0,
    address: str | None = None,
    progress: bool = False,
    overwrite: bool = False,
    resume: bool = False,
) -> DecodeSummary:
    """Decode chosen images of ``archive`` to PNG files (or Parquet parts of PNG bytes) under ``output``, on
    Ray: what ``diffc decode`` does. Without ``bpp`` or ``step``, the whole stream. A row whose stream header
    disagrees with its size, or claims more than ``max_pixels`` pixels, is an error row of the summary. PNG
    files of the same names already in ``output`` are refused unless ``overwrite`` (replace them) or ``resume``
    (finish an interrupted decode made with the same arguments: the images whose PNG is there are done)."""
    from .pipeline.decode_job import DecodeOptions, run_decode

    opts = DecodeOptions(
        archive=_location(archive, "archive"),
        output=_location(output, "output"),
        bpp=bpp,
        step=step,
        ids=_id_list(ids),
        where=where,
        limit=limit,
        decode_options=dict(decode_options or {}),
        format=format,
        model=model,
        max_pixels=max_pixels,
        storage_options=dict(storage_options or {}),
        address=address,
        batch_size=batch_size,
        threads=threads,
        actors=actors,
        overwrite=overwrite,
        resume=resume,
    )
    return run_decode(opts, _progress("decode", progress))


def inspect(archive: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> dict:
    """What ``diffc inspect --json`` prints: counts, bytes, bpp per chunk, codec, model, runs, top errors."""
    from .pipeline.inspect_archive import inspect_archive

    return inspect_archive(_location(archive, "archive"), dict(storage_options or {}))


class ArchiveReader:
    """An open archive: its manifest and row metadata, and decoding in this process (no Ray).

    Made by :func:`open_archive`; nothing is decoded until :meth:`decode` is iterated.
    """

    def __init__(self, url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        from .pipeline.reader import open_archive as open_pipeline_archive

        self.storage_options = dict(storage_options or {})
        self._archive = open_pipeline_archive(_location(url, "url"), self.storage_options)
        self.url = self._archive.url

    @property
    def manifest(self) -> dict:
        """The manifest as a dict (format 2, whatever the archive was written as)."""
        import dataclasses

        return dataclasses.asdict(self._archive.manifest)

    @property
    def codec(self) -> str:
        return self._archive.manifest.codec_name

    @property
    def model(self) -> dict | None:
        """``{"name", "sha256", "spec"}`` of the codec's model, or ``None`` for codecs without one."""
        return self._archive.manifest.model

    @property
    def format_version(self) -> int:
        """The format the archive is stored in (1 or 2; :attr:`manifest` is always shaped as 2)."""
        m = self._archive.manifest
        return m.read_from_format or m.format_version

    def rows(self) -> pa.Table:
        """One row per image (latest versions): ``id``, ``height``, ``width``, ``channels`` (of the source
        image), ``seed``, ``status``, ``error``, ``cum_bits`` (bits of each prefix, header included), ``shard``,
        ``source_uri`` and ``source_size`` (bytes read)."""
        from .pipeline.incremental import latest_rows
        from .pipeline.reader import read_index

        index, _ = read_index(self._archive, with_bits=True)
        return latest_rows(index).drop_columns(["row"])

    def decode(
        self,
        *,
        bpp: float | None = None,
        step: int | None = None,
        ids: str | Sequence[str] = (),
        where: str | None = None,
        limit: int = 0,
        model: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        **decode_options: Any,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(id, uint8 (H, W, 3) array)`` for the chosen images at ``bpp`` or ``step`` (default: the
        whole stream), in archive order. A selection with no decodable image raises :class:`DiffcError` (as
        :func:`decode` and :func:`read_archive` do). A row that fails to decode raises :class:`DiffcError` naming it
        (error rows of the archive are skipped, as ``diffc decode`` skips them), as does one whose stream
        header disagrees with its size or claims more than ``max_pixels`` pixels, before it is decoded."""
        from .pipeline.decode_job import DecodeOptions, decode_rows, read_payloads, read_units, select

        opts = DecodeOptions(
            self.url, "", bpp=bpp, step=step, ids=_id_list(ids), where=where, limit=limit, model=model,
            max_pixels=max_pixels, decode_options=dict(decode_options), batch_size=batch_size,
        )  # fmt: skip
        codec, options = _codec_for(self._archive, model, opts.decode_options)
        selection, skipped, _ = select(self._archive, opts)
        if selection.num_rows == 0:  # as dp.decode, read_archive and the CLI say it: not a silent empty loop
            raise DiffcError(f"no decodable image selected in {self.url} ({skipped} error rows selected)")
        for unit in read_units(self._archive, selection):
            payload = read_payloads(unit, self.storage_options).to_pylist()
            for start in range(0, len(payload), opts.batch_size):
                rows = payload[start : start + opts.batch_size]
                decode_rows(codec, rows, options, opts.max_pixels)
                for row in rows:
                    if row["status"] != "ok":
                        raise DiffcError(f"image {row['id']!r} of {self.url} did not decode: {row['error']}")
                    yield row["id"], row["pixels"]


def open_archive(url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> ArchiveReader:
    """Open the archive at ``url`` (any fsspec URL; ``storage_options`` as for fsspec, never stored)."""
    return ArchiveReader(url, storage_options)


def read_archive(
    url: str | os.PathLike[str],
    *,
    bpp: float | None = None,
    step: int | None = None,
    ids: str | Sequence[str] = (),
    where: str | None = None,
    limit: int = 0,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    model: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    storage_options: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    threads: int = 0,
    actors: int = 0,
    address: str | None = None,
    **decode_options: Any,
) -> ray.data.Dataset:
    """A lazy, streaming ``ray.data.Dataset`` of the chosen images decoded at ``bpp`` or ``step`` (default: the
    whole stream), like ``ray.data.read_images``.

    The choice (which rows, how many chunks each) is made now, on this process, from the archive's small
    index; read tasks then fetch only those byte prefixes and decoder actors (each holding the codec's model
    once) decode them when the dataset is consumed. Rows have ``columns`` out of :data:`IMAGE_COLUMNS`:
    ``image`` is uint8 ``(H, W, 3)``, emitted by the decoder actors themselves (no conversion stage); a row
    that fails to decode keeps ``status="error"`` and its ``error`` (as in ``diffc decode``) with an empty
    ``(0, 0, 3)`` image; so does a row whose stream header disagrees with its size or claims more than
    ``max_pixels`` pixels (checked before decoding). Joins the connected Ray cluster (``address``,
    ``RAY_ADDRESS``) or starts the embedded one, which stays up for the dataset's consumers.
    """
    from .pipeline.decode_job import IMAGE_COLUMNS, DecodeOptions, decoded_dataset, select

    url = _location(url, "url")
    columns = [columns] if isinstance(columns, str) else list(columns)  # as ids: one name is that column
    if not columns:
        raise InvalidInputError(f"columns is empty; choose from {', '.join(IMAGE_COLUMNS)}")
    unknown = sorted(set(columns) - set(IMAGE_COLUMNS))
    if unknown:
        raise InvalidInputError(f"unknown columns {', '.join(unknown)}; choose from {', '.join(IMAGE_COLUMNS)}")
    from .pipeline.reader import open_archive as open_pipeline_archive
    from .pipeline.runtime import cluster_sizing, connect

    storage = dict(storage_options or {})
    archive = open_pipeline_archive(url, storage)
    opts = DecodeOptions(
        url, "", bpp=bpp, step=step, ids=_id_list(ids), where=where, limit=limit, model=model,
        max_pixels=max_pixels, decode_options=dict(decode_options), batch_size=batch_size, threads=threads,
        actors=actors,
    )  # fmt: skip
    _, options = _codec_for(archive, model, opts.decode_options)  # the driver checks the model before any work
    selection, _, _ = select(archive, opts)
    if selection.num_rows == 0:
        raise DiffcError(f"no decodable image selected in {archive.url}")
    connect(address)
    spec = archive.manifest.codec_spec(model).to_dict()
    sizing = cluster_sizing(threads, actors)
    return decoded_dataset(archive, selection, storage, batch_size, sizing, spec, options, max_pixels, columns)


def _location(value: str | os.PathLike[str], what: str) -> str:
    """A path or URL argument as fsspec takes it: a ``pathlib.Path`` is its path."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{what} must be a path or URL (str or os.PathLike), got {value!r}")
    return value


def _id_list(ids: str | Sequence[str]) -> list[str]:
    """``ids`` as a list: one id given as a plain string is that id, not its characters."""
    return [ids] if isinstance(ids, str) else list(ids)


def _codec_for(archive, model: str | None, decode_options: dict) -> tuple[Any, dict]:
    """The archive's codec (checked against its manifest) and the validated decode options."""
    from .pipeline.manifest import check_same_codec

    codec = archive.manifest.codec_spec(model).build()
    check_same_codec(archive.manifest, codec.describe(), archive.url, "pass model= naming the model it was made with")
    return codec, codec.parse_decode_options(decode_options)
