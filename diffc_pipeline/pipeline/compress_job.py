"""``diffc compress``: plan, then stream images through Ray Data into committed Parquet shards.

Stages: read + decode + validate (Ray tasks, a fraction of a CPU each) -> encode (an actor pool, each actor
loading the model once) -> the driver gathers each shard's rows and commits it (data file, then marker)
from a writer thread while the pipeline keeps running. Every planned image yields exactly one row - coded
or an error row - so a shard is complete when its planned count of rows has arrived.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from .. import __version__
from ..codecs import Codec, CodecSpec, resolve
from ..errors import ArchiveError, InvalidInputError, check_at_least
from ..images import DEFAULT_BATCH_PIXELS, DEFAULT_MAX_PIXELS
from . import faults
from .archive import STATUS_OK, encoded_to_shard, shard_to_parquet_bytes
from .commit import commit_shard, committed_shards, data_path, discard_uncommitted, remove_shards
from .destinations import check_output_folder, removed_if_left_empty
from .incremental import EXAMPLES, Delta, compare, held_sources, new_run_id
from .lock import DEFAULT_STALE_S, LOCK_NAME, archive_lock, check_held
from .manifest import (
    MANIFEST_NAME,
    Manifest,
    check_same_codec,
    check_same_plan,
    comparable_source,
    differences,
    now,
    read_manifest,
    write_manifest,
)
from .plan import Plan, ShardPlan, ids_digest, make_plan, shard_name
from .progress import JobProgress
from .runtime import READ_TASK_CPUS, ActorSizing, cluster_sizing, model_stage, probe_cluster, ray_session
from .sources import list_source, open_fs, public_url, would_list
from .stages import Encoder, read_and_decode


@dataclass
class CompressOptions:
    input: str
    output: str
    storage_options: dict = field(default_factory=dict, repr=False)  # secrets: never printed or stored
    image_column: str = "image"
    id_column: str | None = None  # None: the "id" column if there is one, else FILE:ROW ids
    shard_size: int = 1000
    seed: int = 0
    codec: str = "diffc"  # a name in the codec registry
    codec_options: dict = field(default_factory=dict)  # the codec's stream options (strings accepted)
    model: str | None = None  # the codec's model spec (None: the codec's default; 'builtin' for DiffC)
    overwrite: bool = False
    address: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 16
    batch_pixels: int = DEFAULT_BATCH_PIXELS  # pixels per codec call (a batch of large photos is cut)
    threads: int = 0  # torch threads per model actor (0: sized to the machine)
    actors: int = 0  # model actors (0: sized to the cluster)
    limit: int = 0  # only the first N inputs in plan order (0: all)
    incremental: bool = False  # compress only new/changed sources into new shards
    retry_errors: bool = False  # incremental: code again every error row of an unchanged source, not only read errors
    wait_lock: float = 0.0  # seconds to wait for another run's lock (every run holds the archive lock)
    lock_timeout: float = DEFAULT_STALE_S  # a lock not refreshed for this long is stale and broken

    def __post_init__(self) -> None:
        """Numbers out of range fail here, naming the option, before Ray starts or anything is written (the
        CLI's own ranges catch them for its users; the Python API comes straight here)."""
        check_at_least(
            self,
            shard_size=1, batch_size=1, batch_pixels=1, max_pixels=1, threads=0, actors=0, limit=0, wait_lock=0,
            lock_timeout=1,
        )  # fmt: skip
        if self.retry_errors and not self.incremental:
            raise InvalidInputError(
                "--retry-errors (retry_errors=) codes an incremental archive's error rows again; add --incremental"
            )


@dataclass
class PreparedJob:
    """Everything decided before any write: the plan, the manifest to write, what is already done."""

    plan: Plan
    manifest: Manifest
    spec: CodecSpec  # what each model actor builds
    committed: dict[str, dict]
    pending: list[ShardPlan]
    replaces_archive: bool  # --overwrite over an existing archive
    fs: fsspec.AbstractFileSystem
    root: str
    delta: Delta | None = None  # incremental runs: how the listing compares with the archive
    run: dict | None = None  # incremental runs: this run's record in the manifest's ``runs``
    manifest_written_at: float = 0.0  # time.monotonic() of the last manifest write of this run
    manifest_behind: bool = False  # shards committed since then
    commits_started: int = 0  # counted by the (single) commit thread only
    lock_id: str = ""  # the run id the archive lock names; every write checks the lock still does

    def describe(self) -> dict:
        """The dry-run report."""
        src = self.plan.source
        known = pc.sum(pc.max_element_wise(src.items.column("source_size"), 0)).as_py() or 0
        return {
            "input": src.url,
            "kind": src.kind,
            "images": src.items.num_rows,
            "input_bytes_listed": known,
            "skipped_non_image_files": src.skipped,
            "shards": len(self.plan.shards),
            "shard_size": self.plan.shard_size,
            "already_committed": 0 if self.replaces_archive else len(self.committed),
            "to_do": [s.name for s in self.pending],
            "images_to_do": sum(s.size for s in self.pending),
            "codec": self.manifest.codec_name,
            "model": self.manifest.model_label(),
            "codec_fingerprint": self.manifest.codec["fingerprint"][:12],
            "num_chunks": self.manifest.num_chunks,
            "overwrite": self.replaces_archive,
            **(_delta_counts(self.delta) if self.delta else {}),
        }


def _delta_counts(delta: Delta) -> dict:
    return {
        "new": delta.new,
        "changed": delta.changed,
        "unchanged": delta.unchanged,
        "retried": delta.retried,
        "deleted": len(delta.deleted),
        "deleted_examples": delta.deleted[:EXAMPLES],
    }


@dataclass
class CompressSummary:
    images: int
    failures: int
    bytes_written: int
    bpp: float  # total bits over total pixels of the coded images
    wall_s: float
    images_per_s: float
    shards_written: int
    shards_skipped: int
    actors: str
    skipped_non_image_files: int = 0  # files in the input folder without an image extension (not listed)
    run_id: str = ""  # incremental runs only, like the counts below
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    retried: int = 0  # error rows of unchanged sources coded again (read errors always; all with retry_errors)
    deleted: int = 0
    deleted_examples: list[str] = field(default_factory=list)


def codec_spec(opts: CompressOptions) -> CodecSpec:
    """The options' codec, validated against the registry (an unknown codec or option names the valid ones)."""
    return resolve(opts.codec, opts.codec_options, opts.model)


def prepare(opts: CompressOptions, codec: Codec, run_id: str = "") -> PreparedJob:
    """List the input, cut shards, and check OUTPUT: refuse anything that would mix or lose records."""
    spec = codec_spec(opts)
    source = list_source(opts.input, opts.storage_options, opts.image_column, opts.id_column, opts.limit)
    fs, root = open_fs(opts.output, opts.storage_options)
    root = root.rstrip("/")
    where = public_url(opts.output)
    description = codec.describe()
    manifest = Manifest.for_codec(
        description,
        spec.model,
        source=source.describe(),
        seed=opts.seed,
        shard_size=opts.shard_size,
        num_images=source.items.num_rows,
    )
    existing = read_manifest(fs, root)
    if opts.incremental:
        return _prepare_incremental(opts, spec, source, manifest, description, existing, fs, root, run_id)
    plan = make_plan(source, opts.shard_size, opts.seed)
    if existing is None:
        _check_empty(fs, root, where)
        return PreparedJob(plan, manifest, spec, {}, list(plan.shards), False, fs, root)
    if opts.overwrite:
        return PreparedJob(plan, manifest, spec, committed_shards(fs, root), list(plan.shards), True, fs, root)
    if existing.runs:
        raise ArchiveError(f"{where} was written by incremental runs; add --incremental (or use --overwrite)")
    check_same_codec(
        existing, description, where, "use the same --codec, --model and --codec-opt, another OUTPUT, or --overwrite"
    )
    check_same_plan(existing, manifest.source, opts.seed, opts.shard_size, where)
    manifest.created_at = existing.created_at
    committed = committed_shards(fs, root)
    by_name = {s.name: s for s in plan.shards}
    for name, marker in committed.items():
        shard = by_name.get(name)
        if shard is None or marker.get("ids_sha256") != shard.ids_sha256:
            raise ArchiveError(
                f"committed shard {name} of {where} holds other images than this run plans for it (the input "
                "changed since it was written); add --incremental to code only what is new or changed, or use "
                "another OUTPUT or --overwrite"
            )
    pending = [s for s in plan.shards if s.name not in committed]
    return PreparedJob(plan, manifest, spec, committed, pending, False, fs, root)


def _without_limit(source: dict) -> dict:
    return {k: v for k, v in comparable_source(source).items() if k != "limit"}


def _check_empty(fs: fsspec.AbstractFileSystem, root: str, where: str) -> None:
    """A new archive goes into a new or empty folder (the run's own lock file aside)."""
    if fs.exists(root) and [p for p in fs.ls(root, detail=False) if p.rstrip("/").rsplit("/", 1)[-1] != LOCK_NAME]:
        raise ArchiveError(
            f"{where} is not empty and holds no diffc archive (no manifest.json); choose an empty or new OUTPUT"
        )


def _prepare_incremental(
    opts: CompressOptions,
    spec: CodecSpec,
    source,
    manifest: Manifest,
    description: dict,
    existing: Manifest | None,
    fs: fsspec.AbstractFileSystem,
    root: str,
    run_id: str,
) -> PreparedJob:
    """Plan only the new and changed sources, into shards numbered after every committed one.

    Committed shards are never rewritten: a changed source gets a new row in a new shard, which is its
    latest version because shard names sort in commit order. The plan's input (URL, kind, columns) and
    seed must match the archive's; the shard size may differ between runs.
    """
    where = public_url(opts.output)
    if opts.overwrite:
        raise ArchiveError("--incremental never rewrites committed shards; it cannot be combined with --overwrite")
    committed: dict[str, dict] = {}
    if existing is None:
        _check_empty(fs, root, where)
    else:
        check_same_codec(existing, description, where, "use the same --codec, --model and --codec-opt")
        if existing.model and existing.model.get("spec") and manifest.model and not manifest.model.get("spec"):
            manifest.model["spec"] = existing.model["spec"]  # a model PATH that is the archive's named model
        # the input must be the same; a --limit may change (an incremental run codes whatever is new in its
        # listing, so a trial archive made with --limit 3 grows into the whole dataset)
        theirs = {**_without_limit(existing.source), "seed": existing.seed}
        mine = {**_without_limit(manifest.source), "seed": opts.seed}
        details = differences(theirs, mine)
        if details:
            raise ArchiveError(f"{where} was made from another input ({details}); use another OUTPUT")
        manifest.created_at = existing.created_at
        manifest.runs = existing.runs
        for r in manifest.runs:  # we hold the lock: a run still marked running was killed
            if r.get("status") == "running":
                r["status"] = "interrupted"
        committed = committed_shards(fs, root)
    delta = compare(source.items, held_sources(fs, root, list(committed)), source.listed_ids, opts.retry_errors)
    first = 1 + max((int(name.rsplit("-", 1)[-1]) for name in committed), default=-1)
    plan = make_plan(replace(source, items=delta.todo), opts.shard_size, opts.seed, first)
    manifest.num_images = sum(m["rows"] for m in committed.values()) + delta.todo.num_rows
    run = {
        "run_id": run_id,
        "started_at": now(),
        "finished_at": None,
        "status": "running",
        **_delta_counts(delta),
        "failed": 0,
        "shards": [s.name for s in plan.shards],
        "tool_version": __version__,
        "codec": manifest.codec_name,
        "model": manifest.model_label(),
        "codec_fingerprint": manifest.codec["fingerprint"][:12],
    }
    return PreparedJob(plan, manifest, spec, committed, list(plan.shards), False, fs, root, delta, run)


def check_destination(opts: CompressOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    """The archive's filesystem and root, once ``OUTPUT`` is known to be a folder outside the input's (what
    a dry run checks too: it must not promise a run that would be refused)."""
    fs, root = open_fs(opts.output, opts.storage_options)
    root = root.rstrip("/")
    check_output_folder(fs, root, opts.output, opts.storage_options)
    holds = [root, f"{root}/{MANIFEST_NAME}", data_path(root, shard_name(0))]  # what the archive will hold
    if would_list(opts.input, opts.storage_options, fs, holds):
        raise ArchiveError(
            f"OUTPUT {public_url(opts.output)} lies inside what INPUT {public_url(opts.input)} lists: the next run "
            "would list the archive's own files as input; write the archive elsewhere"
        )
    return fs, root


def run_compress(
    opts: CompressOptions, progress: JobProgress, codec: Codec | None = None, say: Callable[[str], None] = print
) -> CompressSummary:
    """Run the whole job (or the part not committed yet); ``codec`` (the driver's copy, for the manifest) is
    built from ``opts`` when not given.

    Every run holds the archive lock from before it reads the archive until it is done: a second run
    would otherwise clear the first one's not-yet-committed shard files as leftovers, or (incremental)
    plan the same shard names and interleave manifest writes.
    """
    codec = codec or codec_spec(opts).build()
    probe_cluster(opts.address)  # before the archive is touched: a dead address leaves no manifest behind
    fs, root = check_destination(opts)
    run_id = new_run_id()
    # bad input (no images, a missing folder) fails in prepare(), inside the lock: the folder the lock made
    # for a new archive goes again
    with removed_if_left_empty(fs, root), archive_lock(fs, root, run_id, opts.wait_lock, opts.lock_timeout, say):
        if not opts.incremental:
            return _run(replace(prepare(opts, codec), lock_id=run_id), opts, progress)
        job = replace(prepare(opts, codec, run_id), lock_id=run_id)
        job.manifest.runs.append(job.run)
        try:
            summary = _run(job, opts, progress)
        except BaseException:
            _finish_run(job, "failed", progress.tally.failures)
            raise
        _finish_run(job, "partial" if summary.failures else "ok", summary.failures)
    return replace(summary, run_id=run_id, **_delta_counts(job.delta))


def _finish_run(job: PreparedJob, status: str, failures: int) -> None:
    job.run.update(status=status, failed=failures, finished_at=now())
    _sync_manifest(job)


def _run(job: PreparedJob, opts: CompressOptions, progress: JobProgress) -> CompressSummary:
    fs, root = job.fs, job.root
    if job.replaces_archive:
        remove_shards(fs, root)
        job.committed = {}
    discard_uncommitted(fs, root, set(job.committed))
    _sync_manifest(job)
    skipped = len(job.committed)
    ignored = job.plan.source.skipped
    if not job.pending:
        return CompressSummary(0, 0, 0, float("nan"), 0.0, 0.0, 0, skipped, "none", ignored)
    progress.start(sum(s.size for s in job.pending))
    try:
        with ray_session(opts.address):
            sizing = cluster_sizing(opts.threads, opts.actors)
            written = _drain(_build_dataset(job, opts, sizing), job, progress)
    finally:
        progress.stop()
    t = progress.tally
    return CompressSummary(
        t.images,
        t.failures,
        written,
        t.bpp,
        t.wall_s,
        t.images_per_s,
        len(job.pending),
        skipped,
        sizing.describe(),
        ignored,
    )


def _build_dataset(job: PreparedJob, opts: CompressOptions, sizing: ActorSizing):
    import ray.data

    ds = ray.data.from_arrow(job.plan.read_units(job.pending))
    ds = ds.map_batches(
        read_and_decode,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=READ_TASK_CPUS,
        fn_kwargs=dict(
            storage_options=opts.storage_options,
            image_column=opts.image_column,
            max_pixels=opts.max_pixels,
            batch_size=opts.batch_size,
        ),
    )
    return model_stage(
        ds,
        Encoder,
        opts.batch_size,
        sizing,
        spec=job.spec.to_dict(),
        fingerprint=job.manifest.codec["fingerprint"],
        batch_pixels=opts.batch_pixels,
        max_pixels=opts.max_pixels,
        fault=faults.encoder_setting(),
    )


def _drain(dataset, job: PreparedJob, progress: JobProgress) -> int:
    """Consume the encoder's rows; commit each shard from a writer thread once all its rows are in.

    A row whose image was already seen (a batch replayed after a worker died) is dropped, so a shard
    commits each image exactly once.
    """
    shards = {s.index: s for s in job.pending}
    buffers: dict[int, list[pa.Table]] = defaultdict(list)
    seen: dict[int, set[str]] = defaultdict(set)
    written = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as pool:
        futures: set[Future] = set()
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = _new_rows(batch, seen)
            progress.add(batch.num_rows, *_batch_stats(batch))
            for index in pc.unique(batch.column("shard")).to_pylist():
                buffers[index].append(batch.filter(pc.equal(batch.column("shard"), index)))
                if len(seen[index]) == shards[index].size:
                    futures.add(pool.submit(_commit, job, shards[index], buffers.pop(index)))
            done = {f for f in futures if f.done()}
            futures -= done
            written += _record(job, done)
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            written += _record(job, done)
    if job.manifest_behind:
        _sync_manifest(job)
    if buffers:
        missing = ", ".join(shards[i].name for i in sorted(buffers))
        raise ArchiveError(f"the pipeline ended before shards {missing} were complete; rerun to finish them")
    return written


def _new_rows(batch: pa.Table, seen: dict[int, set[str]]) -> pa.Table:
    """The rows of ``batch`` whose (shard, id) was not seen before; records them as seen."""
    keep = []
    for shard, image_id in zip(batch.column("shard").to_pylist(), batch.column("id").to_pylist(), strict=True):
        keep.append(image_id not in seen[shard])
        seen[shard].add(image_id)
    return batch if all(keep) else batch.filter(pa.array(keep))


def _batch_stats(batch: pa.Table) -> tuple[int, int, int]:
    """``(failures, bits, pixels)`` of an encoder batch (bits and pixels over its coded images)."""
    failures, bits, pixels = 0, 0, 0
    for status, cum, h, w in zip(
        *(batch.column(c).to_pylist() for c in ("status", "cum_bits", "height", "width")), strict=True
    ):
        if status != STATUS_OK:
            failures += 1
        else:
            bits += cum[-1]
            pixels += h * w
    return failures, bits, pixels


def _commit(job: PreparedJob, shard: ShardPlan, parts: list[pa.Table]) -> dict:
    """Order the shard's rows as planned, check they are exactly the planned images, write and commit."""
    job.commits_started += 1
    faults.at_commit(job.commits_started)
    rows = pa.concat_tables(parts)
    planned = job.plan.items.column("id").slice(shard.start, shard.size).to_pylist()
    position = {image_id: i for i, image_id in enumerate(planned)}
    order = pa.array([position[i] for i in rows.column("id").to_pylist()])
    rows = rows.take(pc.sort_indices(order))
    if ids_digest(rows.column("id").to_pylist()) != shard.ids_sha256:
        raise ArchiveError(f"shard {shard.name}: rows do not match the planned images (lost or duplicated rows)")
    ok = pc.equal(rows.column("status"), STATUS_OK)
    coded = rows.filter(ok)
    _, bits, pixels = _batch_stats(coded)
    payload = bits // 8
    stats = {
        "rows": rows.num_rows,
        "ok": coded.num_rows,
        "errors": rows.num_rows - coded.num_rows,
        "payload_bytes": payload,
        "bits": bits,
        "pixels": pixels,
        "ids_sha256": shard.ids_sha256,
        "codec_fingerprint": job.manifest.codec["fingerprint"],
        "committed_at": now(),
    }
    metadata = {
        "format_version": job.manifest.format_version,
        "shard": shard.name,
        "codec": job.manifest.codec_name,
        "codec_fingerprint": job.manifest.codec["fingerprint"],
        "model": job.manifest.model,
        "num_chunks": job.manifest.num_chunks,
    }
    table = encoded_to_shard(rows, job.manifest.num_chunks, metadata)
    if job.lock_id:
        check_held(job.fs, job.root, job.lock_id, f"shard {shard.name}")
    return commit_shard(job.fs, job.root, shard.name, shard_to_parquet_bytes(table), stats)


def _record(job: PreparedJob, done: set[Future]) -> int:
    """Note finished commits in the manifest (re-raising a failed commit); returns bytes written."""
    written = 0
    for future in done:
        marker = future.result()
        job.committed[marker["shard"]] = marker
        written += marker["file_bytes"]
    if done:
        job.manifest_behind = True
        if time.monotonic() - job.manifest_written_at >= MANIFEST_EVERY_S:
            _sync_manifest(job)
    return written


# The manifest mirrors the commit markers (the source of truth) for people and plain readers. Rewritten after
# every commit it cost a night of 1,000 small shards 1,000 PUTs of a file that grows with the archive (17 MB
# at 100,000 shards), so during a run it is rewritten at most this often, and once more at the end.
MANIFEST_EVERY_S = 30.0


def _sync_manifest(job: PreparedJob) -> None:
    job.manifest_written_at, job.manifest_behind = time.monotonic(), False
    job.manifest.shards = [
        {k: m[k] for k in ("shard", "file", "rows", "ok", "errors", "file_bytes")}
        for _, m in sorted(job.committed.items())
    ]
    if job.lock_id:
        check_held(job.fs, job.root, job.lock_id, "the manifest")
    write_manifest(job.fs, job.root, job.manifest)
