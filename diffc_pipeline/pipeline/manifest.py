"""The archive manifest: ``manifest.json`` at the archive root, written before the first shard.

It pins what every shard of the archive shares - format version, codec parameters and fingerprint, model
identity, input, seed and shard size - so a later run or a decoder can refuse an archive it would
misread instead of mixing streams of two models. Its shard list is a convenience for plain readers; the
commit markers (see :mod:`.commit`) remain the source of truth and the list is rebuilt from them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field

import fsspec

from .. import __version__
from ..errors import ArchiveError, ModelMismatchError
from .archive import FORMAT_NAME, FORMAT_VERSION

MANIFEST_NAME = "manifest.json"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    codec: dict  # {"config": CodecConfig.to_dict(), "fingerprint": str, "num_steps": int, "logsnrs": [...]}
    model: dict  # {"name": str, "sha256": str}
    source: dict  # Source.describe(): url (no credentials), kind, columns
    seed: int
    shard_size: int
    num_images: int
    shards: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # incremental runs, oldest first (see docs/format.md)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)

    @property
    def num_steps(self) -> int:
        return int(self.codec["num_steps"])

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise ArchiveError(f"{where} is not a {FORMAT_NAME} manifest")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(
                f"{where} is format version {d.get('format_version')}; this tool reads and writes version "
                f"{FORMAT_VERSION} only (nothing was changed)"
            )
        try:
            return cls(**d)
        except TypeError as exc:
            raise ArchiveError(f"{where} has missing or unknown fields: {exc}") from None


def read_manifest(fs: fsspec.AbstractFileSystem, root: str) -> Manifest | None:
    """The archive's manifest, or None when ``root`` holds none."""
    path = f"{root}/{MANIFEST_NAME}"
    fs.invalidate_cache(root)
    if not fs.exists(path):
        return None
    return Manifest.from_json(fs.cat_file(path), path)


def write_manifest(fs: fsspec.AbstractFileSystem, root: str, manifest: Manifest) -> None:
    """Replace the manifest whole: a temporary file moved over it locally, a single PUT on object stores."""
    manifest.updated_at = now()
    fs.makedirs(root, exist_ok=True)
    tmp = f"{root}/{MANIFEST_NAME}.tmp-{uuid.uuid4().hex}"
    fs.pipe_file(tmp, manifest.to_json())
    fs.mv(tmp, f"{root}/{MANIFEST_NAME}")


def check_same_codec(existing: Manifest, codec: dict, model: dict, where: str, hint: str) -> None:
    """Refuse to add to, or decode, an archive made with another model or codec configuration."""
    theirs = f"{existing.model.get('name')}@{str(existing.model.get('sha256'))[:12]}"
    if existing.model.get("sha256") != model["sha256"]:
        raise ModelMismatchError(
            f"{where} was made with model {theirs}, not {model['name']}@{model['sha256'][:12]}; {hint}"
        )
    if existing.codec.get("fingerprint") != codec["fingerprint"]:
        raise ModelMismatchError(
            f"{where} was made with other codec parameters {existing.codec.get('config')} (fingerprint "
            f"{str(existing.codec.get('fingerprint'))[:12]}, this run {codec['fingerprint'][:12]}); {hint}"
        )


def check_same_plan(existing: Manifest, source: dict, seed: int, shard_size: int, where: str) -> None:
    """A resumed run must cut the same shards, or committed shards and new ones would overlap."""
    mine = {"input": source, "seed": seed, "shard size": shard_size}
    theirs = {"input": existing.source, "seed": existing.seed, "shard size": existing.shard_size}
    diff = [k for k in mine if mine[k] != theirs[k]]
    if diff:
        details = "; ".join(f"{k}: archive has {theirs[k]!r}, this run {mine[k]!r}" for k in diff)
        raise ArchiveError(
            f"{where} was made from another plan ({details}); resume with the same options, "
            "choose another OUTPUT, or pass --overwrite"
        )
