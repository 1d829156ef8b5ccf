"""The archive manifest: ``manifest.json`` at the archive root, written before the first shard.

It pins what every shard of the archive shares - format version, the codec (name, options, fingerprint),
its model's identity, input, seed and shard size - so a later run or a decoder can refuse an archive it would
misread instead of mixing streams of two models, and a decoder knows which codec to build. Its shard list is
a convenience for plain readers; the commit markers (see :mod:`.commit`) remain the source of truth and the
list is rebuilt from them.

Format 1 (DiffC only, before the codec registry) is read by converting it to format 2 in memory; the next
write by a run (``--incremental``) stores it as format 2. Format-1 shards are read as they are (their rows
have the same layout).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field

import fsspec

from .. import __version__
from ..codecs.base import MAX_CHUNKS
from ..errors import ArchiveError, ModelMismatchError, is_whole
from .archive import FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS
from .commit import replace_file
from .sources import canonical_url

MANIFEST_NAME = "manifest.json"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    codec: dict  # Codec.describe() without "model": name, options, fingerprint, num_chunks, progressive, details
    model: dict | None  # {"name", "sha256", "spec"} (spec: the --model value when it names a built-in), or None
    source: dict  # Source.describe(): url (no credentials), kind, columns
    seed: int
    shard_size: int
    num_images: int
    shards: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # incremental runs, oldest first (see docs/format.md)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    read_from_format: int | None = None  # 1: converted from format 1 when read (stored as 2 when next written)
    tool_version: str = __version__
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)

    @property
    def num_chunks(self) -> int:
        return int(self.codec["num_chunks"])

    @property
    def codec_name(self) -> str:
        return str(self.codec["name"])

    def model_label(self) -> str:
        """``name@sha256[:12]`` of the model, or ``none`` for codecs without one."""
        return f"{self.model['name']}@{self.model['sha256'][:12]}" if self.model else "none"

    def codec_spec(self, model: str | None = None):
        """The :class:`~diffc_pipeline.codecs.CodecSpec` that decodes this archive; ``model`` overrides the
        recorded model spec (needed when the archive was made with a model PATH)."""
        from ..codecs import CodecSpec
        from ..errors import InvalidInputError

        if self.model is None:
            if model is not None:
                raise InvalidInputError(f"this archive's codec {self.codec_name!r} takes no model (got --model)")
            return CodecSpec(self.codec_name, dict(self.codec["options"]), None)
        spec = model or self.model.get("spec")
        if spec is None:
            raise ModelMismatchError(
                f"this archive was made with model {self.model_label()} from a model directory; "
                "pass --model naming that directory"
            )
        return CodecSpec(self.codec_name, dict(self.codec["options"]), spec)

    @classmethod
    def for_codec(cls, description: dict, model_spec: str | None, **fields) -> Manifest:
        """A new manifest for a codec's :meth:`~diffc_pipeline.codecs.Codec.describe`."""
        codec = {k: v for k, v in description.items() if k != "model"}
        model = description.get("model")
        if model is not None:
            from ..models import NAMED_MODELS  # here, not at the top: reading a manifest needs no torch

            # a name every installation has is the default for decoding the archive
            model = {**model, "spec": model_spec if model_spec in NAMED_MODELS else None}
        return cls(codec=codec, model=model, **fields)

    def to_json(self) -> bytes:
        d = asdict(self)
        d.pop("read_from_format")
        return json.dumps(d, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise ArchiveError(f"{where} is not a {FORMAT_NAME} manifest")
        if d.get("format_version") not in READABLE_VERSIONS:
            raise ArchiveError(
                f"{where} is format version {d.get('format_version')}; this tool reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))} and writes {FORMAT_VERSION} (nothing was changed)"
            )
        if d["format_version"] == 1:
            try:
                d = _from_format_1(d)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                raise ArchiveError(f"{where} is a malformed format-1 manifest ({type(exc).__name__}: {exc})") from None
        try:
            manifest = cls(**d)
        except TypeError as exc:
            raise ArchiveError(f"{where} has missing or unknown fields: {exc}") from None
        problem = _shape_problem(manifest)
        if problem:
            raise ArchiveError(f"{where} is malformed: {problem}")
        # Chunks per image size every reader's column list and every decode: bounded before anything is built.
        n = manifest.codec.get("num_chunks")  # the codec is an object: checked above
        if not is_whole(n) or not 1 <= n <= MAX_CHUNKS:
            raise ArchiveError(f"{where} names {n!r} chunks per image; an archive holds 1 to {MAX_CHUNKS}")
        return manifest


def _shape_problem(m: Manifest) -> str | None:
    """What is wrong with the types of a manifest's fields, if anything: an edited or foreign manifest must be
    one clear error when read, not a ``KeyError`` or a division by zero deep in inspect or decode."""

    if not isinstance(m.codec, dict) or not isinstance(m.codec.get("name"), str):
        return "codec must be an object with a name"
    for key in ("options", "details"):
        if not isinstance(m.codec.get(key, {}), dict):
            return f"codec.{key} must be an object"
    if m.model is not None and not (
        isinstance(m.model, dict) and isinstance(m.model.get("name"), str) and isinstance(m.model.get("sha256"), str)
    ):
        return "model must be null or an object with a name and a sha256"
    if not isinstance(m.source, dict):
        return "source must be an object"
    if (
        not (is_whole(m.seed) and is_whole(m.shard_size) and is_whole(m.num_images))
        or m.shard_size < 1
        or m.num_images < 0
    ):
        return "seed, shard_size (>= 1) and num_images (>= 0) must be integers"
    if not isinstance(m.runs, list) or not all(isinstance(r, dict) for r in m.runs):
        return "runs must be a list of objects"
    if not isinstance(m.shards, list):
        return "shards must be a list"
    return None


def _from_format_1(d: dict) -> dict:
    """A format-1 manifest (DiffC only: ``codec = {config, fingerprint, num_steps, logsnrs}``) as format 2.

    The fingerprint is kept as written: it is what format-1 shards carry and what the codec recomputes. The
    model spec was not recorded; the two named models are recognised by name.
    """
    old = d["codec"]
    options = {k: v for k, v in old["config"].items() if k != "format_version"}
    d["codec"] = {
        "name": "diffc",
        "options": options,
        "fingerprint": old["fingerprint"],
        "num_chunks": int(old["num_steps"]),
        "progressive": True,
        "details": {"logsnrs": old["logsnrs"], "channel": "rcc"},
    }
    d["model"] = {**d["model"], "spec": _named_model_of(d["model"].get("name"))}
    d["format_version"] = FORMAT_VERSION
    d["read_from_format"] = 1
    return d


def _named_model_of(name: str | None) -> str | None:
    """``gaussian`` or ``builtin`` when ``name`` is that model's identity name (read without loading it)."""
    if name and name.startswith("gaussian"):
        return "gaussian"
    from ..models import BUILTIN_DIR

    try:
        builtin = json.loads((BUILTIN_DIR / "config.json").read_text()).get("name")
    except (OSError, ValueError):
        return None
    return "builtin" if name == builtin else None


def read_manifest(fs: fsspec.AbstractFileSystem, root: str) -> Manifest | None:
    """The archive's manifest, or None when ``root`` holds none."""
    path = f"{root}/{MANIFEST_NAME}"
    fs.invalidate_cache(root)
    if not fs.exists(path):
        return None
    return Manifest.from_json(fs.cat_file(path), path)


def write_manifest(fs: fsspec.AbstractFileSystem, root: str, manifest: Manifest) -> None:
    """Replace the manifest whole (:func:`~.commit.replace_file`)."""
    manifest.updated_at = now()
    fs.makedirs(root, exist_ok=True)
    replace_file(fs, f"{root}/{MANIFEST_NAME}", manifest.to_json())


def check_same_codec(existing: Manifest, description: dict, where: str, hint: str) -> None:
    """Refuse to add to, or decode, an archive made with another codec, model or codec options."""
    if existing.codec_name != description["name"]:
        raise ModelMismatchError(
            f"{where} was made with codec {existing.codec_name!r}, not {description['name']!r}; {hint}"
        )
    model = description.get("model")
    if (existing.model or {}).get("sha256") != (model or {}).get("sha256"):
        mine = f"{model['name']}@{model['sha256'][:12]}" if model else "none"
        raise ModelMismatchError(f"{where} was made with model {existing.model_label()}, not {mine}; {hint}")
    if existing.codec.get("fingerprint") != description["fingerprint"]:
        theirs, mine = existing.codec.get("options") or {}, description.get("options") or {}
        details = differences(theirs, mine) if isinstance(theirs, dict) and isinstance(mine, dict) else ""
        raise ModelMismatchError(
            f"{where} was made with other codec options ({details or f'archive has {theirs}'}; fingerprint "
            f"{str(existing.codec.get('fingerprint'))[:12]}, this run {description['fingerprint'][:12]}); {hint}"
        )


def comparable_source(source: dict) -> dict:
    """A manifest's ``source`` with its URL canonical (:func:`~.sources.canonical_url`): archives made before
    URLs were stored canonical hold them as typed, and ``data/`` is the input ``/abs/data`` names."""
    return {**source, "url": canonical_url(source["url"])} if isinstance(source.get("url"), str) else source


def check_same_plan(existing: Manifest, source: dict, seed: int, shard_size: int, where: str) -> None:
    """A resumed run must cut the same shards, or committed shards and new ones would overlap."""
    mine = {"input": comparable_source(source), "seed": seed, "shard size": shard_size}
    theirs = {"input": comparable_source(existing.source), "seed": existing.seed, "shard size": existing.shard_size}
    details = differences(theirs, mine)
    if details:
        raise ArchiveError(
            f"{where} was made from another plan ({details}); resume with the same options, add --incremental "
            "to code only what it does not hold yet, choose another OUTPUT, or pass --overwrite"
        )


def differences(theirs: dict, mine: dict) -> str:
    """``"key: archive has X, this run Y; ..."`` for every key whose values differ ("" when none do): what a
    refusal to resume or extend an archive names."""
    keys = [k for k in dict.fromkeys([*theirs, *mine]) if theirs.get(k) != mine.get(k)]
    return "; ".join(f"{k}: archive has {theirs.get(k)!r}, this run {mine.get(k)!r}" for k in keys)
