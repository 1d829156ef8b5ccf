"""PNG output of ``diffc decode``: one file per image under ``OUTPUT/<id>.png``.

Names come from ids, so before any decoding a PNG decode checks that no two selected ids write one file (as
OUTPUT's filesystem compares names) and that OUTPUT holds none of them (unless ``--overwrite``, or
``--resume``, which finishes an interrupted decode: every PNG is written whole, so one that exists is done).
A record of the decode (:data:`RECORD_NAME`) lets ``--resume`` refuse to continue a different one.
"""

from __future__ import annotations

import io
import json
import posixpath
import tempfile
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from ..errors import DecodeTargetError
from .archive import STATUS_ERROR
from .commit import TMP_PREFIX, replace_file
from .destinations import is_local
from .sources import open_fs, public_url, remote_errors
from .stages import error_text


def output_name(image_id: str) -> str:
    """A relative PNG path for an id: sub-folders kept, but never ``..`` or an absolute path."""
    parts = [p for p in image_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    name = "/".join(parts) or "image"
    return name if name.lower().endswith(".png") else f"{name}.png"


def check_distinct_names(ids: list[str], folds: bool = True) -> None:
    """Refuse a PNG decode in which two selected ids share a file name (``a`` and ``a.png``; with ``folds``,
    the filesystem's, also ``Case.png`` and ``case.png`` or two Unicode spellings of one name: one file on
    macOS and Windows) or one id's file would be another's folder (``a.png`` and ``a.png/b``): one image
    would silently overwrite the other, or fail depending on write order. Checked before any decoding."""
    seen: dict[str, str] = {}
    clashes = []
    names = {}
    for image_id in ids:
        name = output_name(image_id)
        key = _name_key(name) if folds else name
        if key in seen:
            clashes.append(f"{seen[key]!r} and {image_id!r} -> {name}")
        else:
            seen[key], names[key] = image_id, name
    folders = {}  # every folder a name needs, by key: a file may not have the name of one
    for key in names:
        parts = key.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folders.setdefault("/".join(parts[:depth]), seen[key])
    for key, image_id in seen.items():
        if key in folders:
            clashes.append(f"{image_id!r} and {folders[key]!r}: {names[key]} would be both a file and a folder")
    if clashes:
        raise DecodeTargetError(
            f"{len(clashes)} selected id(s) would write the same PNG file as another ({'; '.join(clashes[:3])}); "
            "decode with --format parquet (it keeps ids), or select them apart with --ids / --where"
        )


def _name_key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def folds_names(fs, root: str) -> bool:
    """Whether OUTPUT's filesystem takes names that differ only in case or Unicode normalisation for one file
    (macOS, Windows; not Linux filesystems, not object stores). Probed with a temporary file in OUTPUT's
    nearest existing folder; a probe that cannot be written says no (the decode's own writes will fail)."""
    if not is_local(fs):
        return False
    folder = Path(root)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.NamedTemporaryFile(prefix="_DiffcProbe\u00e9-", dir=folder) as probe:
            name = Path(probe.name).name
            return (folder / name.lower()).exists() or (folder / unicodedata.normalize("NFD", name)).exists()
    except OSError:
        return False


def written_names(
    fs, root: str, ids: list[str], url: str, storage_options: Mapping[str, object], folds: bool = True
) -> tuple[list[bool], list[str]]:
    """Per id, whether OUTPUT already holds its PNG file, and the temporary files (:data:`~.commit.TMP_PREFIX`)
    an interrupted decode left beside them. Names compare as the filesystem does (``folds``: case and Unicode
    normalisation ignored). One non-recursive listing per folder the names go into, on the driver: never the
    whole tree under OUTPUT."""
    key = _name_key if folds else str
    names = [output_name(i) for i in ids]
    there: set[str] = set()
    leftovers: list[str] = []
    with remote_errors("list", url, storage_options):
        if not fs.isdir(root):
            return [False] * len(ids), []
        for folder in sorted({posixpath.dirname(n) for n in names}):
            path = f"{root}/{folder}" if folder else root
            if fs.isdir(path):
                for p in fs.ls(path, detail=False):
                    if posixpath.basename(p).startswith(TMP_PREFIX):
                        leftovers.append(p)
                    there.add(key(posixpath.relpath(p, root)))
    return [key(n) in there for n in names], leftovers


def check_not_written(
    fs, root: str, ids: list[str], url: str, storage_options: Mapping[str, object], folds: bool = True
) -> None:
    """Refuse a PNG decode that would replace files already in OUTPUT (an earlier decode at another bitrate,
    the user's own files) unless ``overwrite`` or ``resume``: they were replaced without a word, leaving a
    folder of mixed rates."""
    written, _ = written_names(fs, root, ids, url, storage_options, folds)
    taken = [output_name(i) for i, w in zip(ids, written, strict=True) if w]
    if taken:
        raise DecodeTargetError(
            f"OUTPUT {public_url(url)} already holds {len(taken)} of the {len(ids)} PNG files this decode would "
            f"write (e.g. {', '.join(taken[:3])}); pass --resume (resume=True) to finish an interrupted decode, "
            "--overwrite (overwrite=True) to replace them, or decode into another folder"
        )


# What a PNG decode writes into OUTPUT before any image, so that --resume can tell the decode it continues
# from another one (a PNG does not say which archive, rate or method made it).
RECORD_NAME = "_diffc_decode.json"
# Keys of a record that name, not define, the decode: an archive reached by another spelling of its URL is
# the same archive (its creation time, codec fingerprint and shards say which); "overwrite" is checked apart.
RECORD_LABELS = ("archive", "overwrite")


def write_record(fs, root: str, record: dict) -> None:
    fs.makedirs(root, exist_ok=True)
    replace_file(fs, f"{root}/{RECORD_NAME}", json.dumps(record, indent=1, sort_keys=True).encode())


def check_resumable(fs, root: str, record: dict, url: str, storage_options: Mapping[str, object]) -> None:
    """``--resume``: refuse unless OUTPUT's record says an earlier decode of the same archive with the same
    selection, rate and decode options wrote there - a resume would otherwise keep PNGs of another rate as
    done, leaving a folder of mixed rates."""
    path = f"{root}/{RECORD_NAME}"
    with remote_errors("read", url, storage_options):
        data = fs.cat_file(path) if fs.isfile(path) else None
    if data is None:
        raise DecodeTargetError(
            f"--resume: OUTPUT {public_url(url)} holds no record of an earlier decode ({RECORD_NAME}); decode into "
            "it with --overwrite, or into another folder"
        )
    try:
        earlier = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        earlier = None
    if not isinstance(earlier, dict):
        raise DecodeTargetError(f"--resume: {public_url(url)}/{RECORD_NAME} is not a decode record; use --overwrite")
    if earlier.get("overwrite"):
        raise DecodeTargetError(
            f"--resume: OUTPUT {public_url(url)} holds an --overwrite decode that did not finish: some of its PNGs "
            "may still be the decode it was replacing; decode again with --overwrite"
        )
    differ = sorted(
        k for k in record.keys() | earlier.keys() if k not in RECORD_LABELS and record.get(k) != earlier.get(k)
    )
    if differ:
        shown = "; ".join(f"{k} {earlier.get(k)!r} then, {record.get(k)!r} now" for k in differ[:3])
        raise DecodeTargetError(
            f"--resume: OUTPUT {public_url(url)} holds a decode made with other options ({shown}); resume with "
            "the options it was made with, or pass --overwrite to replace its files"
        )


def png_bytes(pixels: np.ndarray) -> bytes:
    """An image as PNG bytes (lossless: the decoded pixels exactly)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def write_pngs(batch: pa.Table, output: str, storage_options: Mapping[str, object]) -> pa.Table:
    """Ray task: write each decoded image to ``OUTPUT/<id>.png``, whole or not at all (a killed decode leaves
    no truncated PNG for ``--resume`` to take as done); the PNG bytes do not travel further. An image that
    cannot be written (a name too long for the filesystem, a folder in the way) becomes an error row and the
    job goes on, as one that does not decode does."""
    fs, root = open_fs(output, storage_options)
    root = root.rstrip("/")
    status, errors = batch.column("status").to_pylist(), batch.column("error").to_pylist()
    for i, (image_id, png) in enumerate(
        zip(batch.column("id").to_pylist(), batch.column("png").to_pylist(), strict=True)
    ):
        if png is not None:
            path = f"{root}/{output_name(image_id)}"
            try:
                fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                replace_file(fs, path, png)
            except OSError as exc:
                status[i], errors[i] = STATUS_ERROR, error_text("write", exc)
    batch = batch.set_column(batch.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    return batch.drop_columns(["png"])
