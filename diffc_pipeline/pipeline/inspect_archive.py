"""``diffc inspect``: what an archive holds, from its manifest, markers and index columns only (any codec)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pyarrow.compute as pc

from .archive import STATUS_OK
from .incremental import latest_rows
from .lock import holder_run
from .reader import open_archive, read_index
from .sources import remote_errors

QUANTILES = (0.1, 0.5, 0.9)
TOP_ERRORS = 5
EXAMPLE_IDS = 3  # ids shown per error message: enough to find the images, few enough for one line
MESSAGE_CHARS = 200  # an error message is shown up to this many characters, cut between words
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def inspect_archive(url: str, storage_options: Mapping[str, object]) -> dict:
    """A JSON-able summary: counts, bytes, bpp per chunk (total bits over total pixels, and per-image
    quantiles), codec, model, errors. Only the manifest, markers and index columns are read."""
    archive = open_archive(url, storage_options)
    m = archive.manifest
    with remote_errors("read", url, storage_options):
        lock_holder = holder_run(archive.fs, archive.root)
    index, _ = read_index(archive)
    rows = index.num_rows
    index = latest_rows(index)  # counts and bpp describe the latest version of each image
    ok = index.filter(pc.equal(index.column("status"), STATUS_OK))
    failed = index.filter(pc.not_equal(index.column("status"), STATUS_OK))
    per_chunk = []
    logsnrs = m.codec.get("details", {}).get("logsnrs")
    if not isinstance(logsnrs, list) or len(logsnrs) != m.codec["num_chunks"] + 1:  # absent, or a foreign manifest's
        logsnrs = None
    # An archive may come from elsewhere: a row without a positive size or with another number of bit counts
    # than the manifest's chunks is counted as malformed and left out of the rates, not a crash.
    sizes = zip(ok.column("height").to_pylist(), ok.column("width").to_pylist(), strict=True)
    counts = ok.column("cum_bits").to_pylist()
    sound = [
        bool(h and w and h > 0 and w > 0 and c is not None and len(c) == m.codec["num_chunks"])
        for (h, w), c in zip(sizes, counts, strict=True)
    ]
    malformed = sound.count(False)
    if malformed:
        ok = ok.filter(np.array(sound, dtype=bool))
    if ok.num_rows:
        bits = np.array(ok.column("cum_bits").to_pylist(), dtype=np.float64)  # (images, chunks)
        pixels = (np.array(ok.column("height").to_pylist()) * np.array(ok.column("width").to_pylist()))[:, None]
        bpp = bits / pixels
        for k in range(bpp.shape[1]):
            q = np.quantile(bpp[:, k], QUANTILES)
            per_chunk.append(
                {
                    "chunk": k + 1,
                    **({"logsnr": logsnrs[k + 1]} if logsnrs else {}),
                    # Total bits over total pixels: a mean of per-image bpp lets one tiny image dominate.
                    "bpp": float(bits[:, k].sum() / pixels.sum()),
                    **{f"p{int(p * 100)}": float(v) for p, v in zip(QUANTILES, q, strict=True)},
                }
            )
    errors, examples = _error_counts(failed.column("id").to_pylist(), failed.column("error").to_pylist())
    top_errors = errors.most_common(TOP_ERRORS)
    return {
        "archive": archive.url,
        "format_version": m.read_from_format or m.format_version,  # as stored: a format-1 manifest reads as 2
        "tool_version": m.tool_version,
        "created_at": m.created_at,
        "source": m.source,
        "model": m.model,
        "codec": {k: m.codec[k] for k in ("name", "options", "fingerprint", "num_chunks", "progressive")},
        "planned_images": m.num_images,
        "shards": {"committed": len(archive.shards), "planned": _planned_shards(m, archive.shards)},
        "images": index.num_rows,
        "rows": rows,  # older versions included
        "runs": m.runs,
        "lock_holder": lock_holder,  # the run writing now (None: no run is)
        "ok": ok.num_rows,
        "failures": failed.num_rows,
        "malformed": malformed,  # rows marked ok whose size or bit counts make no sense (left out of bpp)
        "file_bytes": sum(s.get("file_bytes", 0) for s in archive.shards.values()),
        "payload_bytes": sum(s.get("payload_bytes", 0) for s in archive.shards.values()),
        "bpp_per_chunk": per_chunk,
        "top_errors": top_errors,  # [(message, count)], most frequent first
        "top_error_ids": {message: examples[message] for message, _ in top_errors},  # a few ids per message
    }


def _error_counts(ids: list[str], errors: list[str | None]) -> tuple[Counter, dict[str, list[str]]]:
    """Error rows grouped by message, how many, and the first few ids of each, so that a user can find the
    failed images and not only read what went wrong. Messages that differ only in their numbers (sizes,
    offsets) are one group, shown as its first message and marked "(numbers vary)"."""
    groups: Counter = Counter()
    examples: dict[str, list[str]] = {}
    first: dict[str, str] = {}
    varied: set[str] = set()
    for image_id, error in zip(ids, errors, strict=True):
        if not error:
            continue
        message = _shorten(error.strip())
        key = _NUMBER.sub("#", message)
        if first.setdefault(key, message) != message:
            varied.add(key)
        groups[key] += 1
        if len(examples.setdefault(key, [])) < EXAMPLE_IDS:
            examples[key].append(image_id)
    shown = {key: first[key] + (" (numbers vary)" if key in varied else "") for key in groups}
    return Counter({shown[k]: n for k, n in groups.items()}), {shown[k]: v for k, v in examples.items()}


def _shorten(message: str) -> str:
    """``message`` up to :data:`MESSAGE_CHARS`, cut at a space (never inside a number or a name)."""
    if len(message) <= MESSAGE_CHARS:
        return message
    cut = message.rfind(" ", 0, MESSAGE_CHARS)
    return message[: cut if cut > 0 else MESSAGE_CHARS] + " ..."


def _planned_shards(m, committed: Mapping[str, dict]) -> int:
    """Incremental archives plan shards run by run: the committed ones plus what the last run has left to do."""
    if m.runs:
        return len(committed) + sum(1 for name in m.runs[-1].get("shards", []) if name not in committed)
    return -(-m.num_images // m.shard_size)
